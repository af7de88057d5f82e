"""The client Protocol on a StringTransport fed exact server bytes, and against our master in
memory through iosim (§3.3, §5.1, §6.2, §8, §9)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connectedServerAndClient

from mupdate.net.client import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionClosed,
    MupdateClientProtocol,
    ProtocolViolation,
    ServerBye,
)
from mupdate.protocol import (
    Activate,
    Authenticate,
    Delete,
    DeleteLine,
    MailboxLine,
    Reserve,
    ReserveLine,
    Status,
)
from mupdate.protocol.errors import LocalProtocolError
from tests.helpers.glue import ADMIN, PASSWORD, MasterRig

CYRUS_BANNER = (
    b'* AUTH "PLAIN" "DIGEST-MD5" "SCRAM-SHA-1" "CRAM-MD5"\r\n'
    b"* STARTTLS\r\n"
    b'* COMPRESS "DEFLATE"\r\n'
    b"* PARTIAL-UPDATE\r\n"
    b'* OK MUPDATE "mupmaster.test" "Cyrus IMAP" "3.6.1-Debian-3.6.1-4+deb12u5" "(master)"\r\n'
)
BANNER = (
    b'* AUTH "PLAIN" "LOGIN"\r\n* PARTIAL-UPDATE\r\n'
    b'* OK MUPDATE "master.test" "mupdate" "0.1" "(master)"\r\n'
)
PLAIN_IR = base64.b64encode(b"\0admin\0secret")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def lit(value: bytes) -> bytes:
    return b"{%d+}\r\n" % len(value) + value


class Wire:
    """A client on a StringTransport: feed server bytes, take what the client wrote."""

    def __init__(self, banner: bytes | None = BANNER) -> None:
        self.clock = Clock()
        self.proto = MupdateClientProtocol(self.clock)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 3905))
        self.proto.makeConnection(self.transport)
        if banner is not None:
            self.feed(banner)

    def feed(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))

    @property
    def dropped(self) -> bool:
        return bool(self.transport.disconnecting)


def result_of(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def fired(d: Deferred[Any]) -> bool:
    """Whether ``d`` has a result yet (``called`` is also true while it waits on another)."""
    box: list[Any] = []

    def note(result: Any) -> Any:
        box.append(result)
        return result

    d.addBoth(note)
    return bool(box)


def failure_of(d: Deferred[Any], kind: type[BaseException]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    assert isinstance(out[0], Failure), out[0]
    assert out[0].check(kind), out[0]
    return out[0].value


@pytest.fixture
def wire():
    return Wire()


@pytest.fixture
def events():
    captured: list[LogEvent] = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


# -- greeting (§3.1, §3.3, §3.4) -----------------------------------------------------------


def test_cyrus_banner_gives_capabilities_and_mechanisms():
    w = Wire(CYRUS_BANNER)
    info = result_of(w.proto.greeted)
    assert info.mechanisms == ("PLAIN", "DIGEST-MD5", "SCRAM-SHA-1", "CRAM-MD5")
    assert info.capabilities[b"COMPRESS"] == (b"DEFLATE",)
    assert info.capabilities[b"STARTTLS"] == ()
    assert b"PARTIAL-UPDATE" in info.capabilities
    assert info.ready.parts == (
        b"MUPDATE",
        b"mupmaster.test",
        b"Cyrus IMAP",
        b"3.6.1-Debian-3.6.1-4+deb12u5",
        b"(master)",
    )


def test_banner_fed_byte_by_byte():
    w = Wire(None)
    for i in range(len(CYRUS_BANNER)):
        assert not w.proto.greeted.called
        w.feed(CYRUS_BANNER[i : i + 1])
    assert result_of(w.proto.greeted).mechanisms[0] == "PLAIN"


def test_empty_auth_line_means_no_mechanisms():
    w = Wire(b'* AUTH\r\n* PARTIAL-UPDATE\r\n* OK MUPDATE "m" "x" "1" "(master)"\r\n')
    assert result_of(w.proto.greeted).mechanisms == ()
    assert failure_of(w.proto.authenticate(ADMIN, PASSWORD), AuthenticationFailed).text == (
        b"no usable mechanism (offered: none)"
    )
    assert w.take() == b""


def test_server_unable_bye_fails_greeting_and_closes():
    w = Wire(b'* BYE "Server Unable"\r\n\0')
    assert failure_of(w.proto.greeted, ServerBye).text == b"Server Unable"
    assert w.dropped


def test_garbage_banner_is_a_violation():
    w = Wire(b"HELLO there\r\n")
    assert isinstance(failure_of(w.proto.greeted, ProtocolViolation).reason, str)
    assert w.dropped


def test_loss_before_banner_fails_greeting_and_fires_closed():
    w = Wire(None)
    w.lose()
    failure_of(w.proto.greeted, ConnectionClosed)
    assert result_of(w.proto.closed) is None


# -- AUTHENTICATE (§5.1) -------------------------------------------------------------------


def test_plain_sends_initial_response_and_fires_with_the_name(wire):
    d = wire.proto.authenticate(ADMIN, PASSWORD)
    assert wire.take() == b'A01 AUTHENTICATE "PLAIN" "' + PLAIN_IR + b'"\r\n'
    assert not d.called
    wire.feed(b'A01 OK "Authenticated"\r\n')
    assert result_of(d) == "PLAIN"


def test_authenticate_before_banner_waits_for_it():
    w = Wire(None)
    d = w.proto.authenticate(ADMIN, PASSWORD, authzid="cyrus")
    assert w.take() == b""
    w.feed(BANNER)
    assert w.take() == b'A01 AUTHENTICATE "PLAIN" "' + b64(b"cyrus\0admin\0secret") + b'"\r\n'
    w.feed(b'A01 OK "Authenticated"\r\n')
    assert result_of(d) == "PLAIN"


def test_login_answers_each_challenge_with_a_bare_line():
    w = Wire(b'* AUTH "LOGIN"\r\n* OK MUPDATE "m" "x" "1" "(master)"\r\n')
    d = w.proto.authenticate(ADMIN, PASSWORD)
    assert w.take() == b'A01 AUTHENTICATE "LOGIN"\r\n'
    w.feed(b64(b"Username:") + b"\r\n")
    assert w.take() == b64(b"admin") + b"\r\n"
    w.feed(b64(b"Password:") + b"\r\n")
    assert w.take() == b64(b"secret") + b"\r\n"
    w.feed(b'A01 OK "Authenticated"\r\n')
    assert result_of(d) == "LOGIN"


def test_allowed_mechanisms_restrict_the_choice(wire):
    wire.proto.authenticate(ADMIN, PASSWORD, mechanisms=["login"])
    assert wire.take() == b'A01 AUTHENTICATE "LOGIN"\r\n'


def test_plain_without_initial_response_answers_the_empty_challenge(wire):
    class NoIrPlain:
        name = "PLAIN"

        def initial(self) -> bytes | None:
            return None

        def respond(self, challenge: bytes) -> bytes:
            return b"\0admin\0secret"

    wire.proto.authenticate_with(NoIrPlain())
    assert wire.take() == b'A01 AUTHENTICATE "PLAIN"\r\n'
    wire.feed(b"\r\n")
    assert wire.take() == PLAIN_IR + b"\r\n"


class ScramLike:
    """Three steps and final server data, like SCRAM-SHA-1 in §5.1."""

    name = "SCRAM-SHA-1"

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def initial(self) -> bytes | None:
        return b"n,,n=admin,r=abc"

    def respond(self, challenge: bytes) -> bytes:
        self.seen.append(challenge)
        return b"c=biws,r=abcdef,p=proof" if challenge.startswith(b"r=") else b""


def test_final_server_data_is_answered_with_an_empty_line(wire):
    mech = ScramLike()
    d = wire.proto.authenticate_with(mech)
    assert wire.take() == b'A01 AUTHENTICATE "SCRAM-SHA-1" "' + b64(b"n,,n=admin,r=abc") + b'"\r\n'
    wire.feed(b64(b"r=abcdef,s=salt,i=4096") + b"\r\n")
    assert wire.take() == b64(b"c=biws,r=abcdef,p=proof") + b"\r\n"
    wire.feed(b64(b"v=signature") + b"\r\n")
    assert wire.take() == b"\r\n"
    wire.feed(b'A01 OK "Authenticated"\r\n')
    assert result_of(d) == "SCRAM-SHA-1"
    assert mech.seen == [b"r=abcdef,s=salt,i=4096", b"v=signature"]


def test_empty_initial_response_is_sent_as_equals(wire):
    class EmptyIr(ScramLike):
        def initial(self) -> bytes | None:
            return b""

    wire.proto.authenticate_with(EmptyIr())
    assert wire.take() == b'A01 AUTHENTICATE "SCRAM-SHA-1" "="\r\n'


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        (b'A01 NO "undefined error!"\r\n', b"undefined error!"),
        (b"A01 NO Client canceled authentication\r\n", b"Client canceled authentication"),
        (b'A01 BAD "already authenticated"\r\n', b"already authenticated"),
    ],
)
def test_refused_login_is_authentication_failed_with_the_text(wire, reply, text):
    d = wire.proto.authenticate(ADMIN, "wrong")
    wire.feed(reply)
    assert failure_of(d, AuthenticationFailed).text == text
    assert not wire.dropped


def test_mechanism_error_cancels_the_exchange(wire):
    class Broken(ScramLike):
        def respond(self, challenge: bytes) -> bytes:
            raise ValueError("server signature mismatch")

    d = wire.proto.authenticate_with(Broken())
    wire.take()
    wire.feed(b64(b"r=x") + b"\r\n")
    assert wire.take() == b"*\r\n"
    wire.feed(b"A01 NO Client canceled authentication\r\n")
    failure_of(d, AuthenticationFailed)


def test_commands_wait_behind_authenticate(wire):
    auth = wire.proto.authenticate(ADMIN, PASSWORD)
    found = wire.proto.find(b"user.bob")
    assert wire.take().startswith(b"A01 AUTHENTICATE")
    wire.feed(b'A01 OK "Authenticated"\r\n')
    assert wire.take() == b'X0 FIND "user.bob"\r\n'
    assert result_of(auth) == "PLAIN"
    wire.feed(b'X0 OK "Search completed"\r\n')
    assert result_of(found) is None


def test_authenticate_behind_pending_commands_is_refused(wire):
    wire.proto.noop()
    failure_of(wire.proto.authenticate(ADMIN, PASSWORD), LocalProtocolError)


def test_bye_during_authenticate_fails_it(wire):
    d = wire.proto.authenticate(ADMIN, PASSWORD)
    wire.feed(b'* BYE "idle for too long"\r\n')
    assert failure_of(d, ServerBye).text == b"idle for too long"
    assert wire.dropped


# -- FIND, LIST, NOOP and pipelining (§5.5-5.7, §6) ----------------------------------------


def test_find_reads_literal_form_mailbox(wire):
    d = wire.proto.find(b"user.bob")
    assert wire.take() == b'X0 FIND "user.bob"\r\n'
    wire.feed(b"X0 MAILBOX " + lit(b"user.bob") + b" " + lit(b"be1!default") + b" " + lit(b""))
    wire.feed(b'\r\nX0 OK "Search completed"\r\n')
    assert result_of(d) == MailboxLine(b"X0", b"user.bob", b"be1!default", b"")


def test_find_reserved_and_not_found(wire):
    d1 = wire.proto.find(b"user.r")
    d2 = wire.proto.find(b"user.none")
    wire.feed(
        b'X0 RESERVE "user.r" "be2!p"\r\nX0 OK "Search completed"\r\nX1 OK "Search completed"\r\n'
    )
    assert result_of(d1) == ReserveLine(b"X0", b"user.r", b"be2!p")
    assert result_of(d2) is None


def test_find_with_two_answers_is_a_violation(wire):
    d = wire.proto.find(b"a")
    wire.feed(b'X0 RESERVE "a" "b!p"\r\nX0 RESERVE "a" "c!p"\r\nX0 OK "Search completed"\r\n')
    failure_of(d, ProtocolViolation)
    assert wire.dropped


def test_list_with_and_without_prefix(wire):
    d1 = wire.proto.list(b"be1")
    d2 = wire.proto.list()
    assert wire.take() == b'X0 LIST "be1"\r\nX1 LIST\r\n'
    data = (
        b'X0 MAILBOX "user.a" "be1!p" "a\tlrs\t"\r\nX0 RESERVE "user.b" "be10!p"\r\n'
        b'X0 OK "list complete"\r\nX1 OK "list complete"\r\n'
    )
    for i in range(len(data)):
        wire.feed(data[i : i + 1])
    assert result_of(d1) == [
        MailboxLine(b"X0", b"user.a", b"be1!p", b"a\tlrs\t"),
        ReserveLine(b"X0", b"user.b", b"be10!p"),
    ]
    assert result_of(d2) == []


def test_noop_and_ping_tags(wire):
    d1 = wire.proto.noop()
    d2 = wire.proto.noop(prefix=b"N")
    assert wire.take() == b"X0 NOOP\r\nN0 NOOP\r\n"
    wire.feed(b'X0 OK "Noop done"\r\nN0 OK "Noop done"\r\n')
    assert result_of(d1) is None
    assert result_of(d2) is None


def test_pipelined_writes_resolve_in_order_with_typed_failures(wire):
    d0 = wire.proto.command(Reserve(b"", b"user.a", b"be1!p"))
    d1 = wire.proto.command(Reserve(b"", b"user.a", b"be2!p"))
    d2 = wire.proto.command(Activate(b"T7", b"user.a", b"be1!p", b""))
    d3 = wire.proto.command(Delete(b"", b"user.zz"))
    assert wire.take() == (
        b'X0 RESERVE "user.a" "be1!p"\r\nX1 RESERVE "user.a" "be2!p"\r\n'
        b'T7 ACTIVATE "user.a" "be1!p" ""\r\nX2 DELETE "user.zz"\r\n'
    )
    wire.feed(
        b'X0 OK "done"\r\nX1 NO "mailbox already exists"\r\nT7 OK "done"\r\n'
        b'X2 BAD "Extra arguments"\r\n'
    )
    r0 = result_of(d0)
    assert (r0.tag, r0.data, r0.done.status, r0.done.text) == (b"X0", [], Status.OK, b"done")
    no = failure_of(d1, CommandFailed)
    assert (no.status, no.text, no.tag) == (b"NO", b"mailbox already exists", b"X1")
    assert result_of(d2).tag == b"T7"
    bad = failure_of(d3, CommandFailed)
    assert (bad.status, bad.text, bad.tag) == (b"BAD", b"Extra arguments", b"X2")
    assert not wire.dropped


def test_mode_switching_commands_are_refused(wire):
    failure_of(wire.proto.command(Authenticate(b"A9", b"PLAIN")), LocalProtocolError)
    assert wire.take() == b""


def test_unrenderable_command_fails_without_writing(wire):
    failure_of(wire.proto.find(b"nul\0name"), LocalProtocolError)
    assert wire.take() == b""


@pytest.mark.parametrize(
    "reply",
    [
        b"X0 OK done\r\n",  # unquoted text (§6.2, case 62)
        b"X0 OK\r\n",
        b'X9 OK "Noop done"\r\n',  # no such command
        b'* OK "Noop done"\r\n',  # untagged status
        b'X9 MAILBOX "a" "b!p" ""\r\n',  # data for nobody
        b'X0 DELETE "a"\r\n',  # DELETE outside a stream
        b"X0 FROB\r\n",
    ],
)
def test_violation_fails_everything_and_drops(wire, events, reply):
    d0 = wire.proto.noop()
    d1 = wire.proto.list()
    wire.feed(reply + b'X1 OK "list complete"\r\n')
    failure_of(d0, ProtocolViolation)
    failure_of(d1, ProtocolViolation)
    assert wire.dropped
    failure_of(wire.proto.noop(), ConnectionClosed)
    (event,) = [e for e in events if e.get("log_format", "").startswith("protocol violation")]
    assert event["peer"] == "127.0.0.1:3905"  # HOST:PORT (logs.address)
    assert event["log_level"] is LogLevel.warn
    assert event["reason"]


def test_bye_fails_every_pending_command(wire):
    d0 = wire.proto.noop()
    d1 = wire.proto.find(b"x")
    wire.feed(b'* BYE "idle for too long"\r\n')
    assert failure_of(d0, ServerBye).text == b"idle for too long"
    failure_of(d1, ServerBye)
    assert wire.dropped


def test_loss_fails_pending_and_later_commands(wire):
    d = wire.proto.noop()
    wire.lose()
    failure_of(d, ConnectionClosed)
    assert result_of(wire.proto.closed) is None
    failure_of(wire.proto.list(), ConnectionClosed)


# -- UPDATE (§5.8, §8, §9.2) --------------------------------------------------------------


def test_update_dump_then_stream_then_noop_interleaving(wire):
    seen: list[object] = []
    d = wire.proto.update(seen.append)
    d.addCallback(lambda dump: seen.append(("dump", dump)))
    assert wire.take() == b"U01 UPDATE\r\n"
    wire.feed(b'U01 MAILBOX "user.a" "be1!p" ""\r\nU01 RESERVE "user.b" "be2!p"\r\n')
    assert seen == []
    wire.feed(b'U01 OK "streaming starts"\r\nU01 DELETE "user.a"\r\n')
    assert seen == [
        (
            "dump",
            [
                MailboxLine(b"U01", b"user.a", b"be1!p", b""),
                ReserveLine(b"U01", b"user.b", b"be2!p"),
            ],
        ),
        DeleteLine(b"U01", b"user.a"),
    ]
    seen.clear()
    ping = wire.proto.noop(prefix=b"N")
    ping.addCallback(lambda _: seen.append("pong"))
    assert wire.take() == b"N0 NOOP\r\n"
    wire.feed(
        b'U01 MAILBOX "user.c" "be1!p" "x\tl\t"\r\nU01 DELETE "user.b"\r\nN0 OK "Noop done"\r\n'
    )
    assert seen == [
        MailboxLine(b"U01", b"user.c", b"be1!p", b"x\tl\t"),
        DeleteLine(b"U01", b"user.b"),
        "pong",
    ]
    wire.feed(b'U01 RESERVE "user.d" "be3!p"\r\n')
    assert seen[-1] == ReserveLine(b"U01", b"user.d", b"be3!p")


def test_one_update_per_connection(wire):
    wire.proto.update(lambda line: None)
    failure_of(wire.proto.update(lambda line: None), LocalProtocolError)
    wire.feed(b'U01 OK "streaming starts"\r\n')
    failure_of(wire.proto.update(lambda line: None), LocalProtocolError)
    failure_of(wire.proto.authenticate(ADMIN, PASSWORD), LocalProtocolError)
    assert wire.take() == b"U01 UPDATE\r\n"


def test_partial_update_sends_hosts(wire):
    wire.proto.update(lambda line: None, hosts=[b"be1", b"be 2"])
    assert wire.take() == b'U01 UPDATE "be1" "be 2"\r\n'


@pytest.mark.parametrize(
    ("ending", "kind"),
    [
        (b'U01 NO "server is shutting down"\r\n', CommandFailed),
        (b'U01 BAD "Please login first"\r\n', CommandFailed),
        (b'* BYE "Server Unable"\r\n', ServerBye),
        (b'U01 DELETE "user.a"\r\n', ProtocolViolation),
        (b"U01 OK streaming starts\r\n", ProtocolViolation),
    ],
)
def test_dump_not_ending_in_ok_is_discarded(wire, ending, kind):
    seen: list[object] = []
    d = wire.proto.update(seen.append)
    wire.feed(
        b'U01 MAILBOX "user.a" "be1!p" ""\r\n' + ending + b'U01 MAILBOX "user.b" "b!p" ""\r\n'
    )
    failure_of(d, kind)
    assert seen == []
    if kind is not CommandFailed:
        assert wire.dropped


def test_dump_cut_by_loss_is_discarded(wire):
    seen: list[object] = []
    d = wire.proto.update(seen.append)
    wire.feed(b'U01 MAILBOX "user.a" "be1!p" ""\r\n')
    wire.lose()
    failure_of(d, ConnectionClosed)
    assert seen == []


def test_failing_on_change_drops_the_connection(wire, events):
    def explode(line: object) -> None:
        raise RuntimeError("local database is gone")

    d = wire.proto.update(explode)
    wire.feed(b'U01 OK "streaming starts"\r\nU01 DELETE "a"\r\nU01 DELETE "b"\r\n')
    assert result_of(d) == []
    assert wire.dropped
    (event,) = [e for e in events if "log_failure" in e]
    assert event["mailbox"] == "a"
    assert event["log_failure"].check(RuntimeError)


# -- LOGOUT and close (§5.4) ---------------------------------------------------------------


def test_logout_fires_once_the_connection_is_gone(wire):
    d = wire.proto.logout()
    assert wire.take() == b"Q01 LOGOUT\r\n"
    wire.feed(b'Q01 OK "bye-bye"\r\n')
    assert wire.dropped
    assert not fired(d)
    wire.lose()
    assert result_of(d) is None


def test_logout_answered_with_rfc_bye(wire):
    d = wire.proto.logout()
    wire.feed(b'* BYE "logging out"\r\n')
    wire.lose()
    assert result_of(d) is None


def test_close_aborts_a_peer_that_does_not_let_go(wire):
    d = wire.proto.close()
    assert wire.dropped
    assert not wire.transport.disconnected
    wire.clock.advance(wire.proto.close_timeout)
    assert wire.transport.disconnected  # StringTransport's mark of abortConnection
    wire.lose()
    assert result_of(d) is None
    assert wire.clock.getDelayedCalls() == []


# -- against our master, in memory ---------------------------------------------------------


class Pair:
    """Our client and our master's server protocol, pumped by iosim."""

    def __init__(self, rig: MasterRig) -> None:
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: rig.factory.buildProtocol(peer),
            lambda: MupdateClientProtocol(rig.clock),
            serverTransportFactory=lambda p: FakeTransport(p, isServer=True, peerAddress=peer),
            clock=rig.clock,
        )

    def run(self, d: Deferred[Any]) -> Any:
        self.pump.flush()
        return result_of(d)

    def fail(self, d: Deferred[Any], kind: type[BaseException]) -> Any:
        self.pump.flush()
        return failure_of(d, kind)

    def login(self) -> Pair:
        assert self.run(self.client.authenticate(ADMIN, PASSWORD)) == "SCRAM-SHA-512"
        return self


@pytest.fixture
def rig(tmp_path):
    return MasterRig(tmp_path)


def test_master_banner_and_login(rig):
    pair = Pair(rig)
    info = result_of(pair.client.greeted)
    assert info.mechanisms == ("SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN")
    assert info.ready.parts[:2] == (b"MUPDATE", b"master.test")
    pair.login()
    assert pair.server.user == ADMIN


def test_master_login_mechanism(rig):
    pair = Pair(rig)
    assert pair.run(pair.client.authenticate(ADMIN, PASSWORD, mechanisms=["LOGIN"])) == "LOGIN"


def test_master_refuses_a_wrong_password_after_the_pause(rig):
    pair = Pair(rig)
    d = pair.client.authenticate(ADMIN, "wrong")
    pair.pump.flush()
    assert not d.called
    rig.clock.advance(rig.settings.failed_login_pause)
    assert pair.fail(d, AuthenticationFailed).text == b"authentication failed"


def test_master_writes_and_reads_through_command(rig):
    pair = Pair(rig).login()
    c = pair.client
    assert pair.run(c.command(Reserve(b"", b"user.a", b"be1!p"))).done.text == b"done"
    no = pair.fail(c.command(Reserve(b"", b"user.a", b"be2!p")), CommandFailed)
    assert (no.status, no.text) == (b"NO", b"mailbox already exists")
    assert pair.run(c.find(b"user.a")) == ReserveLine(b"X2", b"user.a", b"be1!p")
    pair.run(c.command(Activate(b"", b"user.a", b"be1!p", b"admin\tlrs\t")))
    pair.run(c.command(Activate(b"", b"user.b\r\nx", b"be2!p", b"")))
    assert pair.run(c.list()) == [
        MailboxLine(b"X5", b"user.a", b"be1!p", b"admin\tlrs\t"),
        MailboxLine(b"X5", b"user.b\r\nx", b"be2!p", b""),
    ]
    assert pair.run(c.list(b"be2")) == [MailboxLine(b"X6", b"user.b\r\nx", b"be2!p", b"")]
    assert rig.store.load_entries()  # committed to the store


def test_master_stream_sees_another_clients_write(rig):
    streamer = Pair(rig).login()
    writer = Pair(rig).login()
    pair_run = writer.run
    pair_run(writer.client.command(Reserve(b"", b"user.old", b"be1!p")))
    seen: list[object] = []
    dump = streamer.run(streamer.client.update(seen.append))
    assert dump == [ReserveLine(b"U01", b"user.old", b"be1!p")]
    pair_run(writer.client.command(Activate(b"", b"user.new", b"be2!p", b"")))
    pair_run(writer.client.command(Delete(b"", b"user.old")))
    assert streamer.run(streamer.client.noop(prefix=b"N")) is None
    assert seen == [
        MailboxLine(b"U01", b"user.new", b"be2!p", b""),
        DeleteLine(b"U01", b"user.old"),
    ]
    refused = streamer.fail(streamer.client.find(b"user.new"), CommandFailed)
    assert (refused.status, refused.text) == (b"BAD", b"not legal when streaming")


def test_master_logout_closes_both_ends(rig):
    pair = Pair(rig).login()
    assert pair.run(pair.client.logout()) is None
    assert result_of(pair.client.closed) is None
    assert pair.server not in rig.factory.sessions

"""A client engine and a server engine wired back to back, no I/O (style.md §11): whole
sessions as our slave, tools and master would run them."""

from __future__ import annotations

from protocol_helpers import PLAIN_IR, Reply, drain_client, drain_server

from mupdate.protocol import (
    NEED_DATA,
    PAUSED,
    Activate,
    Authenticate,
    Bye,
    Capability,
    ClientConnection,
    ClientState,
    Command,
    DeleteLine,
    Done,
    Find,
    Greeting,
    Logout,
    MailboxLine,
    Noop,
    Reserve,
    ReserveLine,
    Response,
    SaslChallenge,
    SaslResponse,
    ServerConnection,
    ServerReady,
    ServerState,
    Starttls,
    Status,
    Update,
)
from mupdate.protocol import texts as t


class Pair:
    def __init__(self, **server_kwargs: object) -> None:
        self.server = ServerConnection(**server_kwargs)  # type: ignore[arg-type]
        self.client = ClientConnection()

    def to_server(self, *events: Command | SaslResponse) -> list[object]:
        self.server.receive_data(b"".join(self.client.send(e) for e in events))
        got, _ = drain_server(self.server)
        go_ahead = self.server.data_to_send()
        assert go_ahead == b""
        return got

    def to_client(self, *events: Response) -> list[object]:
        self.client.receive_data(b"".join(self.server.send(e) for e in events))
        got, _ = drain_client(self.client)
        return got


def pair_reply(tag: bytes, text: bytes) -> Reply:
    return Reply(b'%s BAD "%s"\r\n' % (tag, text), False)


def pair_reply_unquoted(tag: bytes, text: bytes) -> Reply:
    return Reply(b"%s BAD %s\r\n" % (tag, text), False)


GREETING = Greeting((b"PLAIN",), b"master.test", b"mupdate", b"0.1", t.ROLE_MASTER, starttls=True)


def login(pair: Pair) -> None:
    assert pair.to_client(GREETING)[-1] == ServerReady(
        (t.BANNER_WORD, b"master.test", b"mupdate", b"0.1", t.ROLE_MASTER)
    )
    assert pair.to_server(Authenticate(b"A01", b"PLAIN", PLAIN_IR)) == [
        Authenticate(b"A01", b"PLAIN", PLAIN_IR)
    ]
    pair.server.authentication_succeeded()
    assert pair.to_client(Done(b"A01", Status.OK, t.AUTHENTICATED)) == [
        Done(b"A01", Status.OK, t.AUTHENTICATED)
    ]


def test_backend_create_session_67() -> None:
    pair = Pair()
    login(pair)
    odd = b'user.carol "x"\\y\r\n\xff'
    writes = [
        Reserve(b"X0", odd, b"be1.test!default"),
        Activate(b"X1", odd, b"be1.test!default", b"carol\tlrswipkxtecdan\t"),
    ]
    assert pair.to_server(*writes) == writes
    assert pair.to_client(Done(b"X0", Status.OK, t.DONE), Done(b"X1", Status.OK, t.DONE)) == [
        Done(b"X0", Status.OK, t.DONE),
        Done(b"X1", Status.OK, t.DONE),
    ]
    assert pair.to_server(Find(b"X2", odd)) == [Find(b"X2", odd)]
    found = MailboxLine(b"X2", odd, b"be1.test!default", b"carol\tlrswipkxtecdan\t")
    assert pair.to_client(found, Done(b"X2", Status.OK, t.SEARCH_COMPLETED))[0] == found
    assert pair.to_server(Logout(b"Q01")) == [Logout(b"Q01")]
    assert pair.server.state is ServerState.CLOSED
    assert pair.to_client(Done(b"Q01", Status.OK, t.BYE_BYE)) == [
        Done(b"Q01", Status.OK, t.BYE_BYE)
    ]


def test_sasl_challenge_exchange_and_slave_stream() -> None:
    pair = Pair()
    pair.to_client(GREETING)
    assert pair.to_server(Authenticate(b"A01", b"SCRAM-SHA-1", b"biws")) == [
        Authenticate(b"A01", b"SCRAM-SHA-1", b"biws")
    ]
    assert pair.to_client(SaslChallenge(b"r=nonce,s=salt,i=4096")) == [
        SaslChallenge(b"r=nonce,s=salt,i=4096")
    ]
    assert pair.to_server(SaslResponse(b"Yz1iaXdz")) == [SaslResponse(b"Yz1iaXdz")]
    assert pair.to_client(SaslChallenge(b"v=proof")) == [SaslChallenge(b"v=proof")]
    assert pair.to_server(SaslResponse(b"")) == [SaslResponse(b"")]
    pair.server.authentication_succeeded()
    pair.to_client(Done(b"A01", Status.OK, t.AUTHENTICATED))
    assert pair.client.state is ClientState.READY
    assert pair.to_server(Update(b"U01")) == [Update(b"U01")]
    assert pair.server.state is ServerState.STREAMING
    stream: list[Response] = [
        MailboxLine(b"U01", b"user.a", b"be1!p1", b"a\tlrs\t"),
        ReserveLine(b"U01", b"user.b", b"be2!p2"),
        Done(b"U01", Status.OK, t.STREAMING_STARTS),
        DeleteLine(b"U01", b"user.s1\nx"),
    ]
    assert pair.to_client(*stream) == stream
    assert pair.to_server(Noop(b"N0"), Find(b"F1", b"x")) == [
        Noop(b"N0"),
        pair_reply(b"F1", t.NOT_LEGAL_WHEN_STREAMING),
    ]
    assert pair.to_client(Bye(t.IDLE_TOO_LONG)) == [Bye(t.IDLE_TOO_LONG)]
    assert pair.client.state.name == "CLOSED"


def test_starttls_session_rereads_banner_without_starttls() -> None:
    pair = Pair(starttls_available=True)
    events = pair.to_client(GREETING)
    assert Capability(t.CAP_STARTTLS) in events
    assert pair.to_server(Starttls(b"S01")) == [Starttls(b"S01")]
    assert pair.server.state is ServerState.TLS_NEGOTIATING
    reply = Done(b"S01", Status.OK, t.BEGIN_TLS, quoted=False)
    assert pair.to_client(reply) == [reply]
    assert pair.client.state is ClientState.TLS_NEGOTIATING
    assert pair.client.next_event() is PAUSED
    pair.server.tls_started()
    pair.client.tls_started()
    events = pair.to_client(Greeting((b"PLAIN",), b"m", b"i", b"v", t.ROLE_MASTER))
    assert Capability(t.CAP_STARTTLS) not in events
    assert pair.to_server(Starttls(b"S02")) == [pair_reply_unquoted(b"S02", t.ALREADY_TLS)]


def test_pipelined_authenticate_and_commands_in_one_write() -> None:
    pair = Pair()
    pair.to_client(GREETING)
    wire = b"".join(
        pair.client.send(e)
        for e in (Authenticate(b"A01", b"PLAIN", PLAIN_IR), Reserve(b"X0", b"a", b"b"))
    )
    pair.server.receive_data(wire)
    assert pair.server.next_event() == Authenticate(b"A01", b"PLAIN", PLAIN_IR)
    pair.server.authentication_succeeded()
    assert pair.server.next_event() == Reserve(b"X0", b"a", b"b")
    assert pair.server.next_event() is NEED_DATA

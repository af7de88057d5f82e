"""Fuzzing a live master (issue 7 item 3; protocol doc §2.7, §14 case 27; design.md "Cyrus
failures we must not repeat").

In memory (``MasterRig``: the production handler, rules, index, committer and server
protocol on ``StringTransport`` connections and a ``Clock``), arbitrary MUPDATE-shaped bytes
go to one connection, before and after login, whole or in chunks. Then:

* every command and every error the connection's engine produced was answered, in order:
  a tagged ``OK``/``NO``/``BAD`` for each command, the engine's own ``BAD``/``NO``/``* BYE``
  line for each error (the engine is wrapped in a recorder that only watches);
* a connection that was closed said why last (``* BYE``, a closing ``BAD``, LOGOUT's OK); one
  that is still open answers a probe NOOP after any pending literal or SASL exchange is done;
* nothing escaped ``dataReceived`` and nothing was logged at error or critical level;
* a second logged-in connection still answers NOOP, and a streaming one saw nothing unless a
  write was made;
* the store equals a reference master's that was sent only the well-formed writes the fuzzed
  connection's handler actually received, at the same clock times.

Then the same against a real ``twistd mupdate-master`` over TCP, with Cyrus's fatal inputs.

``check_live_input`` is shared with ``atheris_master.py`` (the long run, docs/fuzzing.md).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import (
    ADMIN_PLAIN_IR,
    HUGE,
    SEED_NAMES,
    big_inputs,
    chunk_cuts,
    chunked,
    fuzz_settings,
    mupdate_inputs,
)
from twisted.logger import LogEvent, LogLevel, globalLogPublisher

from mupdate.model import EntryState, MailboxEntry, Tombstone
from mupdate.protocol import (
    WRITE_COMMANDS,
    Authenticate,
    Command,
    Logout,
    PeerError,
    Sentinel,
    ServerState,
    render_command,
    render_response,
)
from tests.helpers.glue import MasterRig
from tests.helpers.memstore import InMemoryStore
from tests.helpers.ourmaster import OurMaster, our_master_available
from tests.helpers.rawmupdate import MupdateClient, Response, parse_responses

# ------------------------------------------------------------------ the in-memory rig


def seed_entries() -> list[MailboxEntry]:
    return [
        MailboxEntry(SEED_NAMES[0], EntryState.ACTIVE, b"be1!default", b"admin\tlrswipkxtecda\t"),
        MailboxEntry(SEED_NAMES[1], EntryState.RESERVED, b"be2!default"),
        MailboxEntry(SEED_NAMES[2], EntryState.ACTIVE, b"be2!default", b"anyone\tlrs\t"),
        MailboxEntry(SEED_NAMES[3], EntryState.ACTIVE, b"be1!default", b""),
    ]


def seed_tombstones() -> list[Tombstone]:
    return [Tombstone(b"user.gone", b"be1!default", 0.0)]


class RecordingEngine:
    """Wraps a connection's ``ServerConnection`` and writes down what ``next_event`` gave:
    the protocol's own view of which commands and errors there were. Changes nothing."""

    def __init__(self, engine: object) -> None:
        self._engine = engine
        self.log: list[Command | PeerError | object] = []
        self.sasl_errors: list[PeerError] = []  # raised on a SASL line: they end AUTHENTICATE

    def next_event(self) -> object:
        before = self._engine.state  # type: ignore[attr-defined]
        try:
            event = self._engine.next_event()  # type: ignore[attr-defined]
        except PeerError as error:
            self.log.append(error)
            if before is ServerState.AUTHENTICATING:
                self.sasl_errors.append(error)
            raise
        if not isinstance(event, Sentinel):
            self.log.append(event)
        return event

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)


class RecordingHandler:
    """The master's handler, noting each write it is asked to make and the clock then."""

    def __init__(self, rig: MasterRig) -> None:
        self._inner = rig.handler
        self._clock = rig.clock
        self.role = rig.handler.role
        self.read_only = rig.handler.read_only
        self.writes: list[tuple[float, Command]] = []

    def handle(self, command: Command, session: object) -> object:
        if isinstance(command, WRITE_COMMANDS):
            self.writes.append((self._clock.seconds(), command))
        return self._inner.handle(command, session)  # type: ignore[arg-type]

    def connection_closed(self, session: object) -> None:
        self._inner.connection_closed(session)  # type: ignore[arg-type]


@dataclass
class LiveResult:
    """What one fuzzed connection did: for the atheris run's statistics."""

    commands: int = 0
    errors: int = 0
    writes: int = 0
    closed: bool = False


def _finals(output: bytes) -> list[Response]:
    """The responses that end something: tagged OK/NO/BAD, ``* BAD``, ``* BYE``."""
    return [r for r in parse_responses(output) if r.is_status or r.kind == b"BYE"]


def _error_log() -> tuple[list[LogEvent], object]:
    captured: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            captured.append(event)

    globalLogPublisher.addObserver(observe)
    return captured, observe


def _settle(rig: MasterRig, conn: object) -> None:
    """Let the failed-login pause (3 s) run out until the connection is not waiting on
    it; never as far as the 60 s login timeout."""
    for _ in range(6):
        if not conn.proto._busy:  # type: ignore[attr-defined]
            return
        rig.clock.advance(3.0)
    raise AssertionError("the connection stayed busy")


def _unfinished(engine: RecordingEngine) -> bytes | None:
    """The bytes that finish what the engine is in the middle of (a literal's data, a
    partial line, a SASL exchange), or None when it waits for a new command. Reads the
    buffer's private state: nothing public says it, and without it a probe could vanish
    into a literal, which is correct behaviour and not silence."""
    buffer = engine._buffer  # type: ignore[attr-defined]
    if buffer._skip:
        return b"\0" * int(buffer._skip) + b"\r\n"
    if buffer._awaiting is not None:
        return b"\0" * (int(buffer._awaiting) - len(buffer._data)) + b"\r\n"
    if buffer._data or buffer.in_command:
        return b"\r\n"  # may itself end in a literal header: then once more
    if engine.state is ServerState.AUTHENTICATING:
        return b"*\r\n"
    return None


def check_live_input(workdir: Path, chunks: list[bytes], *, logged_in: bool) -> LiveResult:
    """Feed ``chunks`` to one connection of a fresh in-memory master and check every
    property in this module's docstring; AssertionError names the first one broken."""
    result = LiveResult()
    captured, observer = _error_log()
    try:
        _check_live(workdir, chunks, logged_in, result)
        assert not captured, [event.get("log_format") for event in captured]
    finally:
        globalLogPublisher.removeObserver(observer)
    return result


def _check_live(workdir: Path, chunks: list[bytes], logged_in: bool, result: LiveResult) -> None:
    (workdir / "live").mkdir(parents=True, exist_ok=True)
    rig = MasterRig(workdir / "live", store=InMemoryStore(seed_entries(), seed_tombstones()))
    recorder = RecordingHandler(rig)
    rig.factory.handler = recorder  # type: ignore[assignment]
    other = rig.login()
    watcher = rig.login()
    assert watcher.send(b"W1 UPDATE\r\n").endswith(b'W1 OK "streaming starts"\r\n')
    victim = rig.login() if logged_in else rig.connect()
    victim.take()
    engine = RecordingEngine(victim.proto.engine)
    victim.proto.engine = engine  # type: ignore[assignment]
    output = bytearray()

    def send(data: bytes) -> None:
        victim.proto.dataReceived(data)
        _settle(rig, victim)
        output.extend(victim.take())

    for chunk in chunks:
        send(chunk)

    # The probe: finish a pending literal, end a partial line, cancel a SASL exchange, then
    # a NOOP that must be answered.
    probed = False
    for _ in range(8):
        if victim.closed or engine.state is ServerState.CLOSED:
            break
        finish = _unfinished(engine)
        if finish is None:
            send(b"P9 NOOP\r\n")
            probed = True
            break
        send(finish)
    else:
        raise AssertionError("the connection never got back to reading commands")

    # Every command and error the engine produced got its answer, in order.
    expected: list[Command | PeerError] = []
    for item in engine.log:
        if isinstance(item, Command):
            expected.append(item)
        elif isinstance(item, PeerError):
            if any(item is e for e in engine.sasl_errors):  # its NO also ends AUTHENTICATE
                assert isinstance(expected[-1], Authenticate)
                assert item.response.tag == expected[-1].tag  # type: ignore[union-attr]
                expected.pop()
            expected.append(item)
    result.commands = sum(isinstance(item, Command) for item in engine.log)
    result.errors = sum(isinstance(item, PeerError) for item in engine.log)
    finals = _finals(bytes(output))
    position = 0
    server_bye = False
    for final in finals:
        assert not server_bye, f"answer after * BYE: {final.raw!r}"
        if position < len(expected) and _answers(expected[position], final):
            position += 1
        elif final.tag == b"*" and final.kind == b"BYE":
            server_bye = True  # too many login failures: after the NO, the BYE
        else:
            raise AssertionError(
                f"unexpected {final.raw[:200]!r}; waiting for {expected[position : position + 1]!r}"
            )
    assert position == len(expected), f"unanswered: {expected[position:]!r}"
    if probed:
        assert finals
        assert finals[-1].tag == b"P9", finals[-1]

    # A closed connection said why, last.
    result.closed = victim.closed
    if victim.closed:
        last = expected[-1] if expected else None
        assert (
            server_bye or isinstance(last, Logout) or (isinstance(last, PeerError) and last.close)
        ), f"closed without a reason: last {last!r}"
    else:
        assert engine.state is not ServerState.CLOSED

    # Other sessions are unaffected.
    assert other.send(b"X1 NOOP\r\n") == b'X1 OK "Noop done"\r\n'
    streamed = watcher.take()
    if not recorder.writes:
        assert streamed == b""
    assert watcher.send(b"W2 NOOP\r\n") == b'W2 OK "Noop done"\r\n'

    # The store holds exactly what the well-formed writes made.
    result.writes = len(recorder.writes)
    if not recorder.writes:
        assert rig.store.entries == {e.name: e for e in seed_entries()}
        assert rig.store.tombstones == {t.name: t for t in seed_tombstones()}
        return
    (workdir / "reference").mkdir(parents=True, exist_ok=True)
    reference = MasterRig(
        workdir / "reference", store=InMemoryStore(seed_entries(), seed_tombstones())
    )
    conn = reference.login()
    for at, command in recorder.writes:
        reference.clock.advance(at - reference.clock.seconds())
        answer = conn.send(render_command(command))
        assert answer.startswith(command.tag + b" "), answer
    assert rig.store.entries == reference.store.entries
    assert rig.store.tombstones == reference.store.tombstones


def _answers(item: Command | PeerError, final: Response) -> bool:
    if isinstance(item, PeerError):
        return final.raw == render_response(item.response)
    return final.tag == item.tag and final.is_status


# -------------------------------------------------------------------- hypothesis


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-live")


LOGIN_LINE = b'A01 AUTHENTICATE "PLAIN" "' + ADMIN_PLAIN_IR + b'"\r\n'


@fuzz_settings(400, deadline_s=10)
@given(mupdate_inputs(), chunk_cuts(), st.booleans())
@example(b"T1 NOOP\r\n" + LOGIN_LINE + b'T2 DELETE "user.bob"\r\nT3 DELETE "nope"\r\n', [], False)
@example(b'T1 RESERVE "user.new" "be1!default"\r\nT2 ACTIVATE {3}\r\n', [], True)
@example(b'A1 AUTHENTICATE "LOGIN"\r\nYWRtaW4=\r\nd3Jvbmc=\r\n' * 3 + b"T1 NOOP\r\n", [], False)
@example(
    b'A1 AUTHENTICATE "SCRAM-SHA-256" "' + b"bixuPWFkbWluLHI9eA==" + b'"\r\nYz1iaXdz\r\n', [], False
)
@example(b"T1 FIND {5}\r\nab", [], True)
@example(b"T1 FIND {999{1+}", [], True)  # found by atheris: a line end makes it a literal
@example(b'* AUTHENTICATE "PLAIN"\r\nT1 X\r\nAUTHENTICATE', [], False)  # tag "*" is legal
def test_live_master_answers_every_input_and_keeps_other_sessions(
    workdir: Path, data: bytes, cuts: list[int], logged_in: bool
) -> None:
    check_live_input(workdir, chunked(data, cuts), logged_in=logged_in)


@fuzz_settings(60, deadline_s=20)
@given(big_inputs(), chunk_cuts(), st.booleans())
def test_live_master_survives_cyrus_fatal_sizes(
    workdir: Path, data: bytes, cuts: list[int], logged_in: bool
) -> None:
    check_live_input(workdir, chunked(data, cuts), logged_in=logged_in)


# --------------------------------------------------------- a real twistd master, TCP

_unavailable = our_master_available()
needs_master = pytest.mark.skipif(_unavailable is not None, reason=_unavailable or "")


@pytest.fixture(scope="module")
def real_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurMaster]:
    master = OurMaster(tmp_path_factory.mktemp("fuzz-master") / "master", servername="fuzz")
    master.start()
    yield master
    master.stop()


@pytest.fixture(scope="module")
def bystander(real_master: OurMaster) -> Iterator[MupdateClient]:
    """Logged in before every attack, asked for NOOP after each."""
    client = MupdateClient.connect(real_master.host, real_master.port, timeout=15.0)
    client.authenticate_plain(real_master.admin, real_master.password)
    yield client
    client.close()


def _read_until_closed_or(
    sock: socket.socket, wanted: bytes, timeout: float = 20.0
) -> tuple[bytes, bool]:
    """Everything received until ``wanted`` has arrived (then a short grace for a close)
    or the peer closed; bounded by ``timeout``."""
    received = bytearray()
    deadline = time.monotonic() + timeout
    found_at: float | None = None
    while True:
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out; received {bytes(received[-500:])!r}")
        if found_at is None and wanted in received:
            found_at = now
        if found_at is not None and now - found_at > 0.3:
            return bytes(received), False
        sock.settimeout(0.1 if found_at is not None else max(0.01, deadline - now))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(received), True
        if not chunk:
            return bytes(received), True
        received += chunk


def _assert_clean_log(master: OurMaster) -> None:
    """No traceback, nothing at error/critical level, no event the logger could not format
    (client bytes reach log fields)."""
    log = master.log_path.read_text(errors="replace")
    for bad in ("Traceback", "Unable to format event", "#error]", "#critical]"):
        assert bad not in log, master.log_tail()


LOGIN = b'A01 AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n' % (len(ADMIN_PLAIN_IR), ADMIN_PLAIN_IR)
LINE_TOO_LONG = b'BAD "Line too long"\r\n'
LITERAL_TOO_LONG = b'BAD "Literal too long"\r\n'
BYE_LITERAL = b'* BYE "Literal too long"\r\n'


def _attack(name: str, data: bytes, login: bool, reply: bytes, closes: bool) -> object:
    return pytest.param(data, login, reply, closes, id=name)


ATTACKS = [
    _attack(
        "140000-byte-tag-before-login",
        b"a" * HUGE + b" NOOP\r\n",
        False,
        b"* " + LINE_TOO_LONG,
        True,
    ),
    _attack(
        "140000-byte-tag-after-login", b"a" * HUGE + b" NOOP\r\n", True, b"* " + LINE_TOO_LONG, True
    ),
    _attack(
        "140000-byte-quoted-before-login",
        b'T1 AUTHENTICATE "' + b"q" * HUGE + b'"\r\n',
        False,
        b"T1 " + LINE_TOO_LONG,
        True,
    ),
    _attack(
        "140000-byte-quoted",
        b'T1 FIND "' + b"q" * HUGE + b'"\r\n',
        True,
        b"T1 " + LINE_TOO_LONG,
        True,
    ),
    _attack(
        "literal-200000+",
        b"T1 FIND {200000+}\r\n" + b"l" * 200_000 + b"\r\n",
        True,
        b"T1 " + LITERAL_TOO_LONG,
        False,
    ),
    _attack("literal-200000", b"T1 FIND {200000}\r\n", True, b"T1 " + LITERAL_TOO_LONG, False),
    _attack(
        "literal-200000-before-login",
        b'T1 AUTHENTICATE "PLAIN" {200000}\r\n',
        False,
        b"T1 " + LITERAL_TOO_LONG,
        False,
    ),
    _attack("overflow-sync", b"T1 FIND {99999999999}\r\n", True, b"T1 " + LITERAL_TOO_LONG, False),
    _attack(
        "overflow-sync-before-login",
        b'T1 AUTHENTICATE "PLAIN" {99999999999}\r\n',
        False,
        b"T1 " + LITERAL_TOO_LONG,
        False,
    ),
    _attack("overflow-nonsync", b"T1 FIND {99999999999+}\r\n", True, BYE_LITERAL, True),
    _attack(
        "overflow-nonsync-before-login",
        b'T1 AUTHENTICATE "PLAIN" {99999999999+}\r\n',
        False,
        BYE_LITERAL,
        True,
    ),
    _attack("nul-in-tag", b"T\0 NOOP\r\n", True, b'* BAD "Need command"\r\n', False),
    _attack("nul-in-quoted", b'T1 FIND "a\0b"\r\n', True, b'T1 BAD "Extra arguments"\r\n', False),
    _attack(
        "nul-in-literal", b"T1 FIND {3+}\r\na\0b\r\n", True, b'T1 BAD "Extra arguments"\r\n', False
    ),
    _attack("nul-in-sasl-line", b'T1 AUTHENTICATE "PLAIN"\r\n\0\0\0\r\n', False, b"T1 NO ", False),
    _attack("bare-lf", b'T1 XYZZY\nT2 FIND "x"\n', True, b'T2 OK "Search completed"\r\n', False),
    _attack("bare-cr", b"T1 NOOP\rT2 NOOP\r\n", True, b'T1 BAD "Extra arguments"\r\n', False),
    _attack(
        "sasl-line-too-long",
        b'T1 AUTHENTICATE "PLAIN"\r\n' + b"A" * 30_000 + b"\r\n",
        False,
        b"T1 NO Error reading client response: line too long\r\n",
        True,
    ),
]


@needs_master
@pytest.mark.parametrize(("data", "login", "reply", "closes"), ATTACKS)
def test_real_master_answers_cyrus_fatal_input_and_keeps_running(
    real_master: OurMaster,
    bystander: MupdateClient,
    data: bytes,
    login: bool,
    reply: bytes,
    closes: bool,
) -> None:
    attacker = MupdateClient.connect(real_master.host, real_master.port, timeout=15.0)
    try:
        if login:
            attacker.authenticate_plain(real_master.admin, real_master.password)
        attacker.send_raw(data)
        if not closes:  # the connection goes on: its next command is answered
            attacker.send_raw(b"P1 NOOP\r\n")
        received, closed = _read_until_closed_or(
            attacker.sock, reply if closes else b"P1 ", timeout=20.0
        )
        assert reply in received, received[-300:]
        assert closed == closes, received[-300:]
        if not closes:
            assert (b'P1 OK "Noop done"' if login else b'P1 BAD "Please login first"') in received
    finally:
        attacker.close()
    noop = bystander.command(b"NOOP")
    assert noop.status_line == noop.tag + b' OK "Noop done"\r\n'
    assert real_master.running
    _assert_clean_log(real_master)


@needs_master
@fuzz_settings(25, deadline_s=30)
@given(mupdate_inputs())
def test_real_master_survives_fuzzed_sessions_over_tcp(
    real_master: OurMaster, bystander: MupdateClient, data: bytes
) -> None:
    """The hypothesis inputs over TCP, each on its own logged-in connection that then
    half-closes; the bystander still answers, the process lives, its log has no traceback."""
    with socket.create_connection((real_master.host, real_master.port), timeout=10) as sock:
        sock.sendall(LOGIN + data + b"\r\nP1 NOOP\r\n")
        sock.shutdown(socket.SHUT_WR)
        received, closed = _read_until_closed_or(sock, b"\0never", timeout=20.0)
    assert closed
    assert received.startswith(b"* AUTH "), received[:100]
    noop = bystander.command(b"NOOP")
    assert noop.status_line == noop.tag + b' OK "Noop done"\r\n'
    assert real_master.running
    _assert_clean_log(real_master)

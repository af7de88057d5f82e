"""Fuzzing the wire layer (issue 7 item 3; style.md §11; protocol doc §2, §14 case 27).

Property: whatever bytes arrive, in whatever chunks, in whatever state, the server engine
gives only command events, NEED_DATA/PAUSED, or a ``PeerError`` whose response renders as one
``BAD``, ``NO`` or ``* BYE`` line, and it holds no more than its limits allow; the client
engine gives only events or ``BadResponse``. Beyond tests/unit/protocol (which feeds garbage
to a fresh engine under small limits) this covers every state an engine can be in when the
bytes arrive, the real limits with Cyrus's fatal sizes, and what may leave the engine in each
state: no write before login, while streaming or on a read-only session. The h11 pattern:
each input whole, then in random chunks, then byte by byte; all must agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import (
    HUGE,
    big_inputs,
    chunk_cuts,
    chunked,
    fuzz_settings,
    mupdate_inputs,
    server_inputs,
)

from mupdate.protocol import (
    NEED_DATA,
    PAUSED,
    WRITE_COMMANDS,
    Authenticate,
    BadResponse,
    Bye,
    Capability,
    ClientConnection,
    ClientState,
    Command,
    Compress,
    DeleteLine,
    Done,
    Logout,
    MailboxLine,
    Noop,
    PeerError,
    ProtocolLimits,
    ReserveLine,
    SaslChallenge,
    SaslResponse,
    Sentinel,
    ServerConnection,
    ServerReady,
    ServerState,
    Starttls,
    Status,
    render_command,
    render_response,
)
from mupdate.protocol.strings import is_word

S = ServerState
DEFAULT = ProtocolLimits()
SMALL = ProtocolLimits(
    max_line=64, max_literal=48, max_command=160, max_args=4, max_update_hosts=3, max_sasl_line=40
)
WIDE = ProtocolLimits(max_line=4 << 20, max_literal=4 << 20, max_command=8 << 20)  # re-reading


def bound(limits: ProtocolLimits) -> int:
    """All an engine may hold once it has consumed what it can: the command so far, one
    literal being read and one partial line (buffer.py)."""
    return limits.max_command + limits.max_literal + limits.max_line + 2


# Commands each state may let out of the engine (protocol doc §4, §2.8, §5.2).
ALLOWED: dict[ServerState, tuple[type[Command], ...]] = {
    S.NOT_AUTHENTICATED: (Authenticate, Starttls, Compress, Logout),
    S.STREAMING: (Noop, Logout, Compress),
    S.AUTHENTICATED: tuple(
        c for c in Command.__subclasses__() if c not in (Authenticate, Starttls)
    ),
}

# ----------------------------------------------------------------- server engine


@dataclass(frozen=True)
class Setup:
    """How the engine is built and brought into its state, through the wire as a client
    would (the same path as tests/unit/protocol's make_server)."""

    name: str
    state: ServerState
    read_only: bool = False
    starttls_available: bool = False
    tls_active: bool = False

    @property
    def wire(self) -> bytes:
        return b"".join(step for step in self._steps() if step is not None)

    def _steps(self) -> list[bytes | None]:
        return {
            S.NOT_AUTHENTICATED: [],
            S.AUTHENTICATING: [b'A01 AUTHENTICATE "PLAIN"\r\n'],
            S.AUTHENTICATED: [b'A01 AUTHENTICATE "PLAIN"\r\n', None],
            S.STREAMING: [b'A01 AUTHENTICATE "PLAIN"\r\n', None, b"U01 UPDATE\r\n"],
        }[self.state]

    def build(self, limits: ProtocolLimits) -> ServerConnection:
        server = ServerConnection(
            limits,
            read_only=self.read_only,
            starttls_available=self.starttls_available,
            tls_active=self.tls_active,
        )
        for step in self._steps():
            if step is None:
                server.authentication_succeeded()
                continue
            server.receive_data(step)
            assert not isinstance(server.next_event(), Sentinel)
            assert server.next_event() is NEED_DATA
        assert server.state is self.state
        return server


SETUPS = [
    Setup("not-authenticated", S.NOT_AUTHENTICATED),
    Setup("starttls-offered", S.NOT_AUTHENTICATED, starttls_available=True),
    Setup("implicit-tls", S.NOT_AUTHENTICATED, starttls_available=True, tls_active=True),
    Setup("authenticating", S.AUTHENTICATING),
    Setup("authenticated", S.AUTHENTICATED),
    Setup("streaming", S.STREAMING),
    Setup("read-only", S.AUTHENTICATED, read_only=True),
    Setup("read-only-streaming", S.STREAMING, read_only=True),
]
setups = st.sampled_from(SETUPS)


@dataclass
class ServerRun:
    """Everything the engine did, in order, as comparable values."""

    record: list[object] = field(default_factory=list)
    starttls: bool = False


def _check_error(error: PeerError, before: ServerState, after: ServerState, data: bytes) -> bytes:
    """A PeerError carries a BAD (NO only for a SASL line) or BYE that renders as one line
    our own client reads back as the same event; its tag is the client's or ``*``."""
    response = error.response
    wire = render_response(response)
    assert wire.endswith(b"\r\n")
    assert wire.count(b"\n") == 1, wire[:200]
    if isinstance(response, Bye):
        assert error.close
        assert wire.startswith(b"* BYE ")
        client = ClientConnection(WIDE)
        client.receive_data(b"* OK MUPDATE\r\n" + wire)
        assert isinstance(client.next_event(), ServerReady)
        assert client.next_event() == response
    else:
        assert isinstance(response, Done), response
        if response.status is Status.NO:  # only the SASL line limit, which closes
            assert before is S.AUTHENTICATING, response
            assert error.close
        else:
            assert response.status is Status.BAD, response
        assert wire.startswith(response.tag + b" " + response.status.value + b" ")
        assert response.tag == b"*" or (is_word(response.tag) and response.tag in data)
        client = ClientConnection(WIDE)
        client.receive_data(b"* OK MUPDATE\r\n")
        assert isinstance(client.next_event(), ServerReady)
        if not response.quoted:
            client.expect_sasl(response.tag)
        client.receive_data(wire)
        assert client.next_event() == response
    assert (after is S.CLOSED) == error.close, (after, error)
    return wire


def _check_event(
    event: object, before: ServerState, setup: Setup, limits: ProtocolLimits, data: bytes
) -> None:
    if isinstance(event, SaslResponse):
        assert before is S.AUTHENTICATING
        assert b"\n" not in event.line
        assert len(event.line) <= limits.max_sasl_line + 1  # the CR of a bare-CR line end
        return
    assert isinstance(event, Command), event
    assert isinstance(event, ALLOWED[before]), (before, event)
    if setup.read_only:
        assert not isinstance(event, WRITE_COMMANDS), event
    assert is_word(event.tag)
    assert event.tag in data
    # Every string that leaves the server engine is NUL-free (§2.6) and our client can
    # send it again: the event survives render -> parse unchanged.
    state = S.NOT_AUTHENTICATED if before is S.NOT_AUTHENTICATED else S.AUTHENTICATED
    again = Setup("again", state, starttls_available=True)
    engine = again.build(WIDE)
    engine.receive_data(render_command(event))
    assert engine.next_event() == event


def run_server(
    setup: Setup, limits: ProtocolLimits, chunks: list[bytes], *, auth_ok: bool = True
) -> ServerRun:
    """A deterministic glue: AUTHENTICATE with an initial response is decided at once, one
    without it after one SASL line (``*`` cancels); STARTTLS completes at once."""
    seen = setup.wire + b"".join(chunks)  # where every echoed tag must come from
    server = setup.build(limits)
    run = ServerRun()

    def flush() -> None:
        if sent := server.data_to_send():
            assert sent == b"+ go ahead\r\n"
            run.record.append(("wrote", sent))

    awaiting_sasl = setup.state is S.AUTHENTICATING

    def finish_auth(ok: bool) -> None:
        nonlocal awaiting_sasl
        awaiting_sasl = False
        if ok:
            server.authentication_succeeded()
        else:
            server.authentication_failed()

    for chunk in [*chunks, b""]:  # b"": the peer closes
        server.receive_data(chunk)
        while True:
            before = server.state
            try:
                event = server.next_event()
            except PeerError as error:  # the glue flushes the engine's own bytes first
                flush()
                run.record.append(("error", _check_error(error, before, server.state, seen)))
                continue
            flush()
            if event is PAUSED and server.state is S.TLS_NEGOTIATING:
                server.tls_started()
                run.record.append("tls")
                continue
            if isinstance(event, Sentinel):
                assert event is (PAUSED if server.state is S.CLOSED else NEED_DATA)
                assert server.buffered <= bound(limits), server.buffered
                break
            _check_event(event, before, setup, limits, seen)
            run.record.append(event)
            if isinstance(event, Starttls):
                run.starttls = True
            elif isinstance(event, Authenticate):
                if event.initial_response is None:
                    awaiting_sasl = True
                else:
                    finish_auth(auth_ok)
            elif isinstance(event, SaslResponse) and awaiting_sasl:
                finish_auth(auth_ok and event.line != b"*")
    assert server.state in (S.CLOSED, S.TLS_NEGOTIATING) or awaiting_sasl
    run.record.append(("end", server.state))
    return run


def _same_every_way(
    setup: Setup,
    limits: ProtocolLimits,
    data: bytes,
    cuts: list[int],
    *,
    auth_ok: bool,
    bytewise: bool,
) -> ServerRun:
    whole = run_server(setup, limits, [data], auth_ok=auth_ok)
    if whole.starttls:  # bytes behind STARTTLS are dropped only if they came with it (§5.2)
        run_server(setup, limits, chunked(data, cuts), auth_ok=auth_ok)
        return whole
    assert run_server(setup, limits, chunked(data, cuts), auth_ok=auth_ok).record == whole.record
    if bytewise:
        pieces = [data[i : i + 1] for i in range(len(data))]
        assert run_server(setup, limits, pieces, auth_ok=auth_ok).record == whole.record
    return whole


@fuzz_settings(1500, deadline_s=5)
@given(setups, mupdate_inputs(), chunk_cuts(), st.booleans())
@example(SETUPS[0], b"T\0 NOOP\r\nT1 FIND {3+}\r\na\0b\r\nT2 NOOP\n", [5], True)
@example(SETUPS[3], b"x" * 41 + b"\r\nT1 NOOP\r\n", [], True)
@example(SETUPS[5], b'T1 DELETE "a"\r\nT2 NOOP\r\n', [], True)
@example(SETUPS[6], b'T1 RESERVE "a" "b"\r\nT2 DELETE {1}\r\nx\r\n', [], True)
def test_server_engine_gives_events_or_its_own_error_in_every_state(
    setup: Setup, data: bytes, cuts: list[int], auth_ok: bool
) -> None:
    _same_every_way(setup, SMALL, data, cuts, auth_ok=auth_ok, bytewise=True)


@fuzz_settings(150, deadline_s=20)
@given(setups, big_inputs(), chunk_cuts(), st.booleans())
def test_server_engine_survives_cyrus_fatal_sizes_in_every_state(
    setup: Setup, data: bytes, cuts: list[int], auth_ok: bool
) -> None:
    run = _same_every_way(setup, DEFAULT, data, cuts, auth_ok=auth_ok, bytewise=False)
    assert run.record  # a 64 KiB+ token always gets an answer


# The fatal cases of protocol doc §2.7 / §14 case 27, exactly. Each: the input, the replies
# after login, the replies before login (None: the same), whether the connection ends.
BAD_LINE = b'* BAD "Line too long"\r\n'
BYE_LITERAL = b'* BYE "Literal too long"\r\n'
LOGIN_FIRST = b'T1 BAD "Please login first"\r\n'


def _case(
    name: str, data: bytes, after: bytes, before: bytes | None = None, closes: bool = False
) -> object:
    return pytest.param(data, after, after if before is None else before, closes, id=name)


CYRUS_FATAL = [
    _case("140000-byte-tag", b"a" * HUGE + b" NOOP\r\n", BAD_LINE, closes=True),
    _case("140000-byte-tag-no-line-end", b"a" * HUGE, BAD_LINE, closes=True),
    _case(
        "140000-byte-word",
        b"T1 " + b"N" * HUGE + b"\r\n",
        b'T1 BAD "Line too long"\r\n',
        closes=True,
    ),
    _case(
        "140000-byte-quoted",
        b'T1 FIND "' + b"q" * HUGE + b'"\r\n',
        b'T1 BAD "Line too long"\r\n',
        closes=True,
    ),
    _case(
        "140000-byte-mechanism",
        b'T1 AUTHENTICATE "' + b"q" * HUGE + b'"\r\n',
        b'T1 BAD "Line too long"\r\n',
        closes=True,
    ),
    _case(
        "literal-200000+",
        b"T1 FIND {200000+}\r\n" + b"l" * 200_000 + b"\r\n",
        b'T1 BAD "Literal too long"\r\n',
        LOGIN_FIRST,
    ),
    _case(
        "literal-200000-sync",
        b"T1 FIND {200000}\r\n",
        b'T1 BAD "Literal too long"\r\n',
        LOGIN_FIRST,
    ),
    _case(
        "literal-131073-sync",
        b"T1 FIND {131073}\r\n",
        b'T1 BAD "Literal too long"\r\n',
        LOGIN_FIRST,
    ),
    _case(
        "overflow-sync", b"T1 FIND {99999999999}\r\n", b'T1 BAD "Literal too long"\r\n', LOGIN_FIRST
    ),
    _case("overflow-nonsync", b"T1 FIND {99999999999+}\r\n", BYE_LITERAL, closes=True),
    _case(
        "overflow-in-authenticate",
        b'T1 AUTHENTICATE "PLAIN" {99999999999+}\r\n',
        BYE_LITERAL,
        closes=True,
    ),
    _case(
        "400-digit-length",
        b"T1 FIND {" + b"9" * 400 + b"}\r\n",
        b'T1 BAD "Literal too long"\r\n',
        LOGIN_FIRST,
    ),
    _case("literal-past-command-limit", b"T1 FIND {1048577+}\r\n", BYE_LITERAL, closes=True),
    _case("nul-in-tag", b"T\0 NOOP\r\n", b'* BAD "Need command"\r\n'),
    _case("nul-in-quoted", b'T1 FIND "a\0b"\r\n', b'T1 BAD "Extra arguments"\r\n', LOGIN_FIRST),
    _case(
        "nul-in-literal", b"T1 FIND {3+}\r\na\0b\r\n", b'T1 BAD "Extra arguments"\r\n', LOGIN_FIRST
    ),
    _case(
        "nul-in-word",
        b"T1 FIND\0 {3+}\r\nabc\r\n",
        b'T1 BAD "Unrecognized command"\r\n',
        LOGIN_FIRST,
    ),
    _case("bare-cr", b"T1 NOOP\rT2 NOOP\r\n", b'T1 BAD "Extra arguments"\r\n', LOGIN_FIRST),
    _case(
        "bare-cr-joins-the-next-line", b"T1 NOOP\r", b'T1 BAD "Extra arguments"\r\n', LOGIN_FIRST
    ),
    _case("bare-lf-unknown", b"T1 XYZZY\n", b'T1 BAD "Unrecognized command"\r\n'),
    _case("bare-lf-noop", b"T1 NOOP\n", b"Noop(tag=b'T1')", LOGIN_FIRST),
]


def _answers(server: ServerConnection, pieces: list[bytes]) -> list[bytes]:
    """What the engine says, as wire bytes (events as their repr)."""
    out: list[bytes] = []
    for piece in pieces:
        server.receive_data(piece)
        while True:
            try:
                event = server.next_event()
            except PeerError as error:
                out.append(render_response(error.response))
                continue
            if sent := server.data_to_send():
                out.append(sent)
            if isinstance(event, Sentinel):
                break
            out.append(repr(event).encode())
    return out


@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
@pytest.mark.parametrize(("data", "after", "before", "closes"), CYRUS_FATAL)
def test_cyrus_fatal_input_is_answered_and_only_this_connection_ends(
    data: bytes, after: bytes, before: bytes, closes: bool, logged_in: bool
) -> None:
    """Whole, then byte by byte: the exact answer, the engine's memory within its limits,
    and then either the connection is closed (nothing more is read) or a probe NOOP on the
    same connection gets its usual answer."""
    setup = SETUPS[4] if logged_in else SETUPS[0]
    probe = b"P1 NOOP\r\n"
    if data.endswith(b"\r"):  # the probe completes the line: "T1 NOOP\rP1 NOOP"
        probe_answers: list[bytes] = []
    elif logged_in:
        probe_answers = [b"Noop(tag=b'P1')"]
    else:
        probe_answers = [b'P1 BAD "Please login first"\r\n']
    expected = [after if logged_in else before]
    if not closes:
        expected += probe_answers
    for pieces in ([data + probe], [data[i : i + 1] for i in range(len(data))] + [probe]):
        server = setup.build(DEFAULT)
        assert _answers(server, pieces) == expected
        assert server.buffered <= bound(DEFAULT)
        assert (server.state is S.CLOSED) == closes


# ----------------------------------------------------------------- client engine

MODES = [ClientState.GREETING, ClientState.READY, ClientState.AUTHENTICATING, ClientState.STARTTLS]
CLIENT_EVENTS = (
    Capability,
    ServerReady,
    Done,
    MailboxLine,
    ReserveLine,
    DeleteLine,
    Bye,
    SaslChallenge,
)


def run_client(mode: ClientState, limits: ProtocolLimits, chunks: list[bytes]) -> list[object]:
    client = ClientConnection(limits)
    if mode is not ClientState.GREETING:
        client.receive_data(b"* OK MUPDATE\r\n")
        assert isinstance(client.next_event(), ServerReady)
    if mode is ClientState.AUTHENTICATING:
        client.expect_sasl(b"A01")
    elif mode is ClientState.STARTTLS:
        client.expect_starttls(b"S01")
    record: list[object] = []
    for chunk in [*chunks, b""]:
        client.receive_data(chunk)
        while True:
            try:
                event = client.next_event()
            except BadResponse as error:
                assert client.state is ClientState.CLOSED
                assert client.next_event() is PAUSED
                record.append(("bad", error.reason))
                continue
            if event is PAUSED and client.state is ClientState.TLS_NEGOTIATING:
                client.tls_started()
                record.append("tls")
                continue
            if isinstance(event, Sentinel):
                assert client.buffered <= bound(limits)
                break
            assert isinstance(event, CLIENT_EVENTS), event
            if isinstance(event, Done | MailboxLine | ReserveLine | DeleteLine):
                assert event.tag
                assert b"\n" not in event.tag
            if isinstance(event, Bye):
                assert client.state is ClientState.CLOSED
            record.append(event)
    assert client.state is ClientState.CLOSED  # EOF ends every mode
    return record


def _client_every_way(
    mode: ClientState, limits: ProtocolLimits, data: bytes, cuts: list[int]
) -> None:
    whole = run_client(mode, limits, [data])
    again = run_client(mode, limits, chunked(data, cuts))
    if b"S01 OK" not in data:  # bytes behind STARTTLS's OK are dropped only if they came with it
        assert again == whole


@fuzz_settings(1000, deadline_s=5)
@given(st.sampled_from(MODES), server_inputs(), chunk_cuts())
def test_client_engine_gives_events_or_bad_response_in_every_mode(
    mode: ClientState, data: bytes, cuts: list[int]
) -> None:
    _client_every_way(mode, SMALL, data, cuts)


@fuzz_settings(100, deadline_s=20)
@given(st.sampled_from(MODES), big_inputs(), chunk_cuts())
def test_client_engine_survives_huge_server_tokens(
    mode: ClientState, data: bytes, cuts: list[int]
) -> None:
    _client_every_way(mode, DEFAULT, data.replace(b"T1 ", b"* ", 1), cuts)

"""Hypothesis properties of the wire layer (style.md §11): every event round-trips through
render and parse; arbitrary bytes give only events, NEED_DATA/PAUSED or the engine's own
error; how the bytes are chunked never changes the result; memory stays bounded."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    SMALL_LIMITS,
    Failed,
    Reply,
    Wrote,
    feed_client,
    feed_server,
    make_server,
)

from mupdate.protocol import (
    PAUSED,
    Activate,
    Authenticate,
    BadResponse,
    Bye,
    Capability,
    ClientConnection,
    ClientState,
    Command,
    Compress,
    Deactivate,
    Delete,
    DeleteLine,
    Done,
    Find,
    Greeting,
    List,
    Logout,
    MailboxLine,
    Noop,
    PeerError,
    Reserve,
    ReserveLine,
    SaslChallenge,
    SaslResponse,
    Sentinel,
    ServerConnection,
    ServerReady,
    ServerState,
    Starttls,
    Status,
    Update,
    render_command,
    render_response,
)
from mupdate.protocol.strings import can_quote, is_word

SPECIAL = [
    b" ",
    b'"',
    b"\\",
    b"\r",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff",
    b"\xc3\xa9",
    b"\t",
    b"{5}",
    b"{3+}",
    b"{",
    b"}",
    b"a",
    b"Z",
    b"*",
    b"!",
    b"user.",
]
values = st.one_of(
    st.binary(max_size=24),
    st.lists(st.sampled_from(SPECIAL), max_size=16).map(b"".join),
    st.integers(1020, 1030).map(lambda n: b"x" * n),
)
no_nul = values.map(lambda v: v.replace(b"\0", b""))
quotable = values.filter(can_quote)
tags = st.binary(min_size=1, max_size=8).map(
    lambda raw: bytes(b for b in raw if is_word(bytes([b]))) or b"T"
)

commands = st.one_of(
    st.builds(Authenticate, tags, no_nul, st.none() | no_nul),
    st.builds(Starttls, tags),
    st.builds(Compress, tags, no_nul),
    st.builds(Logout, tags),
    st.builds(Noop, tags),
    st.builds(Find, tags, no_nul),
    st.builds(List, tags, st.none() | no_nul),
    st.builds(Update, tags, st.lists(no_nul.filter(bool), max_size=5).map(tuple)),
    st.builds(Reserve, tags, no_nul, no_nul),
    st.builds(Activate, tags, no_nul, no_nul, no_nul),
    st.builds(Deactivate, tags, no_nul, no_nul),
    st.builds(Delete, tags, no_nul),
)
responses = st.one_of(
    st.builds(Done, tags, st.sampled_from(list(Status)), values),
    st.builds(MailboxLine, tags, values, values, values),
    st.builds(ReserveLine, tags, values, values),
    st.builds(DeleteLine, tags, values),
    st.builds(Bye, values),
)


def _state_for(command: Command) -> ServerState:
    if isinstance(command, Authenticate | Starttls):
        return ServerState.NOT_AUTHENTICATED
    return ServerState.AUTHENTICATED


@given(commands, st.booleans())
def test_every_command_round_trips_through_the_server(command: Command, bytewise: bool) -> None:
    server = make_server(_state_for(command), starttls_available=True)
    events, _ = feed_server(server, render_command(command), bytewise=bytewise)
    assert events == [command]


@given(st.builds(SaslResponse, values.filter(lambda v: b"\r" not in v and b"\n" not in v)))
def test_sasl_responses_round_trip(response: SaslResponse) -> None:
    server = make_server(ServerState.AUTHENTICATING)
    assert feed_server(server, render_command(response), bytewise=True)[0] == [response]


def _ready_client() -> ClientConnection:
    client = ClientConnection()
    feed_client(client, b"* OK MUPDATE\r\n")
    return client


@given(responses, st.booleans())
def test_every_response_round_trips_through_the_client(event: object, bytewise: bool) -> None:
    events, _ = feed_client(_ready_client(), render_response(event), bytewise=bytewise)  # type: ignore[arg-type]
    assert events == [event]


@given(st.binary(max_size=200))
def test_sasl_challenges_round_trip(data: bytes) -> None:
    client = _ready_client()
    client.expect_sasl(b"A01")
    assert feed_client(client, render_response(SaslChallenge(data)))[0] == [SaslChallenge(data)]


@given(
    st.lists(quotable, max_size=4).map(tuple),
    quotable,
    quotable,
    quotable,
    quotable,
    st.booleans(),
    st.booleans(),
)
def test_greeting_round_trips(
    mechs: tuple[bytes, ...],
    name: bytes,
    impl: bytes,
    version: bytes,
    role: bytes,
    starttls: bool,
    compress: bool,
) -> None:
    greeting = Greeting(mechs, name, impl, version, role, starttls=starttls, compress=compress)
    events, _ = feed_client(ClientConnection(), render_response(greeting), bytewise=True)
    expected: list[object] = [Capability(b"AUTH", mechs)]
    expected += [Capability(b"STARTTLS")] if starttls else []
    expected += [Capability(b"COMPRESS", (b"DEFLATE",))] if compress else []
    expected += [
        Capability(b"PARTIAL-UPDATE"),
        ServerReady((b"MUPDATE", name, impl, version, role)),
    ]
    assert events == expected


# ------------------------------------------------------------------ arbitrary input

FRAGMENTS = [
    b"T1 ",
    b"A01 ",
    b"NOOP",
    b"FIND ",
    b"LIST",
    b"UPDATE ",
    b"RESERVE ",
    b"ACTIVATE ",
    b"AUTHENTICATE ",
    b"LOGOUT",
    b"STARTTLS",
    b"COMPRESS ",
    b"DELETE ",
    b'"PLAIN"',
    b"{5}\r\n",
    b"{3+}\r\n",
    b"{70+}\r\n",
    b"{60}\r\n",
    b"{99999999999+}\r\n",
    b"{200+}\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b'"',
    b"\\",
    b" ",
    b"\0",
    b"x" * 70,
    b"*\r\n",
    b"U01 MAILBOX ",
    b"* OK ",
    b"* AUTH ",
    b'X OK "done"',
    b"S01 OK ",
    b"A01 OK ",
]
garbage = st.lists(st.one_of(st.binary(max_size=12), st.sampled_from(FRAGMENTS)), max_size=40).map(
    b"".join
)
BOUND = SMALL_LIMITS.max_command + SMALL_LIMITS.max_literal + SMALL_LIMITS.max_line + 2


def _drive_server(server: ServerConnection, chunks: list[bytes]) -> list[object]:
    """A deterministic glue: AUTHENTICATE succeeds, STARTTLS completes at once."""
    record: list[object] = []
    for chunk in chunks:
        server.receive_data(chunk)
        while True:
            try:
                event = server.next_event()
            except PeerError as error:
                response = error.response
                record.append(Reply(render_response(response), error.close))
                assert isinstance(response, Done | Bye)
                continue
            sent = server.data_to_send()
            if sent:
                record.append(Wrote(sent))
            if event is PAUSED and server.state is ServerState.TLS_NEGOTIATING:
                server.tls_started()
                continue
            if not isinstance(event, Command | SaslResponse):
                assert server.buffered <= BOUND  # all it could consume is consumed
                break
            record.append(event)
            if isinstance(event, Authenticate):
                server.authentication_succeeded()
    return record


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(garbage, st.lists(st.integers(0, 10_000), max_size=8), st.booleans())
def test_server_on_arbitrary_bytes_never_breaks_and_ignores_chunking(
    data: bytes, cuts: list[int], read_only: bool
) -> None:
    def run(chunks: list[bytes]) -> list[object]:
        return _drive_server(ServerConnection(SMALL_LIMITS, read_only=read_only), chunks)

    whole = run([data])
    assert run(_chunked(data, cuts)) == whole
    assert run([data[i : i + 1] for i in range(len(data))]) == whole


@settings(max_examples=200)
@given(garbage, st.lists(st.integers(0, 10_000), max_size=8))
def test_server_with_starttls_on_arbitrary_bytes_never_breaks(data: bytes, cuts: list[int]) -> None:
    server = ServerConnection(SMALL_LIMITS, starttls_available=True)
    _drive_server(server, _chunked(data, cuts))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage,
    st.lists(st.integers(0, 10_000), max_size=8),
    st.sampled_from(
        [ClientState.GREETING, ClientState.READY, ClientState.AUTHENTICATING, ClientState.STARTTLS]
    ),
)
def test_client_on_arbitrary_bytes_never_breaks(
    data: bytes, cuts: list[int], mode: ClientState
) -> None:
    def run(chunks: list[bytes]) -> list[object]:
        client = ClientConnection(SMALL_LIMITS)
        if mode is not ClientState.GREETING:
            feed_client(client, b"* OK MUPDATE\r\n")
        if mode is ClientState.AUTHENTICATING:
            client.expect_sasl(b"A01")
        elif mode is ClientState.STARTTLS:
            client.expect_starttls(b"S01")
        record: list[object] = []
        for chunk in chunks:
            client.receive_data(chunk)
            while True:
                try:
                    event = client.next_event()
                except BadResponse as error:
                    record.append(Failed(error.reason))
                    continue
                if event is PAUSED and client.state is ClientState.TLS_NEGOTIATING:
                    client.tls_started()
                    continue
                if isinstance(event, Sentinel):
                    assert client.buffered <= BOUND
                    break
                record.append(event)
        return record

    whole = run([data])
    assert isinstance(whole, list)
    if b"S01 OK" not in data:  # after STARTTLS OK the buffered plaintext depends on chunking
        assert run(_chunked(data, cuts)) == whole

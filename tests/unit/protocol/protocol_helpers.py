"""Shared drivers for the wire-layer tests: feed bytes (whole, or one byte at a time) into
an engine and record everything it does, in order."""

from __future__ import annotations

from dataclasses import dataclass

from mupdate.protocol import (
    NEED_DATA,
    PAUSED,
    BadResponse,
    ClientConnection,
    PeerError,
    ProtocolLimits,
    Sentinel,
    ServerConnection,
    ServerState,
    render_response,
)

PLAIN_IR = b"AGFkbWluAHNlY3JldA=="  # admin / secret


@dataclass(frozen=True)
class Reply:
    """A PeerError, as the bytes the glue would send and whether it closes."""

    wire: bytes
    close: bool


@dataclass(frozen=True)
class Wrote:
    """Bytes from data_to_send() (the engine's own ``+ go ahead``)."""

    wire: bytes


@dataclass(frozen=True)
class Failed:
    """A BadResponse from the client engine."""

    reason: str


def drain_server(server: ServerConnection) -> tuple[list[object], Sentinel]:
    out: list[object] = []
    while True:
        try:
            event = server.next_event()
        except PeerError as error:
            _wrote(server, out)
            out.append(Reply(render_response(error.response), error.close))
            continue
        _wrote(server, out)
        if event is NEED_DATA or event is PAUSED:
            assert isinstance(event, Sentinel)
            return out, event
        out.append(event)


def _wrote(server: ServerConnection, out: list[object]) -> None:
    data = server.data_to_send()
    if data:
        out.append(Wrote(data))


def feed_server(
    server: ServerConnection, data: bytes, *, bytewise: bool = False
) -> tuple[list[object], Sentinel]:
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    out: list[object] = []
    last: Sentinel = NEED_DATA
    for chunk in chunks or [b""]:
        if chunk:
            server.receive_data(chunk)
        events, last = drain_server(server)
        out += events
    return out, last


def drain_client(client: ClientConnection) -> tuple[list[object], Sentinel]:
    out: list[object] = []
    while True:
        try:
            event = client.next_event()
        except BadResponse as error:
            out.append(Failed(error.reason))
            continue
        if isinstance(event, Sentinel):
            return out, event
        out.append(event)


def feed_client(
    client: ClientConnection, data: bytes, *, bytewise: bool = False
) -> tuple[list[object], Sentinel]:
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    out: list[object] = []
    last: Sentinel = NEED_DATA
    for chunk in chunks or [b""]:
        if chunk:
            client.receive_data(chunk)
        events, last = drain_client(client)
        out += events
    return out, last


def make_server(state: ServerState, **kwargs: object) -> ServerConnection:
    """A server engine brought into ``state`` through the wire, as a client would."""
    if state is ServerState.TLS_NEGOTIATING:
        kwargs.setdefault("starttls_available", True)
    server = ServerConnection(**kwargs)  # type: ignore[arg-type]
    plan: dict[ServerState, list[bytes | str]] = {
        ServerState.NOT_AUTHENTICATED: [],
        ServerState.AUTHENTICATING: [b'A01 AUTHENTICATE "PLAIN"\r\n'],
        ServerState.AUTHENTICATED: [b'A01 AUTHENTICATE "PLAIN"\r\n', "ok"],
        ServerState.STREAMING: [b'A01 AUTHENTICATE "PLAIN"\r\n', "ok", b"U01 UPDATE\r\n"],
        ServerState.TLS_NEGOTIATING: [b"S01 STARTTLS\r\n"],
        ServerState.CLOSED: [b"Q01 LOGOUT\r\n"],
    }
    for step in plan[state]:
        if step == "ok":
            server.authentication_succeeded()
        else:
            assert isinstance(step, bytes)
            events, _ = feed_server(server, step)
            assert len(events) == 1, events
            assert not isinstance(events[0], Reply), events
    assert server.state is state
    return server


def both_ways(
    state: ServerState, data: bytes, **kwargs: object
) -> tuple[list[object], Sentinel, ServerConnection]:
    """Feed ``data`` whole and one byte at a time into fresh engines in ``state``; both
    must produce the same record. Returns it with the whole-feed engine."""
    whole_server = make_server(state, **kwargs)
    whole = feed_server(whole_server, data)
    bytewise = feed_server(make_server(state, **kwargs), data, bytewise=True)
    assert whole[0] == bytewise[0]
    assert whole[1] == bytewise[1]
    return whole[0], whole[1], whole_server


SMALL_LIMITS = ProtocolLimits(
    max_line=64,
    max_literal=48,
    max_command=160,
    max_args=4,
    max_update_hosts=3,
    max_sasl_line=40,
)

"""The protocol error family (style.md §7; protocol doc §2.8).

Bad bytes from the peer raise ``PeerError`` (server side: it carries the reply to send and
whether to close) or ``BadResponse`` (client side: the server broke the protocol, Cyrus
clients log out and reconnect, §6.2). Misuse of an engine by our own code raises
``LocalProtocolError``: that is a bug, never the peer's fault. Imports nothing from Twisted.
"""

from __future__ import annotations

from mupdate.protocol.responses import Response


class ProtocolError(Exception):
    """Base of every error the wire layer raises."""


class PeerError(ProtocolError):
    """The client's bytes were bad. Send ``response``; then close if ``close`` is set,
    otherwise keep reading: the engine has already discarded the offending command."""

    def __init__(self, response: Response, *, close: bool = False) -> None:
        super().__init__(response)
        self.response: Response = response
        self.close: bool = close


class BadResponse(ProtocolError):
    """The server's bytes were bad (client side). The connection cannot be trusted any more:
    the client engine moves to CLOSED, the glue logs ``reason`` and drops the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason: str = reason
        self.close: bool = True


class LocalProtocolError(ProtocolError):
    """Our own code misused an engine (wrong state, an event that cannot be rendered)."""

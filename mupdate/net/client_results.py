"""What the client glue reports: typed failures and results (style.md §7, client side).

NO, BAD and BYE become exceptions carrying the server's text; the tools map them to exit
codes, the uplink to a reconnect. Re-exported by ``mupdate.net.client``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mupdate.logs import text
from mupdate.protocol.client import ServerReady
from mupdate.protocol.responses import DeleteLine, Done, MailboxLine, ReserveLine

DataLine = MailboxLine | ReserveLine | DeleteLine


class MupdateError(Exception):
    """Base of every failure the client reports."""


class CommandFailed(MupdateError):
    """The server answered NO or BAD."""

    def __init__(self, status: bytes, text_: bytes, tag: bytes = b"") -> None:
        super().__init__(f"{text(tag)} {text(status)} {text(text_)}")
        self.status = status
        self.text = text_
        self.tag = tag


class _WithText(MupdateError):
    def __init__(self, text_: bytes) -> None:
        super().__init__(text(text_))
        self.text = text_


class AuthenticationFailed(_WithText):
    """AUTHENTICATE got NO or BAD, or no offered mechanism is usable."""


class ServerBye(_WithText):
    """``* BYE``: the server is closing the connection."""


class ProtocolViolation(MupdateError):
    """The server broke the protocol; the connection has been dropped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionClosed(MupdateError):
    """The connection ended (or never existed) before the answer arrived."""


class TlsFailed(ConnectionClosed):
    """TLS could not be established: the handshake failed or the server's certificate was
    refused (expired, unknown CA, wrong host name). The connection is gone."""


@dataclass(frozen=True)
class ServerInfo:
    capabilities: dict[bytes, tuple[bytes, ...]]
    ready: ServerReady
    mechanisms: tuple[str, ...]


@dataclass
class CommandResult:
    tag: bytes
    data: list[DataLine]
    done: Done

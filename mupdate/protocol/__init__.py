"""The sans-I/O MUPDATE wire layer (RFC 3656 as Cyrus IMAP 3.6 speaks it; protocol doc §2-§6).

Bytes in, events out; events in, bytes out. Imports nothing from Twisted, and no clock, log
or socket: the glue in ``mupdate.net`` owns all of those.
"""

from mupdate.protocol.buffer import NEED_DATA, PAUSED, Sentinel
from mupdate.protocol.client import (
    Capability,
    ClientConnection,
    ClientEvent,
    ClientState,
    ServerReady,
)
from mupdate.protocol.commands import (
    WRITE_COMMANDS,
    Activate,
    Authenticate,
    Command,
    Compress,
    Deactivate,
    Delete,
    Find,
    List,
    Logout,
    Noop,
    Reserve,
    SaslResponse,
    Starttls,
    Update,
)
from mupdate.protocol.errors import BadResponse, LocalProtocolError, PeerError, ProtocolError
from mupdate.protocol.limits import ProtocolLimits
from mupdate.protocol.responses import (
    Bye,
    DeleteLine,
    Done,
    GoAhead,
    Greeting,
    MailboxLine,
    ReserveLine,
    Response,
    SaslChallenge,
    Status,
)
from mupdate.protocol.server import ServerConnection, ServerState
from mupdate.protocol.strings import can_quote, render_command, render_response, render_string

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "WRITE_COMMANDS",
    "Activate",
    "Authenticate",
    "BadResponse",
    "Bye",
    "Capability",
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "Command",
    "Compress",
    "Deactivate",
    "Delete",
    "DeleteLine",
    "Done",
    "Find",
    "GoAhead",
    "Greeting",
    "List",
    "LocalProtocolError",
    "Logout",
    "MailboxLine",
    "Noop",
    "PeerError",
    "ProtocolError",
    "ProtocolLimits",
    "Reserve",
    "ReserveLine",
    "Response",
    "SaslChallenge",
    "SaslResponse",
    "Sentinel",
    "ServerConnection",
    "ServerReady",
    "ServerState",
    "Starttls",
    "Status",
    "Update",
    "can_quote",
    "render_command",
    "render_response",
    "render_string",
]

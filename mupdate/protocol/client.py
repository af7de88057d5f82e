"""ClientConnection: the sans-I/O MUPDATE client engine for our slave, tools and tests
(protocol doc §3, §5.1, §5.2, §6.2). Imports nothing from Twisted.
"""

# How it works
# ------------
# Same three verbs as the server: receive_data(bytes) (b"" = EOF), next_event() until
# NEED_DATA or PAUSED, send(command) -> bytes. The engine reads the server in one of these
# modes (the ClientState), each with the parser Cyrus clients use there:
#
#   GREETING        raw lines "* WORD args..." -> Capability, until "* OK ..." -> ServerReady
#                   (§3.3: only the "* OK" prefix matters; "* BYE ..." -> Bye, e.g. Server
#                   Unable).
#   READY           strict responses (§6.2): "tag OK|NO|BAD <one string>" -> Done,
#                   "tag BYE <string>" -> Bye, MAILBOX/RESERVE/DELETE with exactly 3/2/1
#                   strings, quoted or {n}/{n+} literals. Anything else, an unquoted text
#                   included (§14 case 62), raises BadResponse.
#   AUTHENTICATING  entered by send(Authenticate) or expect_sasl(tag): a line starting with
#                   "<tag> OK", "<tag> NO" (or BAD) ends it with a Done whose text is read
#                   loosely (one quoted string -> quoted=True, else the raw rest with
#                   quoted=False); every other line is a base64 challenge -> SaslChallenge
#                   with the decoded bytes (§5.1).
#   STARTTLS        entered by send(Starttls) or expect_starttls(tag): the reply is read by
#                   prefix (§5.2). OK -> TLS_NEGOTIATING: bytes already buffered are dropped
#                   and next_event is PAUSED until tls_started(), then GREETING again (the
#                   banner is re-sent under TLS, §3.2). NO/BAD -> back to READY.
#   CLOSED          after Bye, EOF or a BadResponse: PAUSED for ever, input ignored.
#
# expect_responses() leaves AUTHENTICATING/STARTTLS by hand (normally the tagged reply does).
# A mode requested while the banner is still being read takes effect after "* OK", so a
# client may pipeline AUTHENTICATE behind the connect. Done never carries trailing_nul
# information: the NUL after "* BYE" is ignored because the engine is CLOSED by then.

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mupdate.protocol import commands as c
from mupdate.protocol.buffer import (
    NEED_DATA,
    PAUSED,
    Frame,
    LineTooLong,
    ReceiveBuffer,
    Sentinel,
    SyncLiteral,
)
from mupdate.protocol.errors import BadResponse, LocalProtocolError
from mupdate.protocol.limits import ProtocolLimits
from mupdate.protocol.responses import (
    Bye,
    DeleteLine,
    Done,
    MailboxLine,
    ReserveLine,
    SaslChallenge,
    Status,
)
from mupdate.protocol.strings import Cursor, render_command

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Capability",
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "ServerReady",
]


@dataclass(frozen=True, slots=True)
class Capability:
    """A banner line before ``* OK`` (§3.1): ``name`` upper-cased, ``args`` unquoted
    (``* AUTH "PLAIN"`` -> ``Capability(b"AUTH", (b"PLAIN",))``)."""

    name: bytes
    args: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerReady:
    """The banner's ``* OK`` line: the words after OK, unquoted, e.g. ``(b"MUPDATE",
    servername, implementation, version, role)``; the raw rest if it does not tokenise."""

    parts: tuple[bytes, ...]


ClientEvent = (
    Capability | ServerReady | Done | MailboxLine | ReserveLine | DeleteLine | Bye | SaslChallenge
)


class ClientState(Enum):
    GREETING = "greeting"
    READY = "ready"
    AUTHENTICATING = "authenticating"
    STARTTLS = "starttls"
    TLS_NEGOTIATING = "tls negotiating"
    CLOSED = "closed"


_STATUS = {s.value: s for s in Status}
_DATA_LINES: dict[bytes, tuple[Callable[..., MailboxLine | ReserveLine | DeleteLine], int]] = {
    b"MAILBOX": (MailboxLine, 3),
    b"RESERVE": (ReserveLine, 2),
    b"DELETE": (DeleteLine, 1),
}


class ClientConnection:
    """One connection to a MUPDATE server, client side. See the comment above."""

    def __init__(self, limits: ProtocolLimits = ProtocolLimits()) -> None:  # noqa: B008
        self._limits = limits
        self._buffer = ReceiveBuffer(limits, approve_sync=False)
        self._state = ClientState.GREETING
        self._after_greeting = ClientState.READY
        self._mode_tag = b""
        self._tls_active = False
        self._eof = False

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        if self._state is ClientState.CLOSED:
            return
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data after EOF")
            return
        self._eof = not data
        self._buffer.feed(data)

    def send(self, event: c.Command | c.SaslResponse) -> bytes:
        """Wire bytes for a command; AUTHENTICATE and STARTTLS switch the read mode."""
        data = render_command(event)
        if isinstance(event, c.Authenticate):
            self.expect_sasl(event.tag)
        elif isinstance(event, c.Starttls):
            self.expect_starttls(event.tag)
        return data

    def expect_sasl(self, tag: bytes) -> None:
        self._enter(ClientState.AUTHENTICATING, tag)

    def expect_starttls(self, tag: bytes) -> None:
        self._enter(ClientState.STARTTLS, tag)

    def expect_responses(self) -> None:
        """Leave AUTHENTICATING or STARTTLS without a tagged reply (the glue gave up on the
        exchange); normally the engine leaves them by itself on the reply."""
        if self._state is ClientState.GREETING:
            self._after_greeting = ClientState.READY
        elif self._state in (ClientState.AUTHENTICATING, ClientState.STARTTLS):
            self._state = ClientState.READY
        else:
            raise LocalProtocolError(f"cannot leave state {self._state.name}")

    def _enter(self, mode: ClientState, tag: bytes) -> None:
        self._mode_tag = tag
        if self._state is ClientState.GREETING:
            self._after_greeting = mode
        elif self._state is ClientState.READY:
            self._state = mode
        else:
            raise LocalProtocolError(f"cannot enter {mode.name} in state {self._state.name}")

    def tls_started(self) -> None:
        if self._state is not ClientState.TLS_NEGOTIATING:
            raise LocalProtocolError(f"tls_started in state {self._state.name}")
        self._state = ClientState.GREETING
        self._after_greeting = ClientState.READY
        self._tls_active = True

    def next_event(self) -> ClientEvent | Sentinel:
        """The next server event, NEED_DATA or PAUSED; raises BadResponse."""
        if self._state in (ClientState.TLS_NEGOTIATING, ClientState.CLOSED):
            return PAUSED
        try:
            event = self._read()
        except BadResponse:
            self._close()
            raise
        if event is None:
            if not self._eof:
                return NEED_DATA
            self._close()
            return PAUSED
        if isinstance(event, Bye):
            self._close()
        return event

    def _close(self) -> None:
        self._state = ClientState.CLOSED
        self._buffer.clear()

    def _read(self) -> ClientEvent | None:
        if self._state is ClientState.READY:
            frame = self._buffer.next_frame()
            if isinstance(frame, SyncLiteral):  # approve_sync is off: the buffer reads {n}
                raise LocalProtocolError("the client buffer asked about a literal")
            return None if frame is None else _response(frame)
        try:
            line = self._buffer.next_line(self._limits.max_line)
        except LineTooLong:
            raise BadResponse("line too long") from None
        if line is None:
            return None
        if self._state is ClientState.GREETING:
            return self._banner_line(line)
        return self._prefix_line(line)

    def _banner_line(self, line: bytes) -> ClientEvent:
        if not line.startswith(b"* "):
            raise BadResponse(f"not a banner line: {line[:80]!r}")
        word, _, rest = line[2:].partition(b" ")
        name = word.upper()
        if name == b"OK":
            self._state = self._after_greeting
            return ServerReady(_tokens(rest) or (rest,))
        if name == b"BYE":
            return Bye(_loose_text(rest)[0])
        return Capability(name, _tokens(rest) or tuple(rest.split()))

    def _prefix_line(self, line: bytes) -> ClientEvent:
        tag, _, rest = line.partition(b" ")
        word, _, text = rest.partition(b" ")
        status = _STATUS.get(word.upper()) if tag == self._mode_tag else None
        if status is not None:
            loose, quoted = _loose_text(text)
            ok = status is Status.OK
            starttls = self._state is ClientState.STARTTLS
            self._state = ClientState.TLS_NEGOTIATING if ok and starttls else ClientState.READY
            if self._state is ClientState.TLS_NEGOTIATING:
                self._buffer.clear()  # plaintext behind the OK is never read (§5.2)
            return Done(tag, status, loose, quoted=quoted)
        if tag == b"*" and word.upper() == b"BYE":
            return Bye(_loose_text(text)[0])
        if self._state is ClientState.STARTTLS:
            raise BadResponse(f"unexpected STARTTLS reply: {line[:80]!r}")
        try:
            return SaslChallenge(base64.b64decode(line, validate=True))
        except (binascii.Error, ValueError):
            raise BadResponse(f"invalid SASL challenge: {line[:80]!r}") from None


def _response(frame: Frame) -> ClientEvent:
    """One strict READY-mode response (§6.2)."""
    if frame.error is not None:
        raise BadResponse(frame.error.decode())
    cur = Cursor(frame.segments, allow_nul=True)
    tag = cur.word()
    if not tag or not cur.take_sp():
        raise BadResponse(f"no tag: {frame.segments[0][:80]!r}")
    word = cur.word().upper()
    if word in _DATA_LINES:
        make, count = _DATA_LINES[word]
        return make(tag, *_strings(cur, count, word))
    if word in _STATUS or word == b"BYE":
        (text,) = _strings(cur, 1, word)
        return Bye(text) if word == b"BYE" else Done(tag, _STATUS[word], text)
    raise BadResponse(f"unknown response {word[:40]!r}")


def _strings(cur: Cursor, count: int, word: bytes) -> list[bytes]:
    values = []
    for _ in range(count):
        value = cur.string() if cur.take_sp() else None
        if value is None:
            raise BadResponse(f"{word.decode(errors='replace')}: expected {count} string(s)")
        values.append(value)
    if not cur.at_eol():
        raise BadResponse(f"{word.decode(errors='replace')}: extra arguments received")
    return values


def _tokens(text: bytes) -> tuple[bytes, ...] | None:
    """Space-separated quoted strings or atoms (banner lines); None if malformed."""
    if not text:
        return ()
    cur = Cursor((text,), allow_nul=True)
    out: list[bytes] = []
    while True:
        value = cur.string() if cur.peek() == 0x22 else cur.token() or None
        if value is None:
            return None
        out.append(value)
        if cur.at_eol():
            return tuple(out)
        if not cur.take_sp():
            return None


def _loose_text(text: bytes) -> tuple[bytes, bool]:
    """A prefix-read status text: one quoted string if it is one, else the raw bytes."""
    if text.startswith(b'"'):
        cur = Cursor((text,), allow_nul=True)
        value = cur.string()
        if value is not None and cur.at_eol():
            return value, True
    return text, False

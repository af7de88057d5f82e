"""Strings on the wire: reading quoted strings and literals, and rendering every event
(protocol doc §2.4-§2.6, §3.1, §5.1, §6.1).

Output rule (design.md "Order and encoding", §15): a value goes out as a quoted string when it
has no CR, LF or NUL and is at most 1024 bytes (``"`` and ``\\`` escaped), otherwise as a
non-synchronising ``{n+}`` literal; never ``{n}``. Imports nothing from Twisted.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Final

from mupdate.protocol import commands as c
from mupdate.protocol import texts
from mupdate.protocol.errors import LocalProtocolError
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
)

CRLF: Final = b"\r\n"
MAX_QUOTED: Final = 1024
_TAG_STOP: Final = frozenset(b' \t\n\v\f\r()"')  # Cyrus getword() ends a word here (§2.2)
_UNQUOTABLE: Final = frozenset(b"\r\n\0")


class IncompleteInput(Exception):
    """A partial frame ended before the parser could decide (a ``{n}`` still awaited)."""


def can_quote(value: bytes) -> bool:
    return len(value) <= MAX_QUOTED and not _UNQUOTABLE.intersection(value)


def quote(value: bytes) -> bytes:
    """``value`` as a quoted string; LocalProtocolError if it cannot be one."""
    if not can_quote(value):
        raise LocalProtocolError(f"cannot quote {value[:40]!r}")
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def render_string(value: bytes) -> bytes:
    """Quoted where the value allows, else a ``{n+}`` literal (never ``{n}``, §6.1)."""
    if can_quote(value):
        return quote(value)
    return b"{%d+}\r\n" % len(value) + value


def is_word(value: bytes) -> bool:
    """A tag Cyrus can read back: non-empty, no whitespace, parenthesis, quote or NUL."""
    return bool(value) and not _TAG_STOP.intersection(value) and 0 not in value


class Cursor:
    """Reads tokens from a frame's segments (``text, literal, text, ...``, see buffer.py).
    With ``partial`` the frame stops before a literal's bytes; reaching them raises
    ``IncompleteInput``. ``allow_nul`` is False on the server: Cyrus refuses NUL (§2.6)."""

    def __init__(
        self, segments: Sequence[bytes], *, partial: bool = False, allow_nul: bool = False
    ) -> None:
        self._segments = segments
        self._partial = partial
        self._allow_nul = allow_nul
        self._index = 0  # current text segment (always even)
        self._pos = 0

    @property
    def _text(self) -> bytes:
        return self._segments[self._index]

    def peek(self) -> int | None:
        return self._text[self._pos] if self._pos < len(self._text) else None

    def take_sp(self) -> bool:
        if self.peek() == 0x20:
            self._pos += 1
            return True
        return False

    def at_eol(self) -> bool:
        """At the end of the frame: past the last text, with no literal after it."""
        return (
            self._pos >= len(self._text)
            and self._index + 1 >= len(self._segments)
            and not self._partial
        )

    def rest(self) -> bytes:
        return self._text[self._pos :]

    def word(self) -> bytes:
        """Bytes up to whitespace, a parenthesis or a quote (Cyrus getword)."""
        start = self._pos
        text = self._text
        while self._pos < len(text) and text[self._pos] not in _TAG_STOP:
            self._pos += 1
        return text[start : self._pos]

    def token(self) -> bytes:
        """Bytes up to the next space or the end of the text (banner words, §3.3)."""
        start = self._pos
        end = self._text.find(b" ", start)
        self._pos = len(self._text) if end < 0 else end
        return self._text[start : self._pos]

    def atom(self) -> bytes | None:
        """A run of printable ASCII without specials (only for the lenient AUTHENTICATE
        mechanism, §2.4)."""
        start = self._pos
        text = self._text
        while self._pos < len(text) and 0x21 <= text[self._pos] < 0x7F:
            if text[self._pos] in b'(){"\\%*]':
                break
            self._pos += 1
        return text[start : self._pos] or None

    def string(self) -> bytes | None:
        """A quoted string or a literal; None where the bytes are not one (§2.4)."""
        first = self.peek()
        if first == 0x22:
            return self._quoted()
        if first == 0x7B:
            return self._literal()
        return None

    def _quoted(self) -> bytes | None:
        text = self._text
        pos = self._pos + 1
        end = text.find(b'"', pos)
        if end >= 0 and text.find(b"\\", pos, end) < 0:  # no escapes: one slice
            chunk = text[pos:end]
            if b"\r" in chunk or b"\n" in chunk or (b"\0" in chunk and not self._allow_nul):
                return None
            self._pos = end + 1
            return bytes(chunk)
        out = bytearray()
        while pos < len(text):
            byte = text[pos]
            if byte == 0x5C:
                pos += 1
                if pos >= len(text):
                    return None
                byte = text[pos]
            elif byte == 0x22:
                self._pos = pos + 1
                return bytes(out)
            if byte in (0x0D, 0x0A) or (byte == 0 and not self._allow_nul):
                return None
            out.append(byte)
            pos += 1
        return None  # the line ended inside the quotes (§2.5)

    def _literal(self) -> bytes | None:
        text = self._text
        close = text.find(b"}", self._pos)
        if close != len(text) - 1:
            return None  # a literal header must end its line (§2.6)
        spec = text[self._pos + 1 : close]
        digits = spec[:-1] if spec.endswith(b"+") else spec
        if not digits.isdigit():
            return None
        if self._index + 1 >= len(self._segments):
            if self._partial:
                raise IncompleteInput()
            return None
        value = self._segments[self._index + 1]
        if len(value) != int(digits):
            return None
        self._index += 2
        self._pos = 0
        if 0 in value and not self._allow_nul:
            return None
        return value


# ---------------------------------------------------------------- rendering


def _tagged(tag: bytes, word: bytes, *strings: bytes) -> bytes:
    if not is_word(tag):
        raise LocalProtocolError(f"invalid tag {tag!r}")
    return b" ".join([tag, word, *(render_string(s) for s in strings)]) + CRLF


_PLAIN_DELETE: Final = b'"\\\r\n\0'  # bytes that keep a value from going out as "value" verbatim


def render_entry(tag: bytes, word: bytes, name: bytes, location: bytes, acl: bytes | None) -> bytes:
    """``render_response`` of a MAILBOX (``acl`` given) or RESERVE line, faster for dumps.

    The same bytes: when name, location and ACL need neither escaping nor a literal (the
    usual case), they are quoted as they are in one format step; otherwise the general path
    renders the line. The caller checks ``tag`` once with ``is_word``.
    """
    joined = name + location if acl is None else name + location + acl
    if len(joined) <= MAX_QUOTED and len(joined.translate(None, _PLAIN_DELETE)) == len(joined):
        if acl is None:
            return b'%s %s "%s" "%s"\r\n' % (tag, word, name, location)
        return b'%s %s "%s" "%s" "%s"\r\n' % (tag, word, name, location, acl)
    if acl is None:
        return _tagged(tag, word, name, location)
    return _tagged(tag, word, name, location, acl)


def _status_text(event: Done) -> bytes:
    if event.quoted:
        return render_string(event.text)
    if b"\r" in event.text or b"\n" in event.text:
        raise LocalProtocolError("an unquoted text cannot hold CR or LF")
    return event.text


def render_response(event: Response) -> bytes:
    """The exact wire bytes of a response event (§3.1, §5.1, §6.1)."""
    match event:
        case Done():
            if not is_word(event.tag):
                raise LocalProtocolError(f"invalid tag {event.tag!r}")
            status = event.status.value
            return b"%s %s %s\r\n" % (event.tag, status, _status_text(event))
        case MailboxLine():
            if not is_word(event.tag):
                raise LocalProtocolError(f"invalid tag {event.tag!r}")
            return render_entry(event.tag, b"MAILBOX", event.name, event.location, event.acl)
        case ReserveLine():
            if not is_word(event.tag):
                raise LocalProtocolError(f"invalid tag {event.tag!r}")
            return render_entry(event.tag, b"RESERVE", event.name, event.location, None)
        case DeleteLine():
            return _tagged(event.tag, b"DELETE", event.name)
        case Bye():
            line = b"* BYE " + render_string(event.text) + CRLF
            return line + b"\0" if event.trailing_nul else line
        case Greeting():
            return _greeting(event)
        case SaslChallenge():
            return base64.b64encode(event.data) + CRLF
        case GoAhead():
            return texts.GO_AHEAD_LINE + CRLF
    raise LocalProtocolError(f"not a response event: {event!r}")


def _greeting(event: Greeting) -> bytes:
    lines = [b" ".join([b"* " + texts.CAP_AUTH, *map(quote, event.mechanisms)])]
    if event.starttls:
        lines.append(b"* " + texts.CAP_STARTTLS)
    if event.compress:
        lines.append(b"* " + texts.CAP_COMPRESS + b" " + quote(texts.DEFLATE))
    lines.append(b"* " + texts.CAP_PARTIAL_UPDATE)
    parts = (event.servername, event.implementation, event.version, event.role)
    lines.append(b" ".join([b"* OK " + texts.BANNER_WORD, *map(quote, parts)]))
    return CRLF.join(lines) + CRLF


def render_command(event: c.Command | c.SaslResponse) -> bytes:
    """The exact wire bytes a client sends for a command (as Cyrus clients do: upper-case
    words, strings quoted where possible, else ``{n+}``). Raises LocalProtocolError for a
    command no server would accept (NUL in a string, an empty UPDATE host)."""
    if isinstance(event, c.SaslResponse):
        if b"\r" in event.line or b"\n" in event.line:
            raise LocalProtocolError("a SASL response line cannot hold CR or LF")
        return event.line + CRLF
    strings = _command_strings(event)
    for value in strings:
        if 0 in value:
            raise LocalProtocolError("a command string cannot hold NUL (§2.6)")
    return _tagged(event.tag, COMMAND_WORDS[type(event)], *strings)


def _command_strings(event: c.Command) -> tuple[bytes, ...]:
    match event:
        case c.Authenticate():
            ir = event.initial_response
            return (event.mechanism,) if ir is None else (event.mechanism, ir)
        case c.Compress():
            return (event.algorithm,)
        case c.Find() | c.Delete():
            return (event.name,)
        case c.List():
            return () if event.prefix is None else (event.prefix,)
        case c.Update():
            if not all(event.hosts):
                raise LocalProtocolError("an UPDATE host cannot be empty (§5.8)")
            return event.hosts
        case c.Reserve() | c.Deactivate():
            return (event.name, event.location)
        case c.Activate():
            return (event.name, event.location, event.acl)
        case c.Starttls() | c.Logout() | c.Noop():
            return ()
    raise LocalProtocolError(f"not a command event: {event!r}")


COMMAND_WORDS: Final[dict[type[c.Command], bytes]] = {
    c.Authenticate: b"AUTHENTICATE",
    c.Starttls: b"STARTTLS",
    c.Compress: b"COMPRESS",
    c.Logout: b"LOGOUT",
    c.Noop: b"NOOP",
    c.Find: b"FIND",
    c.List: b"LIST",
    c.Update: b"UPDATE",
    c.Reserve: b"RESERVE",
    c.Activate: b"ACTIVATE",
    c.Deactivate: b"DEACTIVATE",
    c.Delete: b"DELETE",
}

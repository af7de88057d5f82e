"""Framing of received bytes into lines and commands with literals (protocol doc §2.1, §2.6, §2.7).

A *frame* is one command (or one server response): its text segments and the contents of
the literals between them, alternating ``text, literal, text, ...`` and always ending with
text. Lines end at LF; one CR before the LF is dropped (bare LF accepted, §2.1). Every limit
is checked before the bytes are kept, so the buffer never holds more than one line limit,
one literal limit and the bytes the glue handed in that are not yet consumed. The buffer
knows nothing of tags or command names. Imports nothing from Twisted.

Deliberate differences from Cyrus: a literal header followed by a bare LF is still a literal
(Cyrus rejects it and would then run the literal's bytes as commands); a literal over the
limit is refused and skipped instead of exiting the process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from mupdate.protocol import texts
from mupdate.protocol.errors import LocalProtocolError
from mupdate.protocol.limits import ProtocolLimits


class Sentinel(Enum):
    """What ``next_event`` returns when it has no event: ``NEED_DATA`` (feed more bytes) or
    ``PAUSED`` (nothing will be parsed until the glue reports a mode switch, or ever, once
    the connection is CLOSED)."""

    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED

_HEADER = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
_MAX_DIGITS: Final = 12  # anything longer is over every limit; never convert it


class LineTooLong(Exception):
    """A raw line passed its limit; the engines turn this into their own error."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete command. With ``error`` set, the command broke a size limit: the frame
    holds only the segments read before the breach (the rest was discarded) and ``fatal``
    says whether the stream could not be resynchronised."""

    segments: tuple[bytes, ...]
    error: bytes | None = None
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class SyncLiteral:
    """A ``{n}`` header within the limits: the engine decides whether to send ``+ go ahead``
    (``accept_literal``) or to refuse the command (``refuse_literal``)."""

    segments: tuple[bytes, ...]
    size: int


def literal_header(line: bytes) -> tuple[int, bool] | None:
    """``(size, synchronising)`` if ``line`` ends with ``{n}`` or ``{n+}`` outside a quoted
    string; sizes too long to be real come back as ``-1`` (over every limit)."""
    match = _HEADER.search(line)
    if match is None or _inside_quotes(line[: match.start()]):
        return None
    digits = match.group(1)
    size = int(digits) if len(digits) <= _MAX_DIGITS else -1
    return size, not match.group(2)


def _inside_quotes(text: bytes) -> bool:
    quoted = escaped = False
    for byte in text:
        if escaped:
            escaped = False
        elif quoted and byte == 0x5C:
            escaped = True
        elif byte == 0x22:
            quoted = not quoted
    return quoted


class ReceiveBuffer:
    """Unconsumed bytes plus the command being assembled. ``approve_sync`` is True on the
    server (a ``{n}`` waits for the engine's go-ahead) and False on the client."""

    def __init__(self, limits: ProtocolLimits, *, approve_sync: bool) -> None:
        self._limits = limits
        self._approve_sync = approve_sync
        self._data = bytearray()
        self._scanned = 0  # bytes of _data already searched for LF
        self._reset_command()

    def _reset_command(self) -> None:
        self._segments: list[bytes] = []
        self._size = 0  # bytes of the current command kept or skipped so far
        self._literals = 0
        self._awaiting: int | None = None  # literal bytes still to arrive (kept)
        self._skip = 0  # literal bytes still to arrive (discarded)
        self._error: bytes | None = None
        self._pending_sync: int | None = None

    def __len__(self) -> int:
        """Bytes held: unconsumed input plus the kept part of the current command."""
        return len(self._data) + self._size

    @property
    def in_command(self) -> bool:
        return bool(self._segments) or self._skip > 0 or self._awaiting is not None

    def feed(self, data: bytes) -> None:
        self._data += data

    def clear(self) -> None:
        """Forget every unconsumed byte (plaintext pipelined behind STARTTLS, §5.2)."""
        self._data.clear()
        self._scanned = 0
        self._reset_command()

    def next_line(self, limit: int) -> bytes | None:
        """One raw line without its line end (SASL and greeting lines), or None for more
        data. Raises ``LineTooLong`` past ``limit``: the stream cannot be resynchronised."""
        end = self._find_lf()
        if end < 0:
            if len(self._data) > limit + 1:
                raise LineTooLong()
            return None
        if self._line_stop(end) > limit:
            raise LineTooLong()
        return self._take_line(end)

    def head_line(self) -> bytes:
        """The start of the command or line being read, for naming a tag in an error; cut
        at the line limit so the answer does not depend on how the bytes were chunked."""
        if self._segments:
            return self._segments[0]
        return bytes(self._data[: self._limits.max_line + 1])

    def next_frame(self) -> Frame | SyncLiteral | None:
        """The next complete frame, a synchronising literal to decide on, or None."""
        if self._pending_sync is not None:
            raise LocalProtocolError("decide on the pending synchronising literal first")
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._data))
                self._drop(dropped)
                self._skip -= dropped
                if self._skip:
                    return None
            if self._awaiting is not None:
                if len(self._data) < self._awaiting:
                    return None
                self._segments.append(bytes(self._data[: self._awaiting]))
                self._drop(self._awaiting)
                self._awaiting = None
            end = self._find_lf()
            if end < 0:
                if len(self._data) > self._limits.max_line + 1:
                    return self._fatal(texts.LINE_TOO_LONG)
                return None
            if self._line_stop(end) > self._limits.max_line:
                return self._fatal(texts.LINE_TOO_LONG)
            line = self._take_line(end)
            if self._error is None:
                self._segments.append(line)
                self._size += len(line)
            header = literal_header(line)
            if header is None:
                return self._finish(Frame(tuple(self._segments), self._error))
            outcome = self._literal(*header)
            if outcome is not None:
                return outcome

    def _literal(self, size: int, sync: bool) -> Frame | SyncLiteral | None:
        limits = self._limits
        self._literals += 1
        if self._error is None:
            if size < 0 or size > limits.max_literal:
                self._error = texts.LITERAL_TOO_LONG
            elif self._size + size > limits.max_command:
                self._error = texts.COMMAND_TOO_LONG
            elif self._literals > limits.max_args:
                self._error = texts.TOO_MANY_ARGUMENTS
        if self._error is not None:
            if sync:  # the client waits for a go-ahead that never comes: the command ends
                return self._finish(Frame(tuple(self._segments), self._error))
            if size < 0 or size > limits.max_command:  # too far to skip
                return self._fatal(self._error)
            self._skip = size
            return None
        self._size += size
        if sync and self._approve_sync:
            self._pending_sync = size
            return SyncLiteral(tuple(self._segments), size)
        self._awaiting = size
        return None

    def accept_literal(self) -> None:
        """The engine sent ``+ go ahead``: read the literal's bytes."""
        self._awaiting, self._pending_sync = self._pending_sync, None

    def refuse_literal(self) -> None:
        """The engine refused the command: it ends at the header's line, so the client's
        next line is a new command (Cyrus swallows it, design.md)."""
        self._reset_command()

    def _finish(self, frame: Frame) -> Frame:
        self._reset_command()
        return frame

    def _fatal(self, reason: bytes) -> Frame:
        frame = Frame((self.head_line(),), reason, fatal=True)
        self.clear()
        return frame

    def _find_lf(self) -> int:
        end = self._data.find(b"\n", self._scanned)
        self._scanned = len(self._data) if end < 0 else 0
        return end

    def _line_stop(self, end: int) -> int:
        return end - 1 if end > 0 and self._data[end - 1] == 0x0D else end

    def _take_line(self, end: int) -> bytes:
        line = bytes(self._data[: self._line_stop(end)])
        self._drop(end + 1)
        return line

    def _drop(self, count: int) -> None:
        del self._data[:count]
        self._scanned = max(0, self._scanned - count)

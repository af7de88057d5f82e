"""The wire of ``cyr_dbtool DB BACKEND batch`` (Cyrus 3.6), both ways.

Commands, one per line: ``BEGIN``, ``SET key value``, ``DELETE key``, ``GET key``,
``SHOW [prefix]``, ``COMMIT``, ``ABORT``. Keys and values are IMAP strings; we always send
``{n+}`` literals, the one form that carries every byte (keys hold 0x1D and 0x1F, values
spaces and CR LF). GET and SHOW print each record found as ``key SP value LF``, both as
atom, quoted string or ``{n}`` CRLF literal; a missing key prints nothing. SET, DELETE,
BEGIN, COMMIT and ABORT print nothing; any failure prints ``FAILED: ...`` on stderr, aborts
the open transaction and ends the process. Pure: imports nothing from Twisted.
"""

from __future__ import annotations

import re
from typing import Final

MAX_LITERAL: Final = 64 * 1024 * 1024
"""A record longer than this in the tool's output is taken for garbage, not buffered."""


_ATOM: Final = re.compile(rb"[^ \n]*")
_ATOM_KEY_LITERAL_VALUE: Final = re.compile(rb'([^ \n"{][^ \n]*) \{(\d{1,12})\+?\}\r\n')


class BatchOutputError(ValueError):
    """cyr_dbtool printed something that is not ``key SP value LF``."""


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def begin() -> bytes:
    return b"BEGIN\n"


def commit() -> bytes:
    return b"COMMIT\n"


def abort() -> bytes:
    return b"ABORT\n"


def get(key: bytes) -> bytes:
    return b"GET " + literal(key) + b"\n"


def show(prefix: bytes) -> bytes:
    return b"SHOW " + literal(prefix) + b"\n" if prefix else b"SHOW\n"


def set_(key: bytes, value: bytes) -> bytes:
    return b"SET " + literal(key) + b" " + literal(value) + b"\n"


def delete(key: bytes) -> bytes:
    return b"DELETE " + literal(key) + b"\n"


class OutputParser:
    """Incremental parser of GET/SHOW output: ``feed`` bytes, get whole records back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += data
        records: list[tuple[bytes, bytes]] = []
        pos = 0
        while True:
            parsed = self._record(pos)
            if parsed is None:
                break
            key, value, pos = parsed
            records.append((key, value))
        del self._buffer[:pos]
        return records

    @property
    def pending(self) -> int:
        """Bytes of a record not yet complete."""
        return len(self._buffer)

    def _record(self, pos: int) -> tuple[bytes, bytes, int] | None:
        buf = self._buffer
        fast = _ATOM_KEY_LITERAL_VALUE.match(buf, pos)  # what mailboxes.db records look like
        if fast is not None and int(fast.group(2)) <= MAX_LITERAL:
            start = fast.end()
            end = start + int(fast.group(2))
            if len(buf) <= end:
                return None
            if buf[end] != 0x0A:
                raise BatchOutputError(f"expected the end of the record {fast.group(1)!r}")
            return fast.group(1), bytes(buf[start:end]), end + 1
        key = self._string(pos)
        if key is None:
            return None
        k, pos = key
        if pos >= len(self._buffer):
            return None
        if self._buffer[pos] != ord(" "):
            raise BatchOutputError(f"expected a blank after the key {k!r}")
        value = self._string(pos + 1)
        if value is None:
            return None
        v, pos = value
        if pos >= len(self._buffer):
            return None
        if self._buffer[pos] != ord("\n"):
            raise BatchOutputError(f"expected the end of the record {k!r}")
        return k, v, pos + 1

    def _string(self, pos: int) -> tuple[bytes, int] | None:
        buf = self._buffer
        if pos >= len(buf):
            return None
        first = buf[pos]
        if first == ord("{"):
            close = buf.find(b"}", pos)
            if close < 0:
                if len(buf) - pos > 24:
                    raise BatchOutputError("a literal's length is not closed")
                return None
            digits = bytes(buf[pos + 1 : close]).removesuffix(b"+")
            if not digits.isdigit() or int(digits) > MAX_LITERAL:
                raise BatchOutputError(f"bad literal length {digits!r}")
            if len(buf) < close + 3:
                return None
            if buf[close + 1 : close + 3] != b"\r\n":
                raise BatchOutputError("a literal's length is not followed by CR LF")
            start = close + 3
            end = start + int(digits)
            if len(buf) < end:
                return None
            return bytes(buf[start:end]), end
        if first == ord('"'):
            out = bytearray()
            i = pos + 1
            while i < len(buf):
                c = buf[i]
                if c == ord('"'):
                    return bytes(out), i + 1
                if c == ord("\\"):
                    i += 1
                    if i >= len(buf):
                        return None
                elif c in (0x0A, 0x0D):
                    raise BatchOutputError("a quoted string holds a line end")
                out.append(buf[i])
                i += 1
            return None
        match = _ATOM.match(buf, pos)
        assert match is not None  # the pattern also matches the empty string
        end = match.end()
        if end >= len(buf):
            return None
        if end == pos:
            raise BatchOutputError("an empty atom")
        return match.group(), end

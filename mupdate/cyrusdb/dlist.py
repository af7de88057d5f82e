"""Cyrus dlists: the value format of ``mailboxes.db`` records and 3.6 ``cyrus.header`` files.

A record value is a key-value list ``%(T er P default S be1 M 1795503549 A %(alice lrs))``.
Strings are written as Cyrus 3.6's ``prot_printastring`` writes them (observed byte for
byte against a Cyrus frontend slave, protocol doc §9.7): an atom when every byte may stand in
one, else a quoted string when every byte may be quoted and it is shorter than 1024 bytes,
else a ``{n+}`` CRLF literal; the empty string is ``""`` and the word NIL is quoted.
Pure: imports nothing from Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

MAX_QUOTED: Final = 1024
"""Strings this long or longer are always literals (Cyrus's MAXQSTRING)."""

# An atom (Cyrus's imparse_isnatom): no controls below 0x1F (0x1F itself is allowed), no
# DEL or 8-bit, none of SP { ( ) " % * \. Quotable (its isQCHAR): no 8-bit, NUL, CR, LF, " % \.
_ATOM: Final = re.compile(rb'[^\x00-\x1e\x7f-\xff {()"%*\\]+\Z')
_QUOTABLE: Final = re.compile(rb'[^\x80-\xff\x00\r\n"%\\]+\Z')


def astring(value: bytes) -> bytes:
    """``value`` as Cyrus prints a dlist atom: atom, quoted string or literal."""
    if not value:
        return b'""'
    if len(value) < MAX_QUOTED:
        if _ATOM.match(value) and value != b"NIL":
            return value
        if _QUOTABLE.match(value):
            return b'"' + value + b'"'
    return b"{%d+}\r\n" % len(value) + value


def kvlist(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``%(key value ...)`` of atoms, keys and values through ``astring``."""
    return b"%(" + b" ".join(astring(k) + b" " + astring(v) for k, v in pairs) + b")"


@dataclass(frozen=True, slots=True)
class KvList:
    """``%(key value ...)``: pairs in their stored order."""

    items: tuple[tuple[bytes, Value], ...]

    def get(self, key: bytes) -> Value:
        for k, v in self.items:
            if k == key:
                return v
        return None


Value: TypeAlias = "bytes | list[Value] | KvList | None"


def _atom_end(data: bytes, pos: int) -> int:
    end = pos
    while end < len(data) and data[end] not in b" )\r\n\t":
        end += 1
    return end


def _item(data: bytes, pos: int) -> tuple[bytes | None, int]:
    """An atom, ``"quoted"`` (backslash quotes the next byte), ``{n}``/``{n+}`` CRLF literal,
    or ``NIL`` (None); as Cyrus's ``_parseitem``."""
    if pos >= len(data):
        raise ValueError("value ends early")
    first = data[pos]
    if first == ord('"'):
        out = bytearray()
        pos += 1
        while pos < len(data):
            c = data[pos]
            if c == ord('"'):
                return bytes(out), pos + 1
            if c == ord("\\"):
                pos += 1
                if pos >= len(data):
                    break
            out.append(data[pos])
            pos += 1
        raise ValueError("unterminated quoted string")
    if first == ord("{"):
        close = data.find(b"}", pos)
        digits = data[pos + 1 : close].removesuffix(b"+")
        if close < 0 or not digits.isdigit() or data[close + 1 : close + 3] != b"\r\n":
            raise ValueError(f"bad literal at byte {pos}")
        start = close + 3
        end = start + int(digits)
        if end > len(data):
            raise ValueError("literal runs past the end")
        return data[start:end], end
    end = _atom_end(data, pos)
    atom = data[pos:end]
    return (None if atom == b"NIL" else atom), end


def parse_dlist(data: bytes, pos: int = 0) -> tuple[Value, int]:
    """One dlist value at ``pos``; returns it and the position after it."""
    if data.startswith(b"%(", pos) or data.startswith(b"(", pos):
        kv = data[pos] == ord("%")
        pos += 2 if kv else 1
        pairs: list[tuple[bytes, Value]] = []
        values: list[Value] = []
        while True:
            if pos >= len(data):
                raise ValueError("list not closed")
            if data[pos] == ord(")"):
                pos += 1
                break
            if kv:
                key, pos = _item(data, pos)
                if key is None or pos >= len(data) or data[pos] != ord(" "):
                    raise ValueError(f"bad key at byte {pos}")
                value, pos = parse_dlist(data, pos + 1)
                pairs.append((key, value))
            else:
                value, pos = parse_dlist(data, pos)
                values.append(value)
            if pos < len(data) and data[pos] == ord(" "):
                pos += 1
        return (KvList(tuple(pairs)) if kv else values), pos
    return _item(data, pos)


def parse_value(data: bytes) -> Value:
    """A whole record value; bytes left after it are an error."""
    value, end = parse_dlist(data)
    if end != len(data):
        raise ValueError(f"junk after the value at byte {end}")
    return value


def acl_from_dlist(value: Value) -> bytes:
    """``%(id rights ...)`` -> ``id TAB rights TAB`` ... (§11.3); absent or NIL -> b""."""
    if value is None:
        return b""
    if not isinstance(value, KvList):
        raise ValueError("the ACL is not a key-value list")
    out = bytearray()
    for who, rights in value.items:
        if not isinstance(rights, bytes):
            raise ValueError(f"the rights of {who!r} are not a string")
        out += who + b"\t" + rights + b"\t"
    return bytes(out)


def acl_pairs(acl: bytes) -> list[tuple[bytes, bytes]]:
    """The id/rights pairs Cyrus keeps of a MUPDATE ACL (its ``mailbox_acl_to_dlist``).

    Split at TABs into id, rights, id, rights...; a trailing id without a TAB after it is
    dropped, a last id with no rights gets ``""``, and an id given twice keeps its first
    place with the later rights. So ``a1 lrs`` (a blank, no TAB) keeps nothing, as in Cyrus.
    """
    pairs: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(acl):
        tab = acl.find(b"\t", pos)
        if tab < 0:
            break
        who = acl[pos:tab]
        end = acl.find(b"\t", tab + 1)
        if end < 0:
            pairs[who] = acl[tab + 1 :]
            break
        pairs[who] = acl[tab + 1 : end]
        pos = end + 1
    return list(pairs.items())

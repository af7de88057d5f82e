"""A small blocking MUPDATE client on raw sockets, for interop tests.

It reads any master (ours or Cyrus's `mupdate -m`) the way a Cyrus client does
(mupdate-protocol.md §6, §10): greeting up to `* OK`, `AUTHENTICATE "PLAIN"` with
the initial response in a `{n+}` literal, every command argument sent as a
`{n+}` literal, replies read until the tagged OK/NO/BAD. Responses are parsed
into tokens whatever their wire form (atom, quoted string, `{n}`/`{n+}`
literal), so tests compare exact values; the raw bytes are kept for tests that
care about the wire form.

Also here: `dbname_key`, the Cyrus 3.6 mailboxes.db key order of §7.8, which
LIST and UPDATE must follow.

Standard library only; no Twisted. Every socket operation has a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import time
from dataclasses import dataclass, field

__all__ = [
    "Entry",
    "MupdateClient",
    "MupdateError",
    "Response",
    "dbname_key",
    "parse_responses",
]

_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r?\n\Z")


class MupdateError(Exception):
    """The server closed the connection, timed out or sent something unparsable."""


@dataclass(frozen=True)
class Response:
    """One server response: its tokens (tag first) and the exact bytes it came in."""

    tokens: tuple[bytes, ...]
    raw: bytes

    @property
    def tag(self) -> bytes:
        return self.tokens[0] if self.tokens else b""

    @property
    def kind(self) -> bytes:
        """Second token upper-cased: OK, NO, BAD, MAILBOX, RESERVE, DELETE, AUTH, ..."""
        return self.tokens[1].upper() if len(self.tokens) > 1 else b""

    @property
    def args(self) -> tuple[bytes, ...]:
        return self.tokens[2:]

    @property
    def is_status(self) -> bool:
        return self.kind in (b"OK", b"NO", b"BAD")

    @property
    def text(self) -> bytes:
        """Status text: the single quoted/literal argument, or the atoms joined."""
        return b" ".join(self.args)


@dataclass(frozen=True)
class Entry:
    """A LIST/FIND/UPDATE data response: MAILBOX (with ACL) or RESERVE (acl None)."""

    kind: bytes
    name: bytes
    location: bytes
    acl: bytes | None = None

    @classmethod
    def from_response(cls, r: Response) -> Entry:
        if r.kind == b"MAILBOX" and len(r.args) == 3:
            return cls(b"MAILBOX", r.args[0], r.args[1], r.args[2])
        if r.kind == b"RESERVE" and len(r.args) == 2:
            return cls(b"RESERVE", r.args[0], r.args[1], None)
        raise MupdateError(f"not a MAILBOX/RESERVE data response: {r.raw!r}")


@dataclass
class CommandResult:
    """All responses to one tagged command; `status` is the final one."""

    tag: bytes
    data: list[Response] = field(default_factory=list)
    status: Response | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status.kind == b"OK"

    @property
    def entries(self) -> list[Entry]:
        return [Entry.from_response(r) for r in self.data if r.kind in (b"MAILBOX", b"RESERVE")]

    @property
    def status_line(self) -> bytes:
        """The tagged status response exactly as received (CRLF included)."""
        return self.status.raw if self.status else b""

    @property
    def raw(self) -> bytes:
        return b"".join(r.raw for r in self.data) + self.status_line


def dbname_key(name: bytes) -> bytes:
    """Cyrus 3.6 mailboxes.db key of a mailbox name (mupdate-protocol.md §7.8)."""
    if b"!" in name:
        domain, rest = name.split(b"!", 1)
        prefix = domain + b"\x1d"
    else:
        prefix, rest = b"", name
    return prefix + rest.replace(b".", b"\x1f").replace(b"^", b".")


def _tokenize_segment(seg: bytes, out: list[bytes]) -> None:
    """Atoms and quoted strings of one line segment (no literal marker, no CRLF)."""
    i, n = 0, len(seg)
    while i < n:
        c = seg[i : i + 1]
        if c == b" ":
            i += 1
            continue
        if c == b'"':
            i += 1
            buf = bytearray()
            while i < n and seg[i : i + 1] != b'"':
                if seg[i : i + 1] == b"\\" and i + 1 < n:
                    i += 1
                buf += seg[i : i + 1]
                i += 1
            if i >= n:
                raise MupdateError(f"unterminated quoted string in {seg!r}")
            out.append(bytes(buf))
            i += 1
            continue
        j = seg.find(b" ", i)
        j = n if j < 0 else j
        out.append(seg[i:j])
        i = j


def parse_responses(data: bytes) -> list[Response]:
    """Parse a complete byte stream of responses (CRLF or LF line ends).

    Used for captured output (e.g. Cyrus's mupdatetest). Raises MupdateError on
    an incomplete literal."""
    out: list[Response] = []
    pos = 0
    while pos < len(data):
        tokens: list[bytes] = []
        start = pos
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                line, pos = data[pos:], len(data)
            else:
                line, pos = data[pos : nl + 1], nl + 1
            m = _LITERAL_AT_END.search(line)
            if not m:
                _tokenize_segment(line.rstrip(b"\r\n"), tokens)
                break
            _tokenize_segment(line[: m.start()], tokens)
            size = int(m.group(1))
            if pos + size > len(data):
                raise MupdateError(f"literal of {size} bytes runs past the end")
            tokens.append(data[pos : pos + size])
            pos += size
        out.append(Response(tuple(tokens), data[start:pos]))
    return out


def literal(value: bytes) -> bytes:
    """A non-synchronizing literal as Cyrus clients send it (no CRLF after the data)."""
    return b"{%d+}\r\n" % len(value) + value


class MupdateClient:
    """Blocking MUPDATE client. Use as a context manager; every read is bounded.

    >>> with MupdateClient.connect("127.0.0.1", 3905) as c:
    ...     c.authenticate_plain("admin", "secret")
    ...     c.list()
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buf = b""
        self._counter = 0
        self.greeting: list[Response] = []
        self.transcript = bytearray()  # everything received, for failure messages

    # ---------------------------------------------------------------- setup

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 15.0) -> MupdateClient:
        sock = socket.create_connection((host, port), timeout=timeout)
        client = cls(sock, timeout)
        try:
            client._read_greeting()
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> MupdateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # ------------------------------------------------------------- reading

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MupdateError(f"timed out; received so far: {bytes(self.transcript)!r}")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError as e:
            raise MupdateError(f"timed out; received so far: {bytes(self.transcript)!r}") from e
        if not chunk:
            raise MupdateError(f"connection closed; received: {bytes(self.transcript)!r}")
        self.transcript += chunk
        self._buf += chunk

    def _read_line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            self._fill(deadline)
        nl = self._buf.index(b"\n") + 1
        line, self._buf = self._buf[:nl], self._buf[nl:]
        return line

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def read_response(self, deadline: float | None = None) -> Response:
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        tokens: list[bytes] = []
        raw = bytearray()
        while True:
            line = self._read_line(deadline)
            raw += line
            m = _LITERAL_AT_END.search(line)
            if not m:
                _tokenize_segment(line.rstrip(b"\r\n"), tokens)
                return Response(tuple(tokens), bytes(raw))
            _tokenize_segment(line[: m.start()], tokens)
            data = self._read_exact(int(m.group(1)), deadline)
            raw += data
            tokens.append(data)

    def _read_greeting(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            r = self.read_response(deadline)
            self.greeting.append(r)
            if r.tag == b"*" and r.kind in (b"OK", b"BYE", b"NO", b"BAD"):
                if r.kind != b"OK":
                    raise MupdateError(f"refused: {r.raw!r}")
                return

    @property
    def mechanisms(self) -> list[bytes]:
        for r in self.greeting:
            if r.tag == b"*" and r.kind == b"AUTH":
                return list(r.args)
        return []

    # ------------------------------------------------------------- commands

    def send_raw(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def next_tag(self) -> bytes:
        self._counter += 1
        return b"T%02d" % self._counter

    def command(
        self, verb: bytes | str, *args: bytes | str, tag: bytes | None = None
    ) -> CommandResult:
        """Send `tag verb {n+}arg...` and read until the tagged OK/NO/BAD."""
        tag = tag or self.next_tag()
        verb_b = verb.encode() if isinstance(verb, str) else verb
        line = tag + b" " + verb_b
        for a in args:
            line += b" " + literal(a.encode() if isinstance(a, str) else a)
        self.send_raw(line + b"\r\n")
        return self.read_until_tagged(tag)

    def read_until_tagged(self, tag: bytes) -> CommandResult:
        result = CommandResult(tag)
        deadline = time.monotonic() + self.timeout
        while True:
            r = self.read_response(deadline)
            if r.tag == tag and r.is_status:
                result.status = r
                return result
            result.data.append(r)

    def authenticate_plain(self, user: str, password: str, authz: str = "") -> CommandResult:
        ir = base64.b64encode(f"{authz}\0{user}\0{password}".encode())
        tag = b"A01"
        self.send_raw(tag + b' AUTHENTICATE "PLAIN" ' + literal(ir) + b"\r\n")
        result = self.read_until_tagged(tag)
        if not result.ok:
            raise MupdateError(f"AUTHENTICATE PLAIN as {user!r} failed: {result.raw!r}")
        return result

    def logout(self) -> CommandResult | None:
        try:
            return self.command(b"LOGOUT", tag=b"Q01")
        except (MupdateError, OSError):
            return None

    # ----------------------------------------------------------- shortcuts

    def list(self, prefix: bytes | str | None = None) -> list[Entry]:
        r = self.command(b"LIST") if prefix is None else self.command(b"LIST", prefix)
        if not r.ok:
            raise MupdateError(f"LIST failed: {r.raw!r}")
        return r.entries

    def find(self, name: bytes | str) -> Entry | None:
        r = self.command(b"FIND", name)
        if not r.ok:
            raise MupdateError(f"FIND failed: {r.raw!r}")
        entries = r.entries
        if len(entries) > 1:
            raise MupdateError(f"FIND returned several entries: {r.raw!r}")
        return entries[0] if entries else None

"""The saslauthd wire protocol, sans-I/O (Cyrus SASL: lib/checkpw.c, saslauthd/ipc_unix.c).

Cyrus sites often check plaintext passwords with ``saslauthd`` (``sasl_pwcheck_method:
saslauthd``); we can ask the same daemon, for PLAIN and LOGIN only (SCRAM needs stored keys,
which saslauthd cannot give). One request per connection on its unix socket: four counted
strings -- login, password, service, realm -- each a 2-byte big-endian length then the
bytes; the reply is one counted string that begins ``OK`` (accepted) or ``NO`` (refused),
possibly followed by saslauthd's reason. libsasl sends the service name given to
``sasl_server_new`` (``mupdate`` for Cyrus's mupdate) and an empty realm, as we do.

Imports nothing from Twisted; no I/O. The glue is ``mupdate.net.saslauthd``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_REPLY",
    "MAX_REQUEST",
    "ReplyDecoder",
    "SaslauthdError",
    "SaslauthdReply",
    "encode_request",
]

#: libsasl refuses a request whose four strings and 30 bytes exceed its 8192-byte buffer.
MAX_REQUEST: Final = 8192
#: libsasl reads at most this much of a reply; a longer one is not saslauthd's.
MAX_REPLY: Final = 1024
_COUNT: Final = struct.Struct("!H")


class SaslauthdError(ValueError):
    """A request that cannot be sent (too long, a NUL) or a reply that is not saslauthd's.
    The message never contains the password."""


@dataclass(frozen=True, slots=True)
class SaslauthdReply:
    ok: bool
    reason: str  # what followed OK/NO, for the log ("" when saslauthd said nothing more)


def encode_request(login: str, password: bytes, service: str, realm: str = "") -> bytes:
    """The request bytes. libsasl passes C strings, so none may hold a NUL."""
    fields = (login.encode("utf-8"), password, service.encode("utf-8"), realm.encode("utf-8"))
    for name, value in zip(("login", "password", "service", "realm"), fields, strict=True):
        if b"\0" in value:
            raise SaslauthdError(f"the {name} contains a NUL byte")
    if sum(len(f) for f in fields) + 30 > MAX_REQUEST:
        raise SaslauthdError(f"request longer than saslauthd's {MAX_REQUEST} bytes")
    return b"".join(_COUNT.pack(len(f)) + f for f in fields)


class ReplyDecoder:
    """Bytes from the socket in, one reply out. ``receive_data(b"")`` means the daemon
    closed the connection; before a whole reply, that is an error."""

    def __init__(self) -> None:
        self._buffer = b""
        self._reply: SaslauthdReply | None = None

    def receive_data(self, data: bytes) -> SaslauthdReply | None:
        """The reply once complete, else None (more bytes needed)."""
        if self._reply is not None:
            return self._reply  # saslauthd sends one reply; anything after it is ignored
        if not data:
            raise SaslauthdError(
                f"saslauthd closed the connection after {len(self._buffer)} bytes of its reply"
            )
        self._buffer += data
        if len(self._buffer) < _COUNT.size:
            return None
        (count,) = _COUNT.unpack_from(self._buffer)
        if count < 2 or count > MAX_REPLY:
            raise SaslauthdError(f"not a saslauthd reply (length {count})")
        if len(self._buffer) < _COUNT.size + count:
            return None
        text = self._buffer[_COUNT.size : _COUNT.size + count]
        self._buffer = b""
        verdict, reason = text[:2], text[2:].strip(b" \0").decode("utf-8", "replace")
        if verdict not in (b"OK", b"NO"):
            raise SaslauthdError("not a saslauthd reply (neither OK nor NO)")
        self._reply = SaslauthdReply(verdict == b"OK", reason)
        return self._reply

"""The credentials file: user names and salted password hashes, never passwords.

One line per user, ``user:pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>``. Verifying is
slow on purpose (PBKDF2); the glue runs it off the reactor thread. A successful check is
remembered in memory as an HMAC under a per-process key, because every Cyrus backend
operation opens a new connection and logs in again (§10.1): repeating the KDF each time
would cap the write rate. No I/O here beyond reading and writing the file itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

SCHEME: Final = "pbkdf2-sha256"
DEFAULT_ITERATIONS: Final = 100_000


class CredentialsError(ValueError):
    """The credentials file is unreadable or malformed; names file and line."""


def hash_password(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"{SCHEME}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: bytes, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password, base64.b64decode(salt, validate=True), int(iterations)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)


def parse_credentials(text: str, source: str) -> dict[str, str]:
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not user or not encoded.startswith(SCHEME + "$"):
            raise CredentialsError(f"{source}:{number}: expected 'user:{SCHEME}$...'")
        users[user] = encoded
    return users


def render_credentials(users: dict[str, str]) -> str:
    lines = ["# mupdate credentials: user:salted hash (written by mupdate-passwd)"]
    lines += [f"{user}:{encoded}" for user, encoded in sorted(users.items())]
    return "\n".join(lines) + "\n"


def write_credentials(path: Path, users: dict[str, str]) -> None:
    """Atomic replace, mode 0600: the file holds password hashes."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode otherwise
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(render_credentials(users))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@dataclass
class CredentialsFile:
    """Users from a file, reloaded when the file changes (checked on each verify)."""

    path: Path
    _users: dict[str, str] = field(default_factory=dict)
    _stamp: tuple[int, int, int] | None = None
    _verified: dict[str, bytes] = field(default_factory=dict)
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp, self._verified = {}, None, {}
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # every atomic rewrite is a new inode
        if stamp != self._stamp:
            self._users = parse_credentials(self.path.read_text(encoding="utf-8"), str(self.path))
            self._stamp = stamp
            self._verified = {}

    def users(self) -> list[str]:
        self._refresh()
        return sorted(self._users)

    def verify(self, user: str, password: bytes) -> bool:
        """Blocking (PBKDF2) on a cache miss: call from a worker thread."""
        self._refresh()
        encoded = self._users.get(user)
        if encoded is None:
            return False
        mark = hmac.new(self._key, user.encode() + b"\0" + password, hashlib.sha256).digest()
        known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, mark):
            return True
        if check_password(password, encoded):
            self._verified[user] = mark
            return True
        return False

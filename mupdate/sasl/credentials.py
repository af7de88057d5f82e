"""The credentials file: user names and salted verifiers, never passwords.

One line per user: the name, then ``:``-separated verifiers, each ``scheme$field$field...``::

    user:pbkdf2-sha256$<iterations>$<salt>$<hash>:scram-sha-1$<iterations>$<salt>$<StoredKey>$<ServerKey>:scram-sha-256$...:scram-sha-512$...

(binary fields in base64, which has neither ``:`` nor ``$``). The PBKDF2 hash serves PLAIN
and LOGIN; each ``scram-sha-*`` field serves that SCRAM mechanism and its ``-PLUS`` variant
(RFC 5802 §3: the server keeps StoredKey and ServerKey, from which the password cannot be
recovered, and a login runs no KDF on the server). Lines written before SCRAM existed carry
only the PBKDF2 field: they still load, PLAIN and LOGIN work for them, SCRAM does not
(``mupdate-passwd list`` shows which mechanisms each user has).

Verifying a PLAIN/LOGIN password is slow on purpose (PBKDF2); the glue runs it off the
reactor thread. A successful check is
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from mupdate.sasl.scram import DEFAULT_ITERATIONS as SCRAM_ITERATIONS
from mupdate.sasl.scram import SCRAM_MECHANISMS, ScramKeys, base_mechanism, make_keys

SCHEME: Final = "pbkdf2-sha256"
DEFAULT_ITERATIONS: Final = 100_000
PASSWORD_MECHANISMS: Final = ("PLAIN", "LOGIN")


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


@dataclass(frozen=True, slots=True)
class UserCredential:
    """One user's verifiers: the PBKDF2 hash (None on a SCRAM-only line) and SCRAM keys by
    mechanism name (``SCRAM-SHA-256``)."""

    password_hash: str | None
    scram: dict[str, ScramKeys] = field(default_factory=dict)

    def mechanisms(self) -> tuple[str, ...]:
        """The mechanisms this credential can log in with (without ``-PLUS`` variants)."""
        scram = tuple(m for m in SCRAM_MECHANISMS if m in self.scram)
        return scram + (PASSWORD_MECHANISMS if self.password_hash else ())


def _scram_field(mechanism: str, keys: ScramKeys) -> str:
    b64 = base64.b64encode
    return "$".join(
        (
            mechanism.lower(),
            str(keys.iterations),
            b64(keys.salt).decode(),
            b64(keys.stored_key).decode(),
            b64(keys.server_key).decode(),
        )
    )


def make_credential(
    password: str,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    scram_iterations: int = SCRAM_ITERATIONS,
    mechanisms: Iterable[str] = SCRAM_MECHANISMS,
) -> str:
    """Every verifier for ``password``: the PBKDF2 hash, then SCRAM keys per mechanism."""
    fields = [hash_password(password, iterations=iterations)]
    for mechanism in mechanisms:
        name = base_mechanism(mechanism)
        keys = make_keys(name, password, iterations=scram_iterations)
        fields.append(_scram_field(name, keys))
    return ":".join(fields)


def decode_credential(encoded: str) -> UserCredential:
    """Split a line's verifiers; ValueError names what is wrong."""
    password_hash: str | None = None
    scram: dict[str, ScramKeys] = {}
    for part in encoded.split(":"):
        scheme = part.split("$", 1)[0]
        if scheme == SCHEME:
            if password_hash is not None or len(part.split("$")) != 4:
                raise ValueError(f"expected one '{SCHEME}$<iterations>$<salt>$<hash>'")
            password_hash = part
            continue
        name = scheme.upper()
        if name not in SCRAM_MECHANISMS:
            raise ValueError(f"unknown verifier {scheme!r}")
        fields = part.split("$")
        if len(fields) != 5 or name in scram:
            raise ValueError(f"expected one '{scheme}$<iterations>$<salt>$<StoredKey>$<ServerKey>'")
        try:
            iterations = int(fields[1])
            salt, stored, server = (base64.b64decode(f, validate=True) for f in fields[2:])
        except (ValueError, TypeError):
            raise ValueError(f"{scheme}: iterations or base64 fields are malformed") from None
        if iterations < 1 or not salt or not stored or not server:
            raise ValueError(f"{scheme}: empty field")
        scram[name] = ScramKeys(salt, iterations, stored, server)
    if password_hash is None and not scram:
        raise ValueError("no verifier")
    return UserCredential(password_hash, scram)


def parse_credentials(text: str, source: str) -> dict[str, str]:
    """User name to its encoded verifiers; every line is decoded once to check it."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        expected = f"{source}:{number}: expected 'user:{SCHEME}$...'"
        if not sep or not user or not encoded:
            raise CredentialsError(expected)
        try:
            decode_credential(encoded)
        except ValueError as exc:
            raise CredentialsError(f"{expected}: {exc}") from None
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
    """Users from a file, reloaded when the file changes (checked on each lookup)."""

    path: Path
    _users: dict[str, UserCredential] = field(default_factory=dict)
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
            encoded = parse_credentials(self.path.read_text(encoding="utf-8"), str(self.path))
            self._users = {user: decode_credential(e) for user, e in encoded.items()}
            self._stamp = stamp
            self._verified = {}

    def users(self) -> list[str]:
        self._refresh()
        return sorted(self._users)

    def credential(self, user: str) -> UserCredential | None:
        self._refresh()
        return self._users.get(user)

    def scram_mechanisms(self) -> frozenset[str]:
        """The SCRAM mechanisms every user in the file has keys for. A server offers only
        these, so a file written before SCRAM keeps its users on PLAIN and LOGIN (a client
        such as Cyrus's takes the strongest mechanism offered and never falls back) until
        ``mupdate-passwd add`` has given each of them SCRAM keys. An empty or missing file
        offers none: with ``sasl_pwcheck_method: saslauthd`` PLAIN and LOGIN must stay the
        strongest mechanisms offered, or such a client would pick a SCRAM nobody can pass."""
        self._refresh()
        if not self._users:
            return frozenset()
        common = frozenset(SCRAM_MECHANISMS)
        for credential in self._users.values():
            common &= credential.scram.keys()
        return common

    def scram_keys(self, user: str, mechanism: str) -> ScramKeys | None:
        """The user's stored keys for ``mechanism`` (``-PLUS`` uses the base keys); cheap."""
        found = self.credential(user)
        return None if found is None else found.scram.get(base_mechanism(mechanism))

    def verify(self, user: str, password: bytes) -> bool:
        """Blocking (PBKDF2) on a cache miss: call from a worker thread."""
        self._refresh()
        found = self._users.get(user)
        if found is None or found.password_hash is None:
            return False
        mark = hmac.new(self._key, user.encode() + b"\0" + password, hashlib.sha256).digest()
        known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, mark):
            return True
        if check_password(password, found.password_hash):
            self._verified[user] = mark
            return True
        return False

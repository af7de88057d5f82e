"""SCRAM (RFC 5802, RFC 7677), sans-I/O, server and client, with ``-PLUS`` channel binding.

Same shape as every mechanism in ``mechanisms.py``: ``start``/``step`` on the server return
``Challenge``, ``Success`` (carrying the final ``v=...`` message, which the glue sends as one
more bare base64 challenge, §5.1) or ``Failure``; the client answers challenges through
``respond``. The server never sees a password and runs no KDF at login: it asks ``lookup``
for the user's stored keys (salt, iterations, StoredKey, ServerKey), which ``scramp``
derives once when the credential is written (``make_keys``).

Why the messages are handled here and not by ``scramp.ScramServer``: every Cyrus client sends
an authorization id in the GS2 header (``n,a=admin,n=admin,r=...``, interop README), which
scramp's server refuses, and that header is part of the signed AuthMessage, so it cannot be
rewritten on the way in. ``scramp`` supplies the mechanism table, SASLprep and the key
derivation; the tests check this module against scramp's own client and server.

Channel binding is ``tls-server-end-point`` (RFC 5929 §4.1: a hash of the server's
certificate), the one type that is defined under TLS 1.3 too; the glue passes the binding
data in and offers ``-PLUS`` only when it has it. Imports nothing from Twisted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from scramp import ScramException, ScramMechanism
from scramp.utils import saslprep

from mupdate.sasl.steps import Challenge, Failure, Step, Success

#: The SCRAM mechanisms we speak, strongest first (scramp supports each of them).
SCRAM_MECHANISMS: Final = ("SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1")
PLUS_MECHANISMS: Final = tuple(m + "-PLUS" for m in SCRAM_MECHANISMS)
CHANNEL_BINDING_TYPE: Final = "tls-server-end-point"
#: Iterations for new stored keys: RFC 7677's minimum and Cyrus's default. The client runs
#: them at every login, and a Cyrus backend logs in once per mailbox operation (§10.1).
DEFAULT_ITERATIONS: Final = 4096
MAX_ITERATIONS: Final = 1_000_000  # a client refuses more: a hostile server's CPU trap

_HASHES: Final[dict[str, Callable[..., object]]] = {
    "SCRAM-SHA-1": hashlib.sha1,
    "SCRAM-SHA-256": hashlib.sha256,
    "SCRAM-SHA-512": hashlib.sha512,
}


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """What the server stores per user and mechanism (RFC 5802 §3): never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


#: Credential lookup handed to the server mechanism: the user's keys, or None.
ScramLookup = Callable[[str], ScramKeys | None]


def base_mechanism(name: str) -> str:
    """``SCRAM-SHA-256-PLUS`` -> ``SCRAM-SHA-256``; the keys are the same for both."""
    return name.upper().removesuffix("-PLUS")


def is_scram(name: str) -> bool:
    return base_mechanism(name) in SCRAM_MECHANISMS


def make_keys(
    mechanism: str,
    password: str,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    salt: bytes | None = None,
) -> ScramKeys:
    """Derive stored keys with scramp (slow on purpose: PBKDF2 with ``iterations``)."""
    info = ScramMechanism(base_mechanism(mechanism)).make_auth_info(
        password, iteration_count=iterations, salt=salt
    )
    salt_, stored_key, server_key, count = info
    return ScramKeys(bytes(salt_), int(count), stored_key, server_key)


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """RFC 5929 §4.1 binding data: the certificate hashed with its signature's hash, where
    MD5 and SHA-1 become SHA-256."""
    from cryptography import x509  # only the glue's TLS path needs it

    cert = x509.load_der_x509_certificate(certificate_der)
    algorithm = cert.signature_hash_algorithm
    name = algorithm.name if algorithm is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, certificate_der).digest()


def _digest(mechanism: str) -> Callable[..., object]:
    return _HASHES[base_mechanism(mechanism)]


def _hmac(mechanism: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, _digest(mechanism)).digest()  # type: ignore[arg-type]


def _h(mechanism: str, data: bytes) -> bytes:
    return _digest(mechanism)(data).digest()  # type: ignore[attr-defined, no-any-return]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _escape(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _unescape(name: str) -> str | None:
    """RFC 5802 saslname: ``=`` only as ``=2C`` or ``=3D``."""
    for i, char in enumerate(name):
        if char == "=" and name[i : i + 3] not in ("=2C", "=3D"):
            return None
    return name.replace("=2C", ",").replace("=3D", "=")


def _nonce() -> str:
    # base64 has no ',' and is printable ASCII, as r= requires.
    return base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _attributes(message: str) -> list[tuple[str, str]] | None:
    """``k=v,k=v`` in order; None when malformed (RFC 5802 §7)."""
    out: list[tuple[str, str]] = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isascii() or not part[0].isalpha():
            return None
        out.append((part[0], part[2:]))
    return out


@dataclass(frozen=True, slots=True)
class _ClientFirst:
    gs2_header: str
    cb_flag: str  # "n", "y" or "p=<type>"
    authzid: str
    user: str
    nonce: str
    bare: str


def _parse_client_first(message: str) -> _ClientFirst | Failure:
    parts = message.split(",", 2)
    if len(parts) != 3:
        return Failure("SCRAM client-first is not gs2-header + bare message")
    cb_flag, authz, bare = parts
    if cb_flag not in ("n", "y") and not cb_flag.startswith("p="):
        return Failure("SCRAM channel-binding flag must be n, y or p=")
    authzid = ""
    if authz:
        if not authz.startswith("a="):
            return Failure("SCRAM gs2 authzid must be a=<name>")
        name = _unescape(authz[2:])
        if name is None or not name:
            return Failure("SCRAM authzid is badly escaped")
        authzid = name
    attrs = _attributes(bare)
    if attrs is None or len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
        return Failure("SCRAM client-first must be n=user,r=nonce")
    if any(key == "m" for key, _ in attrs):
        return Failure("SCRAM mandatory extensions are not supported")
    user = _unescape(attrs[0][1])
    nonce = attrs[1][1]
    if user is None or not user or not nonce:
        return Failure("SCRAM user name or nonce is empty or badly escaped")
    if not all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce):
        return Failure("SCRAM client nonce has characters r= does not allow")
    try:
        user = saslprep(user)
        authzid = saslprep(authzid) if authzid else ""
    except ScramException:
        return Failure("SCRAM user name is not valid SASLprep")
    return _ClientFirst(f"{cb_flag},{authz},", cb_flag, authzid, user, nonce, bare)


class ScramServer:
    """One SCRAM exchange, server side.

    ``lookup`` gives a user's keys for this mechanism (None: unknown user, or one that may
    not log in). An unknown user still gets a plausible server-first message (a salt derived
    from the name under a per-process secret) and fails only at the proof, so the exchange
    does not tell who exists. ``channel_binding`` is the tls-server-end-point data of this
    connection, or None without TLS; ``plus_offered`` says whether the ``-PLUS`` variants are
    advertised on it (a client that says ``y`` while they are has been downgraded).
    """

    _fake_secret: Final = secrets.token_bytes(32)

    def __init__(
        self,
        name: str,
        lookup: ScramLookup,
        *,
        channel_binding: bytes | None = None,
        plus_offered: bool = False,
        nonce: str | None = None,
    ) -> None:
        self.name = name.upper()
        if not is_scram(self.name):
            raise ValueError(f"not a SCRAM mechanism: {name}")
        self._plus = self.name.endswith("-PLUS")
        if self._plus and channel_binding is None:
            raise ValueError(f"{self.name} needs channel-binding data")
        self._lookup = lookup
        self._binding = channel_binding
        self._plus_offered = plus_offered and channel_binding is not None
        self._server_nonce = nonce or _nonce()
        self._stage = 0
        self._first: _ClientFirst | None = None
        self._keys: ScramKeys | None = None
        self._known = False
        self._server_first = ""

    @property
    def user(self) -> str | None:
        """The user named in client-first, once read (for the failed-login log)."""
        return self._first.user if self._first is not None else None

    def start(self, initial: bytes | None) -> Step:
        if not initial:  # none, or "=" (empty): the client-first comes as a response
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> Step:
        try:
            message = response.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail("SCRAM message is not UTF-8")
        if self._stage == 0:
            return self._client_first(message)
        if self._stage == 1:
            return self._client_final(message)
        return self._fail("SCRAM exchange already complete")

    def _fail(self, reason: str) -> Failure:
        self._stage = 3
        return Failure(reason)

    def _client_first(self, message: str) -> Step:
        first = _parse_client_first(message)
        if isinstance(first, Failure):
            return self._fail(first.reason)
        flag = first.cb_flag
        if self._plus:
            if flag != f"p={CHANNEL_BINDING_TYPE}":
                return self._fail(f"{self.name} needs channel binding {CHANNEL_BINDING_TYPE}")
        elif flag.startswith("p="):
            return self._fail("channel binding asked for on a mechanism without -PLUS")
        elif flag == "y" and self._plus_offered:
            return self._fail("client thinks we lack channel binding: a downgrade")
        keys = self._lookup(first.user)
        self._known = keys is not None
        if keys is None:
            keys = self._fake_keys(first.user)
        self._first, self._keys = first, keys
        self._server_first = (
            f"r={first.nonce}{self._server_nonce},s={_b64(keys.salt)},i={keys.iterations}"
        )
        self._stage = 1
        return Challenge(self._server_first.encode("ascii"))

    def _fake_keys(self, user: str) -> ScramKeys:
        seed = hmac.new(self._fake_secret, user.encode("utf-8"), hashlib.sha256).digest()
        return ScramKeys(seed[:16], DEFAULT_ITERATIONS, secrets.token_bytes(64), b"")

    def _client_final(self, message: str) -> Step:
        first, keys = self._first, self._keys
        assert first is not None
        assert keys is not None
        attrs = _attributes(message)
        if attrs is None or len(attrs) < 3:
            return self._fail("SCRAM client-final is malformed")
        (c_key, c_value), (r_key, r_value), *middle, (p_key, p_value) = attrs
        if (c_key, r_key, p_key) != ("c", "r", "p") or any(k == "m" for k, _ in middle):
            return self._fail("SCRAM client-final must be c=...,r=...,p=...")
        binding = _unb64(c_value)
        expected = first.gs2_header.encode("utf-8")
        if first.cb_flag.startswith("p="):
            assert self._binding is not None
            expected += self._binding
        if binding is None or not hmac.compare_digest(binding, expected):
            return self._fail("SCRAM channel binding does not match")
        if r_value != first.nonce + self._server_nonce:
            return self._fail("SCRAM nonce does not match")
        proof = _unb64(p_value)
        without_proof = message[: message.rindex(",p=")]
        auth_message = f"{first.bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self.name, keys.stored_key, auth_message)
        if proof is None or len(proof) != len(signature):
            return self._fail("SCRAM proof is malformed")
        client_key = _xor(signature, proof)
        valid = hmac.compare_digest(_h(self.name, client_key), keys.stored_key)
        self._stage = 2
        if not (valid and self._known):
            return self._fail("wrong password or unknown user")
        verifier = _hmac(self.name, keys.server_key, auth_message)
        return Success(first.user, first.authzid, b"v=" + _b64(verifier).encode("ascii"))


class ScramError(Exception):
    """The server's SCRAM messages are wrong: the client gives up (the glue sends ``*``)."""


class ScramClient:
    """One SCRAM exchange, client side; ``channel_binding`` is needed for ``-PLUS``.

    ``respond`` answers server-first with client-final, and the server's final ``v=...``
    (checked here: a server that cannot prove it knows the keys is refused) with an empty
    response, which the glue sends as an empty line (§5.1).
    """

    def __init__(
        self,
        name: str,
        authcid: str,
        password: str,
        authzid: str = "",
        *,
        channel_binding: bytes | None = None,
        nonce: str | None = None,
    ) -> None:
        self.name = name.upper()
        if not is_scram(self.name):
            raise ValueError(f"not a SCRAM mechanism: {name}")
        plus = self.name.endswith("-PLUS")
        if plus and channel_binding is None:
            raise ValueError(f"{self.name} needs channel-binding data")
        self._binding = channel_binding if plus else None
        flag = f"p={CHANNEL_BINDING_TYPE}" if plus else "n"
        authz = f"a={_escape(saslprep(authzid))}" if authzid else ""
        self._gs2_header = f"{flag},{authz},"
        self._password = saslprep(password).encode("utf-8")
        self._nonce = nonce or _nonce()
        self._bare = f"n={_escape(saslprep(authcid))},r={self._nonce}"
        self._stage = 0
        self._server_signature = b""

    def initial(self) -> bytes | None:
        return (self._gs2_header + self._bare).encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        if self._stage == 0:
            if not challenge:  # a server that wants the client-first as a response
                return self.initial() or b""
            return self._server_first(challenge)
        if self._stage == 1:
            return self._server_final(challenge)
        raise ScramError("SCRAM exchange already complete")

    def _server_first(self, challenge: bytes) -> bytes:
        message = challenge.decode("utf-8", "replace")
        attrs = _attributes(message)
        if attrs is None or [k for k, _ in attrs[:3]] != ["r", "s", "i"]:
            raise ScramError("server-first is not r=...,s=...,i=...")
        nonce, salt_b64, count = (v for _, v in attrs[:3])
        salt = _unb64(salt_b64)
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise ScramError("server nonce does not extend ours")
        if salt is None or not salt:
            raise ScramError("server salt is not base64")
        if not count.isdigit() or not 1 <= int(count) <= MAX_ITERATIONS:
            raise ScramError(f"server iteration count {count!r} refused")
        algorithm = _digest(self.name)().name  # type: ignore[attr-defined]
        salted = hashlib.pbkdf2_hmac(algorithm, self._password, salt, int(count))
        client_key = _hmac(self.name, salted, b"Client Key")
        stored_key = _h(self.name, client_key)
        server_key = _hmac(self.name, salted, b"Server Key")
        binding = self._gs2_header.encode("utf-8") + (self._binding or b"")
        without_proof = f"c={_b64(binding)},r={nonce}"
        auth_message = f"{self._bare},{message},{without_proof}".encode()
        proof = _xor(client_key, _hmac(self.name, stored_key, auth_message))
        self._server_signature = _hmac(self.name, server_key, auth_message)
        self._stage = 1
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def _server_final(self, challenge: bytes) -> bytes:
        self._stage = 2
        message = challenge.decode("utf-8", "replace")
        if message.startswith("e="):
            raise ScramError(f"server refused: {message[2:]}")
        verifier = _unb64(message[2:]) if message.startswith("v=") else None
        if verifier is None or not hmac.compare_digest(verifier, self._server_signature):
            raise ScramError("server signature does not match: not the server we know")
        return b""

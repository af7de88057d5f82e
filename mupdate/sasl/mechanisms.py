"""SASL mechanisms, sans-I/O, server and client side (protocol doc §5.1; RFC 4616, LOGIN draft).

Every mechanism has one shape: ``start(initial)`` then ``step(response)``, each returning a
step value (``steps.py``). Payloads are raw bytes here; the glue does base64 and the ``*``
cancel. PLAIN and LOGIN do not check the password themselves: they return ``CheckPassword``
and the glue runs the (deliberately slow) verifier off the reactor thread. SCRAM
(``scram.py``) looks its stored keys up through a callable and ends in ``Success`` with the
final server data. Imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from mupdate.sasl.scram import (
    PLUS_MECHANISMS,
    SCRAM_MECHANISMS,
    ScramClient,
    ScramLookup,
    ScramServer,
    is_scram,
)
from mupdate.sasl.steps import Challenge, CheckPassword, Failure, Step, Success

__all__ = [
    "PLAINTEXT_MECHANISMS",
    "SUPPORTED_MECHANISMS",
    "Challenge",
    "CheckPassword",
    "ClientMechanism",
    "Failure",
    "LoginClient",
    "LoginServer",
    "PlainClient",
    "PlainServer",
    "ServerMechanism",
    "Step",
    "Success",
    "client_mechanism",
    "server_mechanism",
]


class ServerMechanism(Protocol):
    @property
    def name(self) -> str: ...

    def start(self, initial: bytes | None) -> Step: ...

    def step(self, response: bytes) -> Step: ...


def _text(raw: bytes, what: str) -> str | Failure:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return Failure(f"{what} is not UTF-8")


class PlainServer:
    """RFC 4616: ``authzid NUL authcid NUL passwd``, with or without initial response."""

    name: Final = "PLAIN"

    def __init__(self) -> None:
        self._done = False

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> Step:
        if self._done:
            return Failure("PLAIN takes one response")
        self._done = True
        parts = response.split(b"\0")
        if len(parts) != 3:
            return Failure("PLAIN response is not authzid NUL authcid NUL password")
        authzid, authcid, password = parts
        if not authcid or not password:
            return Failure("PLAIN response lacks a user name or password")
        authz = _text(authzid, "authorization id")
        authc = _text(authcid, "user name")
        if isinstance(authz, Failure):
            return authz
        if isinstance(authc, Failure):
            return authc
        return CheckPassword(authc, authz, password)


class LoginServer:
    """The LOGIN mechanism: ``Username:`` then ``Password:`` challenges."""

    name: Final = "LOGIN"

    def __init__(self) -> None:
        self._user: str | None = None
        self._done = False

    @property
    def user(self) -> str | None:
        """The user name, once sent (for the failed-login log)."""
        return self._user

    def start(self, initial: bytes | None) -> Step:
        if initial:
            return self.step(initial)
        return Challenge(b"Username:")

    def step(self, response: bytes) -> Step:
        if self._done:
            return Failure("LOGIN exchange already complete")
        if self._user is None:
            user = _text(response, "user name")
            if isinstance(user, Failure):
                return user
            if not user:
                return Failure("LOGIN user name is empty")
            self._user = user
            return Challenge(b"Password:")
        self._done = True
        if not response:
            return Failure("LOGIN password is empty")
        if b"\0" in response:
            return Failure("LOGIN password contains NUL")
        return CheckPassword(self._user, "", response)


PLAINTEXT_MECHANISMS: Final = frozenset({"PLAIN", "LOGIN"})

#: Everything we can offer, strongest first; ``-PLUS`` only where channel binding exists.
SUPPORTED_MECHANISMS: Final = (*PLUS_MECHANISMS, *SCRAM_MECHANISMS, "PLAIN", "LOGIN")


def server_mechanism(
    name: str,
    scram_lookup: Callable[[str], ScramLookup] | None = None,
    channel_binding: bytes | None = None,
    plus_offered: bool = False,
) -> ServerMechanism | None:
    """A fresh server mechanism, or None for one we do not know (or cannot run here: SCRAM
    without a key lookup, ``-PLUS`` without channel-binding data). ``scram_lookup`` maps the
    mechanism name (``SCRAM-SHA-256``, without ``-PLUS``) to a per-user key lookup."""
    name = name.upper()
    if name == "PLAIN":
        return PlainServer()
    if name == "LOGIN":
        return LoginServer()
    if not is_scram(name) or scram_lookup is None:
        return None
    if name.endswith("-PLUS") and channel_binding is None:
        return None
    return ScramServer(
        name,
        scram_lookup(name.removesuffix("-PLUS")),
        channel_binding=channel_binding,
        plus_offered=plus_offered,
    )


class ClientMechanism(Protocol):
    @property
    def name(self) -> str: ...

    def initial(self) -> bytes | None: ...

    def respond(self, challenge: bytes) -> bytes: ...


class PlainClient:
    name: Final = "PLAIN"

    def __init__(self, authcid: str, password: str, authzid: str = "") -> None:
        self._message = b"\0".join(s.encode("utf-8") for s in (authzid, authcid, password))

    def initial(self) -> bytes | None:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        return self._message


class LoginClient:
    name: Final = "LOGIN"

    def __init__(self, authcid: str, password: str, authzid: str = "") -> None:
        self._user = authcid.encode("utf-8")
        self._password = password.encode("utf-8")

    def initial(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        return self._user if challenge.lower().startswith(b"user") else self._password


def client_mechanism(
    offered: tuple[str, ...],
    authcid: str,
    password: str,
    authzid: str = "",
    channel_binding: bytes | None = None,
) -> ClientMechanism | None:
    """The strongest mechanism we support that the server offers: SCRAM (SHA-512, SHA-256,
    SHA-1; ``-PLUS`` first when ``channel_binding`` is given), then PLAIN, then LOGIN."""
    available = {m.upper() for m in offered}
    if channel_binding is not None:
        for name in PLUS_MECHANISMS:
            if name in available:
                return ScramClient(
                    name, authcid, password, authzid, channel_binding=channel_binding
                )
    for name in SCRAM_MECHANISMS:
        if name in available:
            return ScramClient(name, authcid, password, authzid)
    for factory in (PlainClient, LoginClient):
        if factory.name in available:
            return factory(authcid, password, authzid)
    return None

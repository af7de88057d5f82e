"""SASL mechanisms, sans-I/O, server and client side (protocol doc §5.1; RFC 4616, LOGIN draft).

Every mechanism has one shape: ``start(initial)`` then ``step(response)``, each returning a
step value. Payloads are raw bytes here; the glue does base64 and the ``*`` cancel. A
password check is not done inside the mechanism: it returns ``CheckPassword`` and the glue
runs the (deliberately slow) verifier off the reactor thread. Imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """The exchange is complete; success depends on this password for ``authcid``."""

    authcid: str
    authzid: str
    password: bytes


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str


Step = Challenge | CheckPassword | Failure


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


SERVER_MECHANISMS: Final[dict[str, type[PlainServer] | type[LoginServer]]] = {
    "PLAIN": PlainServer,
    "LOGIN": LoginServer,
}

PLAINTEXT_MECHANISMS: Final = frozenset({"PLAIN", "LOGIN"})


def server_mechanism(name: str) -> ServerMechanism | None:
    factory = SERVER_MECHANISMS.get(name.upper())
    return factory() if factory else None


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
    offered: tuple[str, ...], authcid: str, password: str, authzid: str = ""
) -> ClientMechanism | None:
    """The first mechanism we support, in our order of preference, that the server offers."""
    available = {m.upper() for m in offered}
    for factory in (PlainClient, LoginClient):
        if factory.name in available:
            return factory(authcid, password, authzid)
    return None

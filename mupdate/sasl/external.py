"""SASL EXTERNAL (RFC 4422 appendix A), server and client side, sans-I/O (protocol doc §5.1).

The identity comes from outside the exchange: here, the subject CN of a client certificate
that the TLS layer has verified (the glue passes it in, mapped through
``mupdate_external_map``). The client's only message is an optional authorization id. The
mechanism has the shape of ``mechanisms.py`` -- ``start(initial)`` then ``step(response)`` --
and ends with ``steps.Success`` (no final data): no password is checked, and the glue still
applies the admin rule to ``authcid`` exactly as for PLAIN. Imports nothing from Twisted.
"""

from __future__ import annotations

from typing import Final

from mupdate.sasl.steps import Challenge, Failure, Success

__all__ = ["ExternalClient", "ExternalServer", "ExternalStep"]

#: ``Success.authzid`` is empty when the client asked to act as the certificate's identity.
ExternalStep = Challenge | Success | Failure


class ExternalServer:
    """``identity`` is the verified external name, or None when there is none (no verified
    client certificate): then every attempt fails."""

    name: Final = "EXTERNAL"

    def __init__(self, identity: str | None) -> None:
        self._identity = identity
        self._done = False

    def start(self, initial: bytes | None) -> ExternalStep:
        if initial is None:
            return Challenge(b"")  # RFC 4422: an empty challenge asks for the authzid
        return self.step(initial)

    def step(self, response: bytes) -> ExternalStep:
        if self._done:
            return Failure("EXTERNAL takes one response")
        self._done = True
        if self._identity is None:
            return Failure("EXTERNAL without a verified client certificate")
        try:
            authzid = response.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("authorization id is not UTF-8")
        if "\0" in authzid:
            return Failure("authorization id contains NUL")
        return Success(self._identity, authzid)


class ExternalClient:
    """Sends the authorization id (empty: act as the certificate's identity)."""

    name: Final = "EXTERNAL"

    def __init__(self, authzid: str = "") -> None:
        self._message = authzid.encode("utf-8")

    def initial(self) -> bytes | None:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        return self._message

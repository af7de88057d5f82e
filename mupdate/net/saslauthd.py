"""Asking a running ``saslauthd`` whether a PLAIN or LOGIN password is right, without
blocking the reactor (``sasl_pwcheck_method: saslauthd``; wire format in
``mupdate.sasl.saslauthd``).

One unix-socket connection per check, as libsasl does, closed by us as soon as the reply is
in (a saslauthd process serves no one else until then), the whole bounded by
``mupdate_saslauthd_timeout`` from connect to reply (libsasl waits forever; a stuck daemon
must not hold a login, nor the connection's command queue, that long). Every outcome that is
not an OK counts as a refusal: the daemon's NO is logged at info with its reason, a daemon
that cannot be reached, answers garbage or is too slow at error. The password is in the
request only; it is never logged, nor is the request.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IAddress, IReactorTime, IReactorUNIX
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.sasl.saslauthd import ReplyDecoder, SaslauthdError, SaslauthdReply, encode_request

__all__ = ["SaslauthdChecker"]

#: The service name libsasl passes for Cyrus's mupdate (its ``sasl_server_new("mupdate")``).
SERVICE = "mupdate"


class _Exchange(Protocol):
    """One request out, one reply in; ``reply`` fires with it, or fails."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._decoder = ReplyDecoder()
        self.reply: Deferred[SaslauthdReply] = Deferred(self._cancel)
        self.closed: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)
        self._request = b""

    def dataReceived(self, data: bytes) -> None:
        self._feed(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._feed(b"")
        if not self.closed.called:  # cancelled by the timeout while we waited for the close
            self.closed.callback(None)

    def _feed(self, data: bytes) -> None:
        if self.reply.called:
            return
        try:
            reply = self._decoder.receive_data(data)
        except SaslauthdError as exc:
            self.reply.errback(exc)
            if self.transport is not None:
                self.transport.loseConnection()
            return
        if reply is not None:
            self.reply.callback(reply)
            assert self.transport is not None
            self.transport.loseConnection()


class _OneShot(Factory):
    noisy = False  # one connection per password check: no "Starting factory" line for each

    def __init__(self, protocol: _Exchange) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> _Exchange:
        return self._protocol


class SaslauthdChecker:
    """``check(user, password)`` through the saslauthd socket at ``path``."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorUNIX,
        clock: IReactorTime,
        path: Path,
        timeout: float,
        service: str = SERVICE,
        realm: str = "",
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self.path = path
        self.timeout = timeout
        self.service = service
        self.realm = realm

    def check(self, user: str, password: bytes) -> Deferred[bool]:
        """True only when saslauthd answered OK in time; failures are logged, never raised."""
        try:
            request = encode_request(user, password, self.service, self.realm)
        except SaslauthdError as exc:
            self._broken(Failure(exc), user)
            return succeed(False)
        d = Deferred.fromCoroutine(self._ask(request)).addTimeout(self.timeout, self._clock)

        def answered(reply: SaslauthdReply) -> bool:
            if not reply.ok:
                self.log.info(
                    "saslauthd at {path} refused {user}: {reason}",
                    path=str(self.path),
                    user=user,
                    reason=reply.reason or "NO",
                )
            return reply.ok

        def failed(failure: Failure) -> bool:
            self._broken(failure, user)
            return False

        return d.addCallbacks(answered, failed)

    async def _ask(self, request: bytes) -> SaslauthdReply:
        exchange = _Exchange(request)
        endpoint = UNIXClientEndpoint(
            self._reactor, str(self.path), timeout=max(1, int(self.timeout))
        )
        await endpoint.connect(_OneShot(exchange))
        reply = await exchange.reply
        # saslauthd reads on until we hang up, and each of its processes serves one
        # connection at a time: the check is over once our side has closed.
        await exchange.closed
        return reply

    def _broken(self, failure: Failure, user: str) -> None:
        if failure.check(TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        else:
            reason = failure.getErrorMessage() or repr(failure.value)
        self.log.error(
            "cannot check the password of {user} with saslauthd at {path}: {reason}",
            user=user,
            path=str(self.path),
            reason=reason,
        )

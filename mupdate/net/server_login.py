"""The TLS and SASL half of the server protocol: STARTTLS, EXTERNAL, AUTHENTICATE (§5.1, §5.2).

A mixin of ``MupdateServerProtocol`` (``mupdate.net.server``), kept apart so each file reads
on its own: the pump and the command path there, the login path here. It uses the
protocol's engine, factory, output and busy flag, declared below for the type checker.

How it works: AUTHENTICATE is handled here for every role (bare base64 lines, final server
data as one more challenge answered by an empty line, the failed-login pause, a per-connection
attempt limit, admins only). STARTTLS is offered when the factory holds server options and
the session is not under TLS yet; after ``OK Begin TLS negotiation now`` the engine is
PAUSED until the handshake is done, and the banner is sent again after it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.interfaces import IAddress, IDelayedCall, ISSLTransport, ITLSTransport
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mupdate import __version__
from mupdate.protocol import texts
from mupdate.protocol.commands import Authenticate, SaslResponse, Starttls
from mupdate.protocol.responses import Bye, Done, Greeting, Response, SaslChallenge, Status
from mupdate.protocol.server import ServerConnection
from mupdate.sasl import (
    PLAINTEXT_MECHANISMS,
    Challenge,
    CheckPassword,
    ServerMechanism,
    server_mechanism,
)
from mupdate.sasl import Failure as SaslFailure
from mupdate.sasl.external import ExternalServer
from mupdate.sasl.scram import (
    PLUS_MECHANISMS,
    ScramKeys,
    ScramLookup,
    base_mechanism,
    is_scram,
    tls_server_end_point,
)
from mupdate.sasl.steps import Success
from mupdate.tls import peer_common_name

if TYPE_CHECKING:
    from twisted.internet.interfaces import ITransport

    from mupdate.config.settings import ServerSettings
    from mupdate.net.output import OutputQueue
    from mupdate.net.server import MupdateServerFactory


def is_loopback(address: IAddress | None) -> bool:
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class ServerLogin:
    """TLS and SASL for one server connection (mixed into MupdateServerProtocol)."""

    log = Logger()
    server_factory: MupdateServerFactory
    settings: ServerSettings
    engine: ServerConnection
    transport: ITransport | None
    output: OutputQueue | None
    user: str | None
    authcid: str | None
    peer: str
    _busy: bool
    _closing: bool
    _mechanism: object
    _auth_tag: bytes
    _greet_after_handshake: bool
    _final: Success | None
    _failed_logins: int
    _login_call: IDelayedCall | None

    def _send(self, event: Response) -> None:
        raise NotImplementedError

    def answered(self, event: Response) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def _bye(self, text_: bytes, trailing_nul: bool = False) -> None:
        raise NotImplementedError

    def close_after_output(self) -> None:
        raise NotImplementedError

    # -- TLS (§3.2, §5.2) -----------------------------------------------------------------

    def _new_engine(self, transport: object) -> None:
        """The engine for this connection, knowing whether TLS is possible or already on."""
        tls_active = ISSLTransport.providedBy(transport)
        self.engine = ServerConnection(
            self.settings.limits,
            read_only=self.server_factory.handler.read_only,
            starttls_available=self.server_factory.tls_options is not None
            and (tls_active or ITLSTransport.providedBy(transport)),
            tls_active=tls_active,
        )

    def _starttls(self, event: Starttls) -> None:
        transport = self.transport
        options = self.server_factory.tls_options
        assert transport is not None
        assert options is not None  # the engine refuses STARTTLS without options
        assert self.output is not None
        self.output.flush()  # answers held in this pump leave in clear, before the OK
        if not self.output.idle:
            # The OK must leave in clear before the switch; a peer that pipelined STARTTLS
            # behind unread output cannot be served in order.
            self._bye(texts.TLS_INIT_ERROR)
            return
        begin = Done(event.tag, Status.OK, texts.BEGIN_TLS, quoted=False)
        transport.write(self.engine.send(begin))
        self.answered(begin)
        self._greet_after_handshake = True
        ITLSTransport(transport).startTLS(options)
        self.engine.tls_started()
        self.log.debug("TLS negotiation with {peer}", peer=self.peer)

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done: the banner again, without STARTTLS (§3.2)."""
        if self._closing or not self._greet_after_handshake:
            return
        self._greet_after_handshake = False
        self.log.info(
            "TLS with {peer} established; client certificate user: {user}",
            peer=self.peer,
            user=self.external_identity() or "none",
        )
        self._send(self._greeting())
        self._pump()

    def external_identity(self) -> str | None:
        """The user a verified client certificate stands for (subject CN, mapped through
        ``mupdate_external_map``), or None. Only with ``tls_client_ca_*`` set is a presented
        certificate a verified one."""
        tls = self.settings.tls
        if not (tls.verifies_clients and self.engine.tls_active):
            return None
        name = peer_common_name(self.transport)
        return None if name is None else tls.external_user(name)

    def _server_mechanism(self, name: str) -> ServerMechanism | ExternalServer | None:
        """The mechanism object for an offered name: EXTERNAL is ours (TLS), the rest the
        SASL registry's."""
        if name == ExternalServer.name:
            return ExternalServer(self.external_identity())
        binding = self.channel_binding()
        return server_mechanism(name, self._scram_lookup, binding, binding is not None)

    def _external_login(self, step: Success) -> None:
        """EXTERNAL succeeded: the same admin rule as PLAIN (§5.1), no password to check."""
        if step.authcid not in self.settings.admins:
            self._auth_failed(
                "certificate user is not an admin", texts.AUTH_FAILED, user=step.authcid
            )
            return
        self.user = step.authzid or step.authcid
        self.authcid = step.authcid  # authority follows the certificate's user (SASL part)
        self._mechanism = None
        self.engine.authentication_succeeded()
        self.log.info(
            "{user} logged in from {peer} with {mechanism} (a client certificate)",
            user=self.user,
            peer=self.peer,
            mechanism="EXTERNAL",
        )
        self._send(Done(self._auth_tag, Status.OK, texts.AUTHENTICATED))

    # -- SASL (§5.1) ----------------------------------------------------------------------

    def secure(self) -> bool:
        """Plaintext passwords are allowed here: under TLS, or where the settings allow."""
        if self.engine.tls_active:
            return True
        if self.settings.tls.required:
            return False
        if self.settings.allow_plaintext:
            return True
        return (
            self.settings.loopback_plaintext
            and self.transport is not None
            and is_loopback(self.transport.getPeer())
        )

    def offered_mechanisms(self) -> tuple[str, ...]:
        if self.settings.tls.required and not self.engine.tls_active:
            return ()  # mupdate_tls_required: nothing at all before TLS
        secure = self.secure()
        external = ("EXTERNAL",) if self.external_identity() is not None else ()
        plus = self.channel_binding() is not None  # -PLUS only where we can bind
        scram = self.server_factory.authenticator.scram_mechanisms()  # every user has keys for
        return external + tuple(
            m
            for m in self.settings.mechanisms
            if (secure or m not in PLAINTEXT_MECHANISMS)
            and (plus or m not in PLUS_MECHANISMS)
            and (not is_scram(m) or base_mechanism(m) in scram)
        )

    def _greeting(self) -> Greeting:
        return Greeting(
            mechanisms=tuple(m.encode() for m in self.offered_mechanisms()),
            servername=self.settings.servername.encode(),
            implementation=texts.IMPLEMENTATION,
            version=__version__.encode(),
            role=self.server_factory.handler.role,
            starttls=self.server_factory.tls_options is not None and not self.engine.tls_active,
            compress=False,
        )

    def _authenticate(self, event: Authenticate) -> None:
        self._auth_tag = event.tag
        mech_name = event.mechanism.decode("ascii", "replace").upper()
        mechanism = (  # TLS: EXTERNAL comes from _server_mechanism
            self._server_mechanism(mech_name) if mech_name in self.offered_mechanisms() else None
        )
        if mechanism is None:
            self._auth_failed(
                "mechanism not offered", texts.AUTH_MECHANISM_UNAVAILABLE, mechanism=mech_name
            )
            return
        self._mechanism = mechanism
        initial: bytes | None = None
        if event.initial_response is not None:
            decoded = self._b64(event.initial_response, allow_equals=True)
            if decoded is None:
                self._auth_failed("initial response is not base64", texts.AUTH_BAD_BASE64)
                return
            initial = decoded
        self._sasl_step(mechanism.start(initial))

    def _sasl_response(self, event: SaslResponse) -> None:
        final, self._final = self._final, None
        if event.line == b"*":
            self._mechanism = None
            self.engine.authentication_failed()
            self._send(Done(self._auth_tag, Status.NO, texts.CLIENT_CANCELED, quoted=False))
            return
        if final is not None:
            # §5.1: the client acknowledges our final data with an empty line.
            if event.line:
                self._auth_failed("no empty line after the final server data", texts.AUTH_FAILED)
            else:
                self._logged_in(final.authcid, final.authzid)
            return
        decoded = self._b64(event.line, allow_equals=False)
        mechanism = self._mechanism
        if decoded is None or mechanism is None:
            self._auth_failed("client response is not base64", texts.AUTH_BAD_BASE64)
            return
        self._sasl_step(mechanism.step(decoded))  # type: ignore[attr-defined]

    @staticmethod
    def _b64(data: bytes, allow_equals: bool) -> bytes | None:
        if allow_equals and data == b"=":
            return b""
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None

    def _sasl_step(self, step: Challenge | CheckPassword | SaslFailure | Success) -> None:
        match step:
            case Challenge(data=data):
                self._send(SaslChallenge(data))
            case SaslFailure(reason=reason):  # SCRAM and LOGIN know the user by now
                self._auth_failed(
                    reason, texts.AUTH_FAILED, user=getattr(self._mechanism, "user", None)
                )
            case CheckPassword():
                self._check_password(step)
            case Success() if isinstance(self._mechanism, ExternalServer):  # TLS: EXTERNAL
                self._external_login(step)
            case Success():
                self._sasl_success(step)

    def _check_password(self, step: CheckPassword) -> None:
        if step.authcid not in self.settings.admins:
            self._auth_failed("not an admin", texts.AUTH_FAILED, user=step.authcid)
            return
        self._busy = True
        d = self.server_factory.authenticator.check(step.authcid, step.password)

        def checked(ok: bool) -> None:
            self._busy = False
            if self._closing:
                return  # the connection went while the password was checked
            if not ok:
                self._auth_failed(
                    "wrong password or unknown user", texts.AUTH_FAILED, user=step.authcid
                )
                return
            self._logged_in(step.authcid, step.authzid)
            self._pump()

        def broken(failure: Failure) -> None:
            self._busy = False
            self.log.failure(
                "password check failed for {user}", failure, level=LogLevel.error, user=step.authcid
            )
            self._auth_failed("password check error", texts.AUTH_FAILED, user=step.authcid)

        d.addCallbacks(checked, broken)

    # -- SCRAM: stored keys, channel binding, final data ---------------------------------

    def _scram_lookup(self, mechanism: str) -> ScramLookup:
        """Keys for ``mechanism``, for admins only: anyone else looks like an unknown user
        (the exchange runs to its end and fails at the proof, revealing nothing)."""
        authenticator = self.server_factory.authenticator

        def lookup(user: str) -> ScramKeys | None:
            if user not in self.settings.admins:
                return None
            keys: ScramKeys | None = authenticator.scram_keys(user, mechanism)
            return keys

        return lookup

    def channel_binding(self) -> bytes | None:
        """tls-server-end-point data (RFC 5929) for this connection: a hash of our own
        certificate, or None when not under TLS or the certificate cannot be had."""
        if not self.engine.tls_active or self.transport is None:
            return None
        try:
            connection = self.transport.getHandle()  # type: ignore[attr-defined]
            certificate = connection.get_certificate()
            if certificate is None:
                return None
            der = certificate.to_cryptography().public_bytes(Encoding.DER)
        except Exception:  # no TLS handle here (a test transport, a plain socket)
            return None
        return tls_server_end_point(der)

    def _sasl_success(self, step: Success) -> None:
        """A mechanism proved the credential (SCRAM). Final data goes out as one more bare
        base64 challenge and the client's empty line completes the login (§5.1)."""
        if step.authcid not in self.settings.admins:
            self._auth_failed("not an admin", texts.AUTH_FAILED, user=step.authcid)
            return
        if step.data:
            self._final = step
            self._send(SaslChallenge(step.data))
            return
        self._logged_in(step.authcid, step.authzid)

    def _logged_in(self, authcid: str, authzid: str) -> None:
        """Tagged OK; the session acts as ``authzid`` (an admin may name another identity,
        as in Cyrus) but its authority stays that of ``authcid``."""
        self.authcid = authcid
        self.user = authzid or authcid
        mechanism = getattr(self._mechanism, "name", "?")
        self._mechanism = None
        if self._login_call is not None and self._login_call.active():
            self._login_call.cancel()
        self.engine.authentication_succeeded()
        self.log.info(
            "{user} logged in from {peer} as {authzid} with {mechanism}",
            user=authcid,  # the credential that was proved
            peer=self.peer,
            authzid=self.user,  # the identity the session acts as
            mechanism=mechanism,
        )
        self._send(Done(self._auth_tag, Status.OK, texts.AUTHENTICATED))

    def _login_timeout(self) -> None:
        if self.user is None and not self._closing:
            self.log.warn("closing {peer}: not logged in in time", peer=self.peer)
            self._bye(texts.IDLE_TOO_LONG)

    def _auth_failed(
        self, reason: str, reply: bytes, user: str | None = None, mechanism: str | None = None
    ) -> None:
        """After ``failedloginpause`` (Cyrus: 3 s), a tagged NO; Cyrus clients read the prefix.
        ``reason`` is a fixed text, never the client's data (style.md §9)."""
        self.server_factory.counters.failed_logins += 1
        self.server_factory.metrics.sasl_failed(getattr(self._mechanism, "name", None) or "none")
        self.log.warn(
            "failed login from {peer} as {user} with {mechanism}: {reason}",
            peer=self.peer,
            user=user or "?",
            mechanism=mechanism or getattr(self._mechanism, "name", None) or "-",
            reason=reason,
        )
        self._mechanism = None
        self._busy = True
        tag = self._auth_tag

        def answer() -> None:
            self._busy = False
            if self._closing:
                return
            self.engine.authentication_failed()
            self._send(Done(tag, Status.NO, reply))
            self._failed_logins += 1
            if self._failed_logins >= self.settings.auth_attempts_max:
                self.log.warn(
                    "closing {peer}: {count} failed logins",
                    peer=self.peer,
                    count=self._failed_logins,
                )
                self._send(Bye(texts.TOO_MANY_FAILURES))
                self.close_after_output()
                return
            self._pump()

        self.server_factory.clock.callLater(self.settings.failed_login_pause, answer)

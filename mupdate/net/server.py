"""The one server-side ``dataReceived``: feed the engine, run SASL, hand commands to a role.

How it works: bytes go into the sans-I/O ``ServerConnection``; events come out one at a
time. AUTHENTICATE is handled here for every role (§5.1: bare base64 lines, the failed-login
pause, admins only); every other command goes to the role's ``CommandHandler`` (master or
slave), which returns responses or a Deferred of them. While a Deferred is outstanding no
further event is taken (pipelined commands run strictly in order, §2.1) and the transport
stops reading, so a flooding client cannot grow our input buffer. Output goes through an
``OutputQueue`` so stream lines, dumps and replies leave in order and under back-pressure.

TLS (§3.2, §5.2): STARTTLS is offered when the factory holds server options (from
``mupdate.tls``) and the session is not under TLS yet. After ``OK Begin TLS negotiation
now`` the engine is PAUSED; the glue starts TLS and tells the engine, and the banner is sent
again once the handshake is complete (so ``* AUTH`` can list EXTERNAL for a verified client
certificate). A connection accepted by an implicit-TLS listener is under TLS from the start
and greets after its handshake.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mupdate import __version__
from mupdate.config.settings import ServerSettings
from mupdate.logs import text
from mupdate.net.output import OutputQueue
from mupdate.protocol import texts
from mupdate.protocol.commands import (
    Authenticate,
    Command,
    Compress,
    Logout,
    SaslResponse,
    Starttls,
)
from mupdate.protocol.errors import PeerError
from mupdate.protocol.responses import Bye, Done, Greeting, Response, SaslChallenge, Status
from mupdate.protocol.server import NEED_DATA, PAUSED, ServerConnection
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

#: What a handler answers: response events, and pre-rendered chunks for large dumps.
Reply = Sequence[Response | Iterator[bytes]]


class Authenticator(TypingProtocol):
    """Checks a password off the reactor thread (the Deferred fires with True or False), and
    hands out SCRAM stored keys (cheap: no KDF at login)."""

    def check(self, user: str, password: bytes) -> Deferred[bool]: ...

    def scram_mechanisms(self) -> frozenset[str]: ...

    def scram_keys(self, user: str, mechanism: str) -> ScramKeys | None: ...


class CommandHandler(TypingProtocol):
    """A role's command logic (master or slave); parses nothing, touches no socket."""

    role: bytes
    read_only: bool

    def handle(
        self, command: Command, session: MupdateServerProtocol
    ) -> Reply | Deferred[Reply]: ...

    def connection_closed(self, session: MupdateServerProtocol) -> None: ...


def is_loopback(address: IAddress | None) -> bool:
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@dataclass
class ServerCounters:
    connections: int = 0
    refused_connections: int = 0
    failed_logins: int = 0
    commands: dict[str, int] = field(default_factory=dict)


class MupdateServerFactory(Factory):
    """What connections share: settings, role handler, authenticator, clock, counters."""

    log = Logger()

    def __init__(
        self,
        settings: ServerSettings,
        handler: CommandHandler,
        authenticator: Authenticator,
        clock: IReactorTime,
        tls_options: IOpenSSLServerConnectionCreator | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.authenticator = authenticator
        self.clock = clock
        self.tls_options = tls_options  # from mupdate.tls.server_options; None: no TLS
        self.sessions: set[MupdateServerProtocol] = set()
        self.counters = ServerCounters()

    def buildProtocol(self, addr: IAddress | None) -> MupdateServerProtocol:
        return MupdateServerProtocol(self)


@implementer(IHandshakeListener)
class MupdateServerProtocol(Protocol):
    log = Logger()

    def __init__(self, factory: MupdateServerFactory) -> None:
        self.factory = factory
        self.settings = factory.settings
        self.engine = ServerConnection(self.settings.limits, read_only=factory.handler.read_only)
        self.user: str | None = None  # the session's identity: authzid, or else authcid
        self.authcid: str | None = None  # the credential proven; authority is its (§5.1)
        self.peer = "?"
        self.output: OutputQueue | None = None
        self._busy = False
        self._pumping = False
        self._closing = False
        self._idle_call: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._mechanism: object = None
        self._auth_tag = b""
        self._greet_after_handshake = False
        self._final: Success | None = None  # final server data sent, awaiting the empty line
        self._failed_logins = 0
        self._login_call: IDelayedCall | None = None

    # -- connection lifecycle -------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.peer = str(transport.getPeer())
        self.output = OutputQueue(
            transport, self.settings.stream_buffer_max, self._overflow, self._pump
        )
        transport.registerProducer(self.output, True)  # type: ignore[attr-defined]
        if len(self.factory.sessions) >= self.settings.connections_max:
            self.factory.counters.refused_connections += 1
            self.log.warn(
                "refusing {peer}: {count} connections open",
                peer=self.peer,
                count=len(self.factory.sessions),
            )
            self._bye(texts.SERVER_UNABLE, trailing_nul=True)
            return
        self.factory.sessions.add(self)
        self.factory.counters.connections += 1
        self.log.debug("connection from {peer}", peer=self.peer)
        self._new_engine(transport)
        if self.engine.tls_active:
            self._greet_after_handshake = True  # implicit TLS: greet once we know the peer
        else:
            self._send(self._greeting())
        self._reset_idle()
        self._login_call = self.factory.clock.callLater(
            self.settings.login_timeout, self._login_timeout
        )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if reason is not None and reason.check(SSL.Error):
            self.log.warn(
                "TLS with {peer} failed: {reason}", peer=self.peer, reason=reason.getErrorMessage()
            )
        self._closing = True
        for call in (self._idle_call, self._abort_call, self._login_call):
            if call is not None and call.active():
                call.cancel()
        if self in self.factory.sessions:
            self.factory.sessions.discard(self)
            self.factory.handler.connection_closed(self)
        if self.output is not None:
            self.output.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._reset_idle()
        self.engine.receive_data(data)
        self._pump()

    # -- output -----------------------------------------------------------------------

    def _send(self, event: Response) -> None:
        assert self.output is not None
        self.output.write(self.engine.send(event))

    def send_reply(self, reply: Reply) -> None:
        assert self.output is not None
        for item in reply:
            if isinstance(item, Iterator):
                self.output.write_lazy(item)
            else:
                self.output.write(self.engine.send(item))

    def write_raw(self, data: bytes) -> None:
        """Pre-rendered bytes (stream lines shared by every streamer)."""
        if self.output is not None and not self._closing:
            self.output.write(data)

    def close_after_output(self) -> None:
        """Close once everything queued has been handed to the transport."""
        self._closing = True
        self._finish_close()

    def _finish_close(self) -> None:
        if self.output is not None and not self.output.idle:
            self.factory.clock.callLater(0.05, self._finish_close)
            return
        if self.transport is not None:
            self.transport.loseConnection()

    def _bye(self, text_: bytes, trailing_nul: bool = False) -> None:
        """``* BYE``, straight to the transport, then close; abort if the peer does not read."""
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        transport.write(self.engine.send(Bye(text_, trailing_nul=trailing_nul)))
        if self.output is not None:
            self.output.stopProducing()
        transport.loseConnection()
        self._abort_call = self.factory.clock.callLater(10, transport.abortConnection)  # type: ignore[attr-defined]

    def _overflow(self) -> None:
        self.log.warn(
            "closing {peer}: more than {count} bytes of output unread",
            peer=self.peer,
            count=self.settings.stream_buffer_max,
        )
        self._bye(texts.OUTPUT_OVERFLOW)

    def _reset_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self.settings.idle_timeout)
        else:
            self._idle_call = self.factory.clock.callLater(
                self.settings.idle_timeout, self._idle_timeout
            )

    def _idle_timeout(self) -> None:
        self.log.info("closing idle connection {peer}", peer=self.peer)
        self._bye(texts.IDLE_TOO_LONG)

    # -- the event pump -----------------------------------------------------------------

    def _pump(self) -> None:
        # Handlers often answer synchronously; their callbacks call _pump again. The flag
        # turns that re-entry into another turn of this loop instead of a deeper stack.
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump_events()
        finally:
            self._pumping = False

    def _pump_events(self) -> None:
        while not self._busy and not self._closing:
            if self.output is not None and self.output.paused:
                self._stop_reading()
                return
            try:
                event = self.engine.next_event()
            except PeerError as exc:
                self._flush_engine()
                if isinstance(exc.response, Bye):
                    self.log.warn(
                        "closing {peer}: {reason}", peer=self.peer, reason=text(exc.response.text)
                    )
                    self._bye(exc.response.text)
                    return
                self._send(exc.response)
                if exc.close:
                    self.close_after_output()
                    return
                continue
            self._flush_engine()
            if event is NEED_DATA or event is PAUSED:
                self._resume_reading()
                return
            self._dispatch(event)
        if self._busy:
            self._stop_reading()

    def _flush_engine(self) -> None:
        pending = self.engine.data_to_send()
        if pending and self.output is not None:
            self.output.write(pending)

    def _stop_reading(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _resume_reading(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _dispatch(self, event: Command | SaslResponse) -> None:
        if isinstance(event, SaslResponse):
            self._sasl_response(event)
            return
        name = type(event).__name__.upper()
        self.factory.counters.commands[name] = self.factory.counters.commands.get(name, 0) + 1
        match event:
            case Authenticate():
                self._authenticate(event)
            case Logout():
                self._send(Done(event.tag, Status.OK, texts.BYE_BYE))
                self.close_after_output()
            case Starttls():
                self._starttls(event)
            case Compress():
                self._send(Done(event.tag, Status.NO, texts.COMPRESS_UNAVAILABLE))
            case _:
                self._run(lambda: self.factory.handler.handle(event, self), event)

    def _run(self, call: Callable[[], Reply | Deferred[Reply]], event: Command) -> None:
        self._busy = True
        d = maybeDeferred(call)
        d.addCallbacks(self.send_reply, self._handler_failed, errbackArgs=(event,))
        d.addBoth(self._unbusy)

    def _handler_failed(self, failure: Failure, event: Command) -> None:
        self.log.failure(
            "command {command} from {peer} failed",
            failure,
            command=type(event).__name__,
            peer=self.peer,
        )
        self._send(Done(event.tag, Status.NO, texts.INTERNAL_ERROR))

    def _unbusy(self, _: object = None) -> None:
        self._busy = False
        if not self._closing:
            self._pump()

    # -- TLS (§3.2, §5.2) -----------------------------------------------------------------

    def _new_engine(self, transport: object) -> None:
        """The engine for this connection, knowing whether TLS is possible or already on."""
        tls_active = ISSLTransport.providedBy(transport)
        self.engine = ServerConnection(
            self.settings.limits,
            read_only=self.factory.handler.read_only,
            starttls_available=self.factory.tls_options is not None
            and (tls_active or ITLSTransport.providedBy(transport)),
            tls_active=tls_active,
        )

    def _starttls(self, event: Starttls) -> None:
        transport = self.transport
        options = self.factory.tls_options
        assert transport is not None
        assert options is not None  # the engine refuses STARTTLS without options
        assert self.output is not None
        if not self.output.idle:
            # The OK must leave in clear before the switch; a peer that pipelined STARTTLS
            # behind unread output cannot be served in order.
            self._bye(texts.TLS_INIT_ERROR)
            return
        transport.write(self.engine.send(Done(event.tag, Status.OK, texts.BEGIN_TLS, quoted=False)))
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
                f"certificate user {step.authcid!r} is not an admin",
                texts.AUTH_FAILED,
                user=step.authcid,
            )
            return
        self.user = step.authzid or step.authcid
        self.authcid = step.authcid  # authority follows the certificate's user (SASL part)
        self._mechanism = None
        self.engine.authentication_succeeded()
        self.log.info(
            "{user} logged in from {peer} with a client certificate", user=self.user, peer=self.peer
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
        scram = self.factory.authenticator.scram_mechanisms()  # every user has keys for
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
            role=self.factory.handler.role,
            starttls=self.factory.tls_options is not None and not self.engine.tls_active,
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
                f"mechanism {mech_name!r} not offered", texts.AUTH_MECHANISM_UNAVAILABLE
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
            case SaslFailure(reason=reason):
                self._auth_failed(reason, texts.AUTH_FAILED)
            case CheckPassword():
                self._check_password(step)
            case Success() if isinstance(self._mechanism, ExternalServer):  # TLS: EXTERNAL
                self._external_login(step)
            case Success():
                self._sasl_success(step)

    def _check_password(self, step: CheckPassword) -> None:
        if step.authcid not in self.settings.admins:
            self._auth_failed(
                f"{step.authcid!r} is not an admin", texts.AUTH_FAILED, user=step.authcid
            )
            return
        self._busy = True
        d = self.factory.authenticator.check(step.authcid, step.password)

        def checked(ok: bool) -> None:
            self._busy = False
            if not ok:
                self._auth_failed(
                    "wrong password or unknown user", texts.AUTH_FAILED, user=step.authcid
                )
                return
            self._logged_in(step.authcid, step.authzid)
            self._pump()

        def broken(failure: Failure) -> None:
            self._busy = False
            self.log.failure("password check failed for {user}", failure, user=step.authcid)
            self._auth_failed("password check error", texts.AUTH_FAILED, user=step.authcid)

        d.addCallbacks(checked, broken)

    # -- SCRAM: stored keys, channel binding, final data ---------------------------------

    def _scram_lookup(self, mechanism: str) -> ScramLookup:
        """Keys for ``mechanism``, for admins only: anyone else looks like an unknown user
        (the exchange runs to its end and fails at the proof, revealing nothing)."""
        authenticator = self.factory.authenticator

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
            self._auth_failed(
                f"{step.authcid!r} is not an admin", texts.AUTH_FAILED, user=step.authcid
            )
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
            "{user} logged in from {peer} as {authcid} with {mechanism}",
            user=self.user,
            peer=self.peer,
            authcid=authcid,
            mechanism=mechanism,
        )
        self._send(Done(self._auth_tag, Status.OK, texts.AUTHENTICATED))

    def _login_timeout(self) -> None:
        if self.user is None and not self._closing:
            self.log.info("closing {peer}: not logged in in time", peer=self.peer)
            self._bye(texts.IDLE_TOO_LONG)

    def _auth_failed(self, reason: str, reply: bytes, user: str | None = None) -> None:
        """After ``failedloginpause`` (Cyrus: 3 s), a tagged NO; Cyrus clients read the prefix."""
        self.factory.counters.failed_logins += 1
        self.log.warn(
            "failed login from {peer} as {user}: {reason}",
            peer=self.peer,
            user=user or "?",
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

        self.factory.clock.callLater(self.settings.failed_login_pause, answer)

"""The one server-side ``dataReceived``: feed the engine, run SASL, hand commands to a role.

How it works: bytes go into the sans-I/O ``ServerConnection``; events come out one at a
time. AUTHENTICATE is handled here for every role (§5.1: bare base64 lines, the failed-login
pause, admins only); every other command goes to the role's ``CommandHandler`` (master or
slave), which returns responses or a Deferred of them. While a Deferred is outstanding no
further event is taken (pipelined commands run strictly in order, §2.1) and the transport
stops reading, so a flooding client cannot grow our input buffer. Output goes through an
``OutputQueue`` so stream lines, dumps and replies leave in order and under back-pressure.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

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
from mupdate.sasl import PLAINTEXT_MECHANISMS, Challenge, CheckPassword, server_mechanism
from mupdate.sasl import Failure as SaslFailure

#: What a handler answers: response events, and pre-rendered chunks for large dumps.
Reply = Sequence[Response | Iterator[bytes]]


class Authenticator(TypingProtocol):
    """Checks a password off the reactor thread; the Deferred fires with True or False."""

    def check(self, user: str, password: bytes) -> Deferred[bool]: ...


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
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.authenticator = authenticator
        self.clock = clock
        self.sessions: set[MupdateServerProtocol] = set()
        self.counters = ServerCounters()

    def buildProtocol(self, addr: IAddress | None) -> MupdateServerProtocol:
        return MupdateServerProtocol(self)


class MupdateServerProtocol(Protocol):
    log = Logger()

    def __init__(self, factory: MupdateServerFactory) -> None:
        self.factory = factory
        self.settings = factory.settings
        self.engine = ServerConnection(self.settings.limits, read_only=factory.handler.read_only)
        self.user: str | None = None
        self.peer = "?"
        self.output: OutputQueue | None = None
        self._busy = False
        self._pumping = False
        self._closing = False
        self._idle_call: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._mechanism: object = None
        self._auth_tag = b""

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
        self._send(self._greeting())
        self._reset_idle()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        for call in (self._idle_call, self._abort_call):
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
                # TLS arrives with its own issue; until then STARTTLS is not offered (§5.2).
                self._send(Done(event.tag, Status.BAD, texts.UNRECOGNIZED_COMMAND))
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

    # -- SASL (§5.1) ----------------------------------------------------------------------

    def secure(self) -> bool:
        """Plaintext passwords are allowed here (TLS arrives with its own issue)."""
        if self.settings.allow_plaintext:
            return True
        return (
            self.settings.loopback_plaintext
            and self.transport is not None
            and is_loopback(self.transport.getPeer())
        )

    def offered_mechanisms(self) -> tuple[str, ...]:
        secure = self.secure()
        return tuple(m for m in self.settings.mechanisms if secure or m not in PLAINTEXT_MECHANISMS)

    def _greeting(self) -> Greeting:
        return Greeting(
            mechanisms=tuple(m.encode() for m in self.offered_mechanisms()),
            servername=self.settings.servername.encode(),
            implementation=texts.IMPLEMENTATION,
            version=__version__.encode(),
            role=self.factory.handler.role,
            starttls=False,
            compress=False,
        )

    def _authenticate(self, event: Authenticate) -> None:
        self._auth_tag = event.tag
        mech_name = event.mechanism.decode("ascii", "replace").upper()
        mechanism = server_mechanism(mech_name) if mech_name in self.offered_mechanisms() else None
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
        if event.line == b"*":
            self._mechanism = None
            self.engine.authentication_failed()
            self._send(Done(self._auth_tag, Status.NO, texts.CLIENT_CANCELED, quoted=False))
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

    def _sasl_step(self, step: Challenge | CheckPassword | SaslFailure) -> None:
        match step:
            case Challenge(data=data):
                self._send(SaslChallenge(data))
            case SaslFailure(reason=reason):
                self._auth_failed(reason, texts.AUTH_FAILED)
            case CheckPassword():
                self._check_password(step)

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
            self.user = step.authzid or step.authcid
            self._mechanism = None
            self.engine.authentication_succeeded()
            self.log.info("{user} logged in from {peer}", user=self.user, peer=self.peer)
            self._send(Done(self._auth_tag, Status.OK, texts.AUTHENTICATED))
            self._pump()

        def broken(failure: Failure) -> None:
            self._busy = False
            self.log.failure("password check failed for {user}", failure, user=step.authcid)
            self._auth_failed("password check error", texts.AUTH_FAILED, user=step.authcid)

        d.addCallbacks(checked, broken)

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
            self._pump()

        self.factory.clock.callLater(self.settings.failed_login_pause, answer)

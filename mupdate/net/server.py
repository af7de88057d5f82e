"""The one server-side ``dataReceived``: feed the engine, run SASL, hand commands to a role.

How it works: bytes go into the sans-I/O ``ServerConnection``; events come out one at a
time. AUTHENTICATE is handled here for every role (§5.1: bare base64 lines, the failed-login
pause, admins only); every other command goes to the role's ``CommandHandler`` (master or
slave), which returns responses or a Deferred of them. While a Deferred is outstanding no
further event is taken (pipelined commands run strictly in order, §2.1) and the transport
stops reading, so a flooding client cannot grow our input buffer. Output goes through an
``OutputQueue`` so stream lines, dumps and replies leave in order and under back-pressure.

TLS and SASL (§3.2, §5.1, §5.2) live in ``mupdate.net.server_login``, mixed in here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from mupdate.config.settings import ServerSettings
from mupdate.logs import address, text
from mupdate.metrics import Metrics
from mupdate.net.output import OutputQueue
from mupdate.net.server_login import ServerLogin
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
from mupdate.protocol.responses import Bye, Done, Response, Status
from mupdate.protocol.server import NEED_DATA, PAUSED, ServerConnection
from mupdate.sasl.scram import (
    ScramKeys,
)
from mupdate.sasl.steps import Success

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
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.authenticator = authenticator
        self.clock = clock
        self.tls_options = tls_options  # from mupdate.tls.server_options; None: no TLS
        self.sessions: set[MupdateServerProtocol] = set()
        self.counters = ServerCounters()
        self.metrics = metrics or Metrics()  # the process's; a fresh one in tests

    def buildProtocol(self, addr: IAddress | None) -> MupdateServerProtocol:
        return MupdateServerProtocol(self)


@implementer(IHandshakeListener)
class MupdateServerProtocol(ServerLogin, Protocol):
    log = Logger()

    def __init__(self, factory: MupdateServerFactory) -> None:
        self.factory = factory
        self.server_factory = factory  # typed for the login mixin
        self.settings = factory.settings
        self.engine = ServerConnection(self.settings.limits, read_only=factory.handler.read_only)
        self._trace = self.settings.log.level == "debug"
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
        self._command: tuple[str, float] | None = None  # awaiting its tagged answer: metrics

    # -- connection lifecycle -------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.peer = address(transport.getPeer())
        # Replies and stream lines are small and latency-bound: without TCP_NODELAY, Nagle
        # holds a stream line until the slave's delayed ACK (up to 40 ms on Linux).
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
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
        self.log.info("connection from {peer}", peer=self.peer)
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
        if self._greet_after_handshake:  # lost before the TLS handshake completed
            self.factory.metrics.tls_handshake_failed()
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
        self.answered(event)

    def send_reply(self, reply: Reply) -> None:
        output = self.output
        assert output is not None
        output.hold()  # a reply's lines leave in one send
        try:
            for item in reply:
                if isinstance(item, Iterator):
                    output.write_lazy(item)
                else:
                    output.write(self.engine.send(item))
                    self.answered(item)
        finally:
            output.release()

    def answered(self, event: Response) -> None:
        """A command's tagged answer went out: count its outcome and time (metrics)."""
        if self._command is not None and isinstance(event, Done):
            (name, started), self._command = self._command, None
            outcome = event.status.name.lower()
            self.factory.metrics.command(name, outcome, self.factory.clock.seconds() - started)

    def write_raw(self, data: bytes) -> None:
        """Pre-rendered bytes (stream lines shared by every streamer)."""
        if self.output is not None and not self._closing:
            self.output.write(data)

    def close_after_output(self) -> None:
        """Close once everything queued has been handed to the transport."""
        self._closing = True
        self._finish_close()

    def _finish_close(self) -> None:
        if self.output is not None:
            self.output.flush()
        if self.output is not None and not self.output.idle:
            self.factory.clock.callLater(0.05, self._finish_close)
            return
        transport = self.transport
        if transport is None:
            return
        if self.output is not None:
            # Under TLS a producer still registered holds the close back until the peer
            # closes first: a client waiting for our close after LOGOUT would hang.
            transport.unregisterProducer()  # type: ignore[attr-defined]
        transport.loseConnection()
        self._abort_call = self.factory.clock.callLater(10, transport.abortConnection)  # type: ignore[attr-defined]

    def _bye(self, text_: bytes, trailing_nul: bool = False) -> None:
        """``* BYE``, straight to the transport, then close; abort if the peer does not read."""
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        if self.output is not None:
            self.output.flush()  # what was answered before leaves before the BYE
        transport.write(self.engine.send(Bye(text_, trailing_nul=trailing_nul)))
        if self.output is not None:
            self.output.stopProducing()
            # A paused producer left registered would be resumed by the transport instead
            # of the close finishing: the BYE'd peer would linger until the abort timer.
            transport.unregisterProducer()  # type: ignore[attr-defined]
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
        output = self.output
        if output is not None:
            output.hold()  # the answers to one read leave in one send
        try:
            self._pump_events()
        finally:
            self._pumping = False
            if output is not None:
                output.release()
                if output.paused and not self._closing:
                    self._stop_reading()  # the transport paused us as the held bytes left

    def _pump_events(self) -> None:
        while not self._busy and not self._closing:
            if self.output is not None and self.output.paused:
                self._stop_reading()
                return
            try:
                event = self.engine.next_event()
            except PeerError as exc:
                self._flush_engine()
                kind = exc.response.status if isinstance(exc.response, Done) else None
                self.factory.metrics.protocol_error(kind.name.lower() if kind else "bye")
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
            self._sasl_response(event)  # never traced: it carries SASL data
            return
        name = type(event).__name__.upper()
        # The wire trace names the command, never its SASL data (style.md §9). Made only at
        # debug level: the log chain drops a debug event before any other work (logs._Wanted),
        # but the Logger call itself still cost about 3% of write throughput, per command.
        if self._trace:
            self.log.debug(
                "{peer} sent {tag} {command} {mailbox}",
                peer=self.peer,
                tag=text(event.tag),
                command=name,
                mailbox=text(getattr(event, "name", None)),
            )
        self.factory.counters.commands[name] = self.factory.counters.commands.get(name, 0) + 1
        self._command = (name, self.factory.clock.seconds())
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
        try:
            reply = call()
        except Exception:
            reply = fail()
        if isinstance(reply, Deferred):
            reply.addCallbacks(self.send_reply, self._handler_failed, errbackArgs=(event,))
            reply.addBoth(self._unbusy)
            return
        try:  # a reply at once (FIND, LIST, NOOP): no Deferred round trip per command
            self.send_reply(reply)
        finally:
            self._unbusy()

    def _handler_failed(self, failure: Failure, event: Command) -> None:
        self.log.failure(
            "command {tag} {command} from {peer} failed",
            failure,
            level=LogLevel.error,
            tag=text(event.tag),
            command=type(event).__name__.upper(),
            peer=self.peer,
        )
        self._send(Done(event.tag, Status.NO, texts.INTERNAL_ERROR))

    def _unbusy(self, _: object = None) -> None:
        self._busy = False
        if not self._closing:
            self._pump()

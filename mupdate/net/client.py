"""The shared client ``Protocol`` for the slave's uplink and the operator tools (protocol doc
§3.3, §5.1, §6.2, §8, §9.1, §9.4).

Thin glue around the sans-I/O ``ClientConnection``: it writes commands, routes the engine's
events to the Deferreds waiting for them and turns NO, BAD and BYE into typed exceptions
(style.md §7). It parses nothing and takes its clock as an argument (no global reactor).
"""

# How it works
# ------------
# dataReceived feeds the engine and drains next_event() until NEED_DATA or PAUSED. Each
# event goes to one of four places:
#
#   banner     Capability lines are collected; ServerReady fires ``greeted`` with ServerInfo.
#   STARTTLS   ``starttls(options)`` runs alone on the wire, as AUTHENTICATE does: S01 STARTTLS,
#              the reply read by prefix (§5.2); on OK the transport starts TLS, what was
#              learnt from the banner is forgotten, and the banner re-sent under TLS (§3.2)
#              fires the call's Deferred. A failed handshake or a refused certificate ends
#              the connection: every waiter fails with TlsFailed.
#   SASL       an AUTHENTICATE runs alone on the wire: commands issued meanwhile are held and
#              written after its tagged reply. Each SaslChallenge is answered through the
#              mechanism as a bare base64 line; an empty answer is an empty line, which is how
#              final server data (SCRAM v=...) is acknowledged (§5.1).
#   commands   a FIFO of written commands. The server answers strictly in order (§2.1), so
#              only the head may receive a response: data lines with its tag are collected
#              and its Done completes it (OK -> CommandResult, NO/BAD -> CommandFailed).
#   stream     after ``U01 OK "streaming starts"`` every data line carrying the UPDATE's tag
#              goes to on_change in arrival order, even while a NOOP is the head (§6.1, §8.3).
#
# Anything else - a line no queue expects, a DELETE outside the stream, an engine
# BadResponse such as an unquoted status text - is a ProtocolViolation: everything pending
# fails and the connection is dropped (Cyrus clients log out and reconnect, §6.2, §9.4).
# ``* BYE`` fails everything with ServerBye; a lost connection fails the rest with
# ConnectionClosed.
#
# Cyrus applies whatever part of the UPDATE dump arrived when it ends in NO, BAD or BYE
# (§9.2), which empties a slave on a hiccup. We discard such a dump whole: the UPDATE's
# Deferred fails and nothing reaches the caller (design.md, "Resync").

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mupdate.logs import PROGRESS_EVERY, address, milliseconds, text
from mupdate.net.client_results import (
    AuthenticationFailed,
    CommandFailed,
    CommandResult,
    ConnectionClosed,
    DataLine,
    MupdateError,
    ProtocolViolation,
    ServerBye,
    ServerInfo,
    TlsFailed,
)
from mupdate.protocol import texts
from mupdate.protocol.buffer import Sentinel
from mupdate.protocol.client import Capability, ClientConnection, ServerReady
from mupdate.protocol.commands import (
    Authenticate,
    Command,
    Compress,
    Find,
    List,
    Logout,
    Noop,
    SaslResponse,
    Starttls,
    Update,
)
from mupdate.protocol.errors import BadResponse, LocalProtocolError
from mupdate.protocol.limits import ProtocolLimits
from mupdate.protocol.responses import (
    Bye,
    DeleteLine,
    Done,
    MailboxLine,
    ReserveLine,
    SaslChallenge,
    Status,
)
from mupdate.sasl.mechanisms import ClientMechanism, client_mechanism
from mupdate.sasl.scram import tls_server_end_point

__all__ = [
    "AuthenticationFailed",
    "CommandFailed",
    "CommandResult",
    "ConnectionClosed",
    "MupdateClientProtocol",
    "MupdateError",
    "ProtocolViolation",
    "ServerBye",
    "ServerInfo",
    "TlsFailed",
]

# Cyrus's fixed tags (§2.2).
AUTH_TAG = b"A01"
UPDATE_TAG = b"U01"
STARTTLS_TAG = b"S01"
LOGOUT_TAG = b"Q01"

Entry = MailboxLine | ReserveLine
Entries = list[Entry]  # the class's ``list`` method shadows the builtin in its body


class _Kind(Enum):
    COMMAND = "command"
    UPDATE = "update"
    LOGOUT = "logout"


@dataclass(eq=False)
class _Pending:
    tag: bytes
    wire: bytes
    kind: _Kind
    deferred: Deferred[CommandResult] = field(default_factory=Deferred)
    data: list[DataLine] = field(default_factory=list)
    on_change: Callable[[DataLine], None] | None = None
    sent_at: float = 0.0  # clock seconds when written (progress of large dumps)


@dataclass(eq=False)
class _Auth:
    pick: Callable[[ServerInfo], ClientMechanism]
    deferred: Deferred[str] = field(default_factory=Deferred)
    mechanism: ClientMechanism | None = None  # None until the banner has been read


@dataclass(eq=False)
class _StartTls:
    options: IOpenSSLClientConnectionCreator  # from mupdate.tls.client_options
    deferred: Deferred[ServerInfo] = field(default_factory=Deferred)
    sent: bool = False
    negotiating: bool = False  # OK received; waiting for the banner under TLS


def _entries(result: CommandResult) -> list[Entry]:
    # Routing never lets a DeleteLine into a reply (it is a violation there); this narrows.
    return [line for line in result.data if not isinstance(line, DeleteLine)]


class MupdateClientProtocol(Protocol):
    """One client connection; see the comment at the top of the module."""

    log = Logger()
    close_timeout: float = 10.0  # seconds before a close we asked for becomes an abort
    progress_every: int = PROGRESS_EVERY  # a LIST or UPDATE dump logs every this many entries

    def __init__(self, clock: IReactorTime, limits: ProtocolLimits = ProtocolLimits()) -> None:  # noqa: B008
        self.clock = clock
        self.engine = ClientConnection(limits)
        self.greeted: Deferred[ServerInfo] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.info: ServerInfo | None = None
        self.peer = "?"
        self._capabilities: dict[bytes, tuple[bytes, ...]] = {}
        self._pending: deque[_Pending] = deque()
        self._held: list[_Pending] = []
        self._auth: _Auth | None = None
        self._starttls: _StartTls | None = None
        self._stream: _Pending | None = None
        self._tags: dict[bytes, int] = {}
        self._closing = False
        self._lost = False
        self._abort_call: IDelayedCall | None = None
        self._close_waiters: list[Deferred[None]] = []

    # -- connection lifecycle -------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = address(self.transport.getPeer())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = self._closing = True
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if reason.check(SSL.Error, VerificationError, CertificateError):
            self._fail_all(TlsFailed(f"TLS with {self.peer} failed: {reason.getErrorMessage()}"))
        else:
            self._fail_all(ConnectionClosed(reason.getErrorMessage()))
        self.closed.callback(None)
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def close(self) -> Deferred[None]:
        """Drop the connection without LOGOUT; fires once it is gone."""
        self._drop()
        return self._when_closed()

    def _when_closed(self) -> Deferred[None]:
        if self._lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        return waiter

    def _drop(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()
            self._abort_call = self.clock.callLater(self.close_timeout, self._abort)

    def _abort(self) -> None:
        if not self._lost and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport

    # -- commands -------------------------------------------------------------------------

    def next_tag(self, prefix: bytes = b"X") -> bytes:
        """``X0``, ``X1``, ... : one counter per prefix and connection, as Cyrus (§2.2)."""
        number = self._tags.get(prefix, 0)
        self._tags[prefix] = number + 1
        return prefix + b"%d" % number

    def command(self, command: Command) -> Deferred[CommandResult]:
        """Send any command but AUTHENTICATE, STARTTLS and COMPRESS (they switch modes); an
        empty tag is replaced by ``next_tag()``."""
        if isinstance(command, Authenticate | Starttls | Compress):
            return fail(LocalProtocolError(f"{type(command).__name__} needs its own method"))
        if not command.tag:
            command = replace(command, tag=self.next_tag())
        return self._submit(command, _Kind.COMMAND)

    def find(self, name: bytes) -> Deferred[Entry | None]:
        d = self.command(Find(self.next_tag(), name))
        return d.addCallback(self._one_entry)

    def list(self, prefix: bytes | None = None) -> Deferred[Entries]:
        return self.command(List(self.next_tag(), prefix)).addCallback(_entries)

    def noop(self, prefix: bytes = b"X") -> Deferred[None]:
        """``prefix`` lets the uplink tag its pings ``N<n>`` as Cyrus slaves do (§9.4)."""
        return self.command(Noop(self.next_tag(prefix))).addCallback(lambda _: None)

    def update(
        self, on_change: Callable[[DataLine], None], hosts: Sequence[bytes] = ()
    ) -> Deferred[Entries]:
        """``U01 UPDATE``: fires with the whole dump at ``OK "streaming starts"``; after that
        each stream line goes to ``on_change``, whose failure drops the connection (the
        caller's copy of the list can no longer be trusted)."""
        queued = [*self._pending, *self._held]
        if self._stream is not None or any(p.kind is _Kind.UPDATE for p in queued):
            return fail(LocalProtocolError("one UPDATE per connection"))
        d = self._submit(Update(UPDATE_TAG, tuple(hosts)), _Kind.UPDATE, on_change)
        return d.addCallback(_entries)

    def logout(self) -> Deferred[None]:
        """``Q01 LOGOUT``; fires once the connection is gone, whatever the server said."""
        d = self._submit(Logout(LOGOUT_TAG), _Kind.LOGOUT)

        def gone(result: CommandResult | Failure) -> Deferred[None] | Failure:
            if isinstance(result, Failure) and not result.check(ConnectionClosed, ServerBye):
                return result
            return self._when_closed()

        return d.addBoth(gone)

    def _submit(
        self, command: Command, kind: _Kind, on_change: Callable[[DataLine], None] | None = None
    ) -> Deferred[CommandResult]:
        if self._closing or self.transport is None:
            return fail(ConnectionClosed("not connected"))
        try:
            wire = self.engine.send(command)
        except LocalProtocolError as exc:
            return fail(exc)
        pending = _Pending(command.tag, wire, kind, on_change=on_change)
        if self._auth is not None:
            self._held.append(pending)
        else:
            self._write(pending)
        return pending.deferred

    def _write(self, pending: _Pending) -> None:
        assert self.transport is not None
        pending.sent_at = self.clock.seconds()
        self._pending.append(pending)
        self.transport.write(pending.wire)

    def _one_entry(self, result: CommandResult) -> Entry | None:
        entries = _entries(result)
        if len(entries) > 1:
            reason = f"FIND {text(result.tag)} got {len(entries)} entries"
            self._violation(reason)
            raise ProtocolViolation(reason)
        return entries[0] if entries else None

    # -- STARTTLS (§3.2, §5.2) ------------------------------------------------------------

    @property
    def tls_active(self) -> bool:
        """Under TLS: after STARTTLS, or from the first byte (implicit TLS)."""
        return self.engine.tls_active or ISSLTransport.providedBy(self.transport)

    def starttls(self, options: IOpenSSLClientConnectionCreator) -> Deferred[ServerInfo]:
        """``S01 STARTTLS``, then TLS with ``options`` (from ``mupdate.tls.client_options``);
        fires with the banner the server sends again under TLS. NO or BAD fail with
        CommandFailed and leave the session in clear; the caller decides what that means.
        Waits for the first banner if need be; nothing else may be in flight."""
        if self._closing or self.transport is None:
            return fail(ConnectionClosed("not connected"))
        if self.tls_active:
            return fail(LocalProtocolError("already under TLS"))
        if not ITLSTransport.providedBy(self.transport):
            return fail(LocalProtocolError("this transport cannot start TLS"))
        busy = self._auth is not None or self._starttls is not None or self._stream is not None
        if busy or self._pending or self._held:
            return fail(LocalProtocolError("STARTTLS must be the only command in flight"))
        self._starttls = tls = _StartTls(options)
        if self.info is not None:
            self._send_starttls()
        return tls.deferred

    def _send_starttls(self) -> None:
        tls = self._starttls
        assert tls is not None
        assert self.transport is not None
        tls.sent = True
        self.transport.write(self.engine.send(Starttls(STARTTLS_TAG)))

    def _starttls_reply(self, done: Done) -> None:
        tls = self._starttls
        assert tls is not None
        if done.status is not Status.OK:  # the engine is back in READY, in clear
            self._starttls = None
            tls.deferred.errback(CommandFailed(done.status.value, done.text, done.tag))
            return
        # The engine dropped whatever followed the OK in clear and waits (PAUSED).
        tls.negotiating = True
        self._capabilities = {}
        self.info = None
        ITLSTransport(self.transport).startTLS(tls.options)
        self.engine.tls_started()
        self.log.debug("starting TLS with {peer}", peer=self.peer)

    # -- AUTHENTICATE (§5.1) --------------------------------------------------------------

    def authenticate(
        self,
        authcid: str,
        password: str,
        authzid: str = "",
        mechanisms: Sequence[str] | None = None,
    ) -> Deferred[str]:
        """Log in with the best mechanism we support that the server offers (and that
        ``mechanisms`` allows); fires with its name. Waits for the banner if need be."""
        allowed = None if mechanisms is None else {m.upper() for m in mechanisms}

        def pick(info: ServerInfo) -> ClientMechanism:
            usable = tuple(m for m in info.mechanisms if allowed is None or m in allowed)
            binding = self.channel_binding(info)
            mechanism = client_mechanism(usable, authcid, password, authzid, binding)
            if mechanism is None:
                offered = " ".join(info.mechanisms) or "none"
                raise AuthenticationFailed(f"no usable mechanism (offered: {offered})".encode())
            return mechanism

        return self._authenticate(pick)

    def channel_binding(self, info: ServerInfo) -> bytes | None:
        """tls-server-end-point data (RFC 5929) for SCRAM ``-PLUS``: a hash of the server's
        certificate. Only under TLS and only with a server of ours: Cyrus binds SCRAM to
        ``tls-unique`` (its ``saslprops_set_tls``), so ``-PLUS`` against Cyrus would fail
        where plain SCRAM works."""
        if not self.tls_active or self.transport is None:
            return None
        if info.ready.parts[2:3] != (texts.IMPLEMENTATION,):
            return None
        try:
            certificate = self.transport.getPeerCertificate()  # type: ignore[attr-defined]
            der = certificate.to_cryptography().public_bytes(Encoding.DER)
        except Exception:  # no certificate to be had: no binding, plain SCRAM
            return None
        return tls_server_end_point(der)

    def authenticate_with(self, mechanism: ClientMechanism) -> Deferred[str]:
        """Log in with a mechanism chosen by the caller (e.g. one outside ``client_mechanism``)."""
        return self._authenticate(lambda info: mechanism)

    def _authenticate(self, pick: Callable[[ServerInfo], ClientMechanism]) -> Deferred[str]:
        if self._closing or self.transport is None:
            return fail(ConnectionClosed("not connected"))
        if self._auth is not None or self._pending or self._held or self._stream is not None:
            # The engine reads the SASL exchange with its own parser (§6.2): nothing else
            # may be in flight.
            return fail(LocalProtocolError("AUTHENTICATE must be the only command in flight"))
        self._auth = auth = _Auth(pick)
        if self.info is not None:
            self._start_sasl()
        return auth.deferred

    def _start_sasl(self) -> None:
        auth, info = self._auth, self.info
        assert auth is not None
        assert info is not None
        assert self.transport is not None
        try:
            mechanism = auth.pick(info)
        except AuthenticationFailed as exc:
            self._auth_finished(exc)
            return
        auth.mechanism = mechanism
        initial = mechanism.initial()
        ir = None if initial is None else base64.b64encode(initial) or b"="
        self.transport.write(self.engine.send(Authenticate(AUTH_TAG, mechanism.name.encode(), ir)))

    def _sasl_challenge(self, challenge: bytes) -> None:
        auth = self._auth  # the engine reads challenges only after our AUTHENTICATE
        assert auth is not None
        assert auth.mechanism is not None
        try:
            line = base64.b64encode(auth.mechanism.respond(challenge))
        except Exception:
            self.log.failure(
                "SASL step failed at {peer}; cancelling the login",
                level=LogLevel.error,
                peer=self.peer,
            )
            line = b"*"  # the server answers NO (§5.1)
        assert self.transport is not None
        self.transport.write(self.engine.send(SaslResponse(line)))

    def _auth_finished(self, outcome: str | AuthenticationFailed) -> None:
        auth = self._auth
        assert auth is not None
        self._auth = None
        held, self._held = self._held, []
        for pending in held:  # before the caller hears, so the wire keeps call order
            self._write(pending)
        if isinstance(outcome, AuthenticationFailed):
            self.log.warn("login to {peer} failed: {reason}", peer=self.peer, reason=str(outcome))
            auth.deferred.errback(outcome)
        else:
            auth.deferred.callback(outcome)

    # -- events ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.engine.receive_data(data)
        while not self._closing:
            try:
                event = self.engine.next_event()
            except BadResponse as exc:
                self._violation(exc.reason)
                return
            if isinstance(event, Sentinel):
                return
            match event:
                case Capability():
                    self._capabilities[event.name] = event.args
                case ServerReady():
                    self._greeting_done(event)
                case SaslChallenge():
                    self._sasl_challenge(event.data)
                case Done():
                    self._done(event)
                case MailboxLine() | ReserveLine() | DeleteLine():
                    self._data_line(event)
                case Bye():
                    self.log.info(
                        "{peer} said BYE: {reason}", peer=self.peer, reason=text(event.text)
                    )
                    self._fail_all(ServerBye(event.text))
                    self._drop()

    def _greeting_done(self, ready: ServerReady) -> None:
        offered = self._capabilities.get(b"AUTH", ())
        mechanisms = tuple(m.decode("ascii", "replace").upper() for m in offered)
        self.info = ServerInfo(dict(self._capabilities), ready, mechanisms)
        if self._auth is not None:
            self._start_sasl()
        tls = self._starttls
        if tls is not None:  # STARTTLS: the first banner lets it go out, the second ends it
            if not tls.sent:
                self._send_starttls()
            elif tls.negotiating:  # last: its caller may AUTHENTICATE at once
                self._starttls = None
                tls.deferred.callback(self.info)
        if not self.greeted.called:
            self.greeted.callback(self.info)

    def _done(self, done: Done) -> None:
        if self._starttls is not None and self._starttls.sent and not self._starttls.negotiating:
            self._starttls_reply(done)  # the engine reads only S01's reply in this mode
            return
        auth = self._auth
        if auth is not None and auth.mechanism is not None:
            # The engine leaves AUTHENTICATING only on the AUTHENTICATE's own tag.
            if done.status is Status.OK:
                self._auth_finished(auth.mechanism.name)
            else:
                self._auth_finished(AuthenticationFailed(done.text))
            return
        head = self._pending[0] if self._pending else None
        if head is None or done.tag != head.tag:
            word = done.status.value.decode()
            self._violation(f"{text(done.tag)} {word} {text(done.text)} answers no command")
            return
        self._pending.popleft()
        if done.status is Status.OK:
            if head.kind is _Kind.UPDATE:
                self._stream = head
            head.deferred.callback(CommandResult(head.tag, head.data, done))
        else:
            head.deferred.errback(CommandFailed(done.status.value, done.text, head.tag))
        if head.kind is _Kind.LOGOUT:
            self._drop()

    def _data_line(self, line: DataLine) -> None:
        stream = self._stream
        if stream is not None and stream.on_change is not None and line.tag == stream.tag:
            try:
                stream.on_change(line)
            except Exception:
                self.log.failure(
                    "applying a change to {mailbox} failed; dropping {peer}",
                    level=LogLevel.error,
                    mailbox=text(line.name),
                    peer=self.peer,
                )
                self._drop()
            return
        head = self._pending[0] if self._pending else None
        if head is not None and line.tag == head.tag:
            if isinstance(line, DeleteLine):  # RFC 3656: no DELETE before the stream starts
                self._violation(f"DELETE {text(line.name)} outside a stream")
                return
            head.data.append(line)
            if len(head.data) % self.progress_every == 0:
                self.log.info(
                    "received {count} entries from {peer} for {tag} in {duration_ms} ms",
                    count=len(head.data),
                    peer=self.peer,
                    tag=text(head.tag),
                    duration_ms=milliseconds(self.clock.seconds() - head.sent_at),
                )
            return
        word = type(line).__name__.removesuffix("Line").upper()
        self._violation(f"{word} {text(line.name)} tagged {text(line.tag)} answers no command")

    def _violation(self, reason: str) -> None:
        self.log.warn("protocol violation by {peer}: {reason}", peer=self.peer, reason=reason)
        self._fail_all(ProtocolViolation(reason))
        self._drop()

    def _fail_all(self, exc: MupdateError) -> None:
        """Fail every waiter at once: after BYE, a violation or a loss nothing more comes."""
        self._stream = None
        if not self.greeted.called:
            self.greeted.errback(exc)
        auth, self._auth = self._auth, None
        tls, self._starttls = self._starttls, None
        if tls is not None:
            tls.deferred.errback(exc)
        pending = [*self._pending, *self._held]
        self._pending.clear()
        self._held = []
        if auth is not None:
            auth.deferred.errback(exc)
        for item in pending:
            item.deferred.errback(exc)

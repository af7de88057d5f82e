"""The slave's connection to its master: login, UPDATE, resync, stream, ping, retry (§9).

How it works: a Twisted ``ClientService`` keeps one connection to the master. Its prepare
hook runs the whole handshake top to bottom (greeting, SASL, ``U01 UPDATE``, the dump,
the resync) and only a connection that got that far counts as connected; anything else
(NO, BAD, ``* BYE``, a dropped connection, a held brake) discards the dump whole and the
service retries after ``mupdate_retry_delay`` plus jitter, growing to ``retry_max`` (the
longest wait, jitter included) while failures repeat. Cyrus applies a partial dump and
wipes itself (case 61); Cyrus divides by zero for a delay of 0 or 1 (§9.4); both are
impossible here. Once streaming, a NOOP is sent every ``retry_delay`` seconds and must be
answered within the same time, or the connection is dropped, so a master that stops
answering without closing is noticed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.config.settings import SlaveSettings
from mupdate.logs import milliseconds
from mupdate.net.client import ConnectionClosed, MupdateClientProtocol
from mupdate.net.login import secure_then_login
from mupdate.net.server_login import is_loopback
from mupdate.slave.heal import Healer
from mupdate.slave.replica import BrakeHeld, Replica, StreamLine

T = TypeVar("T")


def retry_policy(
    base: float, cap: float, jitter: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """First retry after ``base``, then doubling from at least 1 s; each wait plus 0-50 %
    jitter (``jitter()`` in [0, 1)), and never longer than ``cap``.

    The cap bounds the wait with its jitter (``mupdate_retry_max`` is what an operator
    plans outages by), so waits that reach it lose their jitter: by then slaves that
    failed together have drifted apart through the jittered waits before.
    """

    def delay(failed_attempts: int) -> float:
        doubled = max(base, 1.0) * 2 ** min(max(failed_attempts, 1) - 1, 16)
        wait = base if failed_attempts <= 1 else doubled
        return min(cap, wait * (1 + jitter() / 2))

    return delay


class _ClientFactory(Factory):
    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def buildProtocol(self, addr: Any) -> MupdateClientProtocol:
        protocol = MupdateClientProtocol(self.clock)
        protocol.factory = self
        return protocol


class Uplink:
    log = Logger()

    def __init__(
        self,
        settings: SlaveSettings,
        replica: Replica,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        healer: Healer | None = None,
        on_synced: Callable[[], None] = lambda: None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.replica = replica
        self.clock = clock
        self.healer = healer
        self.on_synced = on_synced
        self.connected = False
        self.connections = 0
        self.failures = 0  # sessions failed in a row; drives the backoff
        self._resync_lock = DeferredLock()
        self._ping_call: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._ping_interval = settings.retry_delay if settings.retry_delay >= 1 else 1.0
        self._policy = retry_policy(settings.retry_delay, settings.retry_max, jitter)
        self._protocol: MupdateClientProtocol | None = None  # while streaming
        self._confirm_call: IDelayedCall | None = None
        replica.confirm_later = self.resync_in
        replica.resync_now = self._resync_now
        self._kick_waiters: list[Deferred[bool]] = []
        self._kick_in_flight = False
        self.kick_round_trips = 0
        self.login_timeout = max(10.0, settings.retry_delay)
        self.dump_timeout = max(120.0, 10 * settings.retry_delay)
        self.service = ClientService(
            endpoint,
            _ClientFactory(clock),
            retryPolicy=self._retry_delay,
            clock=clock,
            prepareConnection=self._prepare,  # type: ignore[arg-type]  # gets a proxy of our protocol
        )

    def _retry_delay(self, failed_connects: int) -> float:
        # Twisted counts failed connects; a session that connected but failed later
        # (login, dump, brake) is counted here, so both kinds of failure back off.
        return self._policy(max(failed_connects, self.failures))

    # -- one connection, top to bottom ---------------------------------------------------

    def _prepare(self, protocol: MupdateClientProtocol) -> Deferred[None]:
        # The hook never fails: ClientService (Twisted 26) has no transition for a
        # connection that closes after its prepare hook failed. A failed session closes
        # its connection instead, and the service retries as for any lost connection.
        # Nor has it one for a connection lost while the hook runs: a loss while the
        # session waits on the store (the resync's transaction) must end the hook at once,
        # before ClientService hears of it (protocol.closed fires first).
        d = Deferred.fromCoroutine(self._session(protocol))
        d.addErrback(self._session_failed, protocol)
        hook: Deferred[None] = Deferred()

        def settle(_: object) -> None:
            if not hook.called:
                hook.callback(None)

        d.addBoth(settle)
        protocol.closed.addBoth(settle)
        return hook

    def _bounded(self, d: Deferred[T], seconds: float) -> Deferred[T]:
        """A master that accepts but never answers must not hang the uplink before
        pings start (Cyrus: client_timeout during login, nothing after)."""
        return d.addTimeout(seconds, self.clock)

    async def _session(self, protocol: MupdateClientProtocol) -> None:
        master = self.settings.mupdate_server
        host, _ = self.settings.master_address
        assert protocol.transport is not None
        mechanism = await self._bounded(
            # STARTTLS and plaintext policy (mupdate_starttls, §3.3), then AUTHENTICATE
            secure_then_login(
                protocol,
                self.settings.client_tls,
                host,
                is_loopback(protocol.transport.getPeer()),
                self.settings.authname,
                self.settings.password,
                self.settings.username,
            ),
            self.login_timeout,
        )
        self.log.info(
            "logged in to master {server} as {user} with {mechanism} {state}",
            server=master,
            user=self.settings.authname,
            mechanism=mechanism,
            state="over TLS" if protocol.tls_active else "without TLS",
        )
        # A session whose connection died while its resync was committing may still be
        # finishing when the next one starts: one resync at a time, or the later one's
        # held stream lines could be applied under the earlier one's transaction.
        await self._resync_lock.acquire()
        try:
            self.replica.begin_resync()
            started = self.clock.seconds()
            try:
                dump = await self._bounded(protocol.update(self._stream_line), self.dump_timeout)
                self.log.info(
                    "master {server} sent {count} entries in {duration_ms} ms; reconciling",
                    server=master,
                    count=len(dump),
                    duration_ms=milliseconds(self.clock.seconds() - started),
                )
                plan = await self.replica.resync(dump)
            except BaseException:
                self.replica.abandon_resync()
                raise
            self.replica.finish_resync(plan)
        finally:
            self._resync_lock.release()
        self.failures = 0
        self.connected = True
        self.connections += 1
        self._protocol = protocol
        self._schedule_ping(protocol)
        self._kick_round_trip()  # kicks that waited for the master
        protocol.closed.addBoth(self._lost)  # cancels the ping if the master has gone already
        self.on_synced()
        if self.healer is not None and plan.heal:
            self.healer.heal(plan.heal)

    def _stream_line(self, line: StreamLine) -> None:
        self.replica.apply_line(line)

    def _session_failed(self, failure: Failure, protocol: MupdateClientProtocol) -> None:
        self.failures += 1
        if failure.check(BrakeHeld):
            self.log.critical(
                "resync held by the brake; keeping the last-known-good copy and retrying later"
            )
            plan = failure.value.plan  # type: ignore[union-attr]
            if self.healer is not None and plan.heal:
                self.healer.heal(plan.heal)
        else:
            self.log.warn(
                "connection to master {server} failed: {reason}",
                server=self.settings.mupdate_server,
                reason=failure.getErrorMessage() or repr(failure.value),
            )
        # Through the protocol: it stops reading, and aborts a peer that never lets go
        # (under TLS, loseConnection waits for the master's close_notify).
        protocol.close()

    def _lost(self, _: object) -> None:
        self.connected = False
        self._protocol = None
        self._cancel_ping()
        self.log.warn(
            "lost the connection to master {server}; resync on reconnect",
            server=self.settings.mupdate_server,
        )

    # -- pings (§9.4) ------------------------------------------------------------------

    def _schedule_ping(self, protocol: MupdateClientProtocol) -> None:
        self._ping_call = self.clock.callLater(self._ping_interval, self._ping, protocol)

    def _ping(self, protocol: MupdateClientProtocol) -> None:
        self._ping_call = None
        self._deadline = self.clock.callLater(self._ping_interval, self._ping_timed_out, protocol)
        d = protocol.noop(prefix=b"N")  # N0, N1, ... as Cyrus slaves ping

        def answered(_: object) -> None:
            if self._deadline is not None and self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
            # Every change sent before this OK has arrived (§8.3): the copy is current.
            self.replica.counters.last_sync = self.clock.seconds()
            if self.connected:
                self._schedule_ping(protocol)

        def refused(failure: Failure) -> None:
            if failure.check(ConnectionClosed):
                return  # _lost has it in hand
            self.log.warn(
                "master answered NOOP with {reason}; reconnecting", reason=failure.getErrorMessage()
            )
            self._drop(protocol)

        d.addCallbacks(answered, refused)

    def _ping_timed_out(self, protocol: MupdateClientProtocol) -> None:
        self._deadline = None
        self.log.warn(
            "master {server} did not answer NOOP within {duration_ms} ms; reconnecting",
            server=self.settings.mupdate_server,
            duration_ms=int(self._ping_interval * 1000),
        )
        self._drop(protocol)

    def _drop(self, protocol: MupdateClientProtocol) -> None:
        self._cancel_ping()
        if protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancel_ping(self) -> None:
        for call in (self._ping_call, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._ping_call = self._deadline = None

    # -- kicks (§9.6) ------------------------------------------------------------------

    def kick(self) -> Deferred[bool]:
        """Fires True once a NOOP sent after this call was answered and every change that
        came before its OK is in the store; False after ``mupdate_kick_timeout``."""
        d: Deferred[bool] = Deferred()
        d.addTimeout(self.settings.kick_timeout, self.clock, onTimeoutCancel=lambda *_: False)
        self._kick_waiters.append(d)
        self._kick_round_trip()
        return d

    def _kick_round_trip(self) -> None:
        protocol = self._protocol
        if self._kick_in_flight or protocol is None or not self.connected:
            return
        waiters = [d for d in self._kick_waiters if not d.called]
        self._kick_waiters = []
        if not waiters:
            return
        self._kick_in_flight = True
        self.kick_round_trips += 1
        d = protocol.noop(prefix=b"N")
        d.addCallback(lambda _: self.replica.barrier())

        def done(result: object) -> None:
            self._kick_in_flight = False
            if isinstance(result, Failure):
                # The master went away: the kicks wait for the next session (or time out),
                # whose start sends their NOOP. Not now: this connection may not be known
                # as lost yet, and a NOOP on it would fail at once, here, without end.
                self._kick_waiters = waiters + self._kick_waiters
                return
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(True)
            self._kick_round_trip()

        d.addBoth(done)

    # -- confirming resyncs --------------------------------------------------------------

    def resync_in(self, seconds: float) -> None:
        """Resync again in ``seconds``: the connection is closed and made anew (§9.2)."""
        if self._confirm_call is not None and self._confirm_call.active():
            return
        self._confirm_call = self.clock.callLater(seconds, self._confirm)

    def _resync_now(self) -> None:
        """Drop the connection so that the next one resyncs: ``close`` stops reading at
        once and aborts after ``close_timeout`` a master that does not let go."""
        protocol = self._protocol
        if protocol is not None:
            protocol.close()

    def _confirm(self) -> None:
        self._confirm_call = None
        protocol = self._protocol
        if protocol is not None:
            self.log.info("resyncing to confirm what the master no longer lists")
            protocol.close()

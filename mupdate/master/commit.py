"""Group commit: writes that arrive together are committed together (design.md "Durability").

How it works: ``submit`` queues a change and returns a Deferred. When no commit is running,
everything queued goes to the store as one transaction (one fsync) on the store's worker;
changes submitted meanwhile form the next batch, so the batch size follows the load. After
a batch is durable, ``on_committed`` runs first (the master publishes to streams there, so a
change is queued to every streamer before its writer hears OK, §7.7) and then the Deferreds
fire in submit order. If a commit fails, every write not yet durable is failed (answered NO,
never OK) and ``on_failed`` lets the owner reload its index from the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.db.store import Change, MailboxStore

T = TypeVar("T")

#: Runs a blocking call on the store's worker thread and returns its result as a Deferred.
RunBlocking = Callable[[Callable[[], object]], Deferred[object]]


class CommitFailed(Exception):
    """The store could not make a batch durable; nothing in it was acknowledged."""


@dataclass(slots=True)
class _Pending(Generic[T]):
    change: Change
    context: T
    done: Deferred[None]
    barriers: list[Deferred[None]] = field(default_factory=list)

    def succeed(self) -> None:
        for d in (self.done, *self.barriers):
            d.callback(None)

    def fail(self, reason: str) -> None:
        for d in (self.done, *self.barriers):
            d.errback(CommitFailed(reason))


class GroupCommitter(Generic[T]):
    log = Logger()

    def __init__(
        self,
        store: MailboxStore,
        run_blocking: RunBlocking,
        on_committed: Callable[[list[tuple[Change, T]]], None],
        on_failed: Callable[[Failure], Deferred[None] | None] = lambda f: None,
    ) -> None:
        self._store = store
        self._run = run_blocking
        self._on_committed = on_committed
        self._on_failed = on_failed
        self._queue: list[_Pending[T]] = []
        self._in_flight: list[_Pending[T]] = []
        self._recovering = False
        self._completing = False
        self.batches = 0
        self.committed = 0
        self.largest_batch = 0
        #: Told each durable batch's size and its commit time on the worker (metrics).
        self.observe: Callable[[int, float], None] = lambda size, seconds: None
        #: For /health (status.py): when the running batch went to the worker (by ``now``),
        #: and why the last commit failed, until one succeeds again.
        self.now: Callable[[], float] = monotonic
        self.batch_started: float | None = None
        self.last_failure: str | None = None

    @property
    def busy(self) -> bool:
        return bool(self._in_flight or self._queue or self._completing)

    def submit(self, change: Change, context: T) -> Deferred[None]:
        if self._recovering:
            d: Deferred[None] = Deferred()
            d.errback(CommitFailed("the store is recovering from a failed commit"))
            return d
        pending = _Pending(change, context, Deferred())
        self._queue.append(pending)
        if not self._in_flight and not self._completing:
            self._start()
        return pending.done

    def submit_all(self, items: list[tuple[Change, T]]) -> list[Deferred[None]]:
        """Several changes that must be durable together: queued before any commit starts,
        so they land in one batch, one transaction."""
        if self._recovering:
            return [self.submit(change, context) for change, context in items]
        pending = [_Pending(change, context, Deferred()) for change, context in items]
        self._queue.extend(pending)
        if pending and not self._in_flight and not self._completing:
            self._start()
        return [p.done for p in pending]

    def barrier(self) -> Deferred[None]:
        """Fires once everything submitted so far is durable (at once when idle), and
        fails if any of it failed. It waits for the last write queued now, not for the
        queue to drain, so a steady stream of writes cannot starve it."""
        pending = self._queue or self._in_flight
        if not pending:
            return succeed(None)
        d: Deferred[None] = Deferred()
        pending[-1].barriers.append(d)
        return d

    def _start(self) -> None:
        batch, self._queue = self._queue, []
        self._in_flight = batch
        self.batch_started = self.now()
        changes = [p.change for p in batch]

        def commit() -> float:  # on the store's worker: the transaction and its fsync
            started = perf_counter()
            self._store.apply(changes)
            return perf_counter() - started

        d = self._run(commit)
        d.addCallbacks(self._committed, self._failed)

    def _committed(self, seconds: object) -> None:
        batch, self._in_flight = self._in_flight, []
        self.batch_started, self.last_failure = None, None
        self.observe(len(batch), seconds if isinstance(seconds, float) else 0.0)
        self.batches += 1
        self.committed += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        # Writes that the answered clients send at once join the next batch instead of
        # each starting a commit of its own: start it only after every answer is out.
        self._completing = True
        try:
            self._on_committed([(p.change, p.context) for p in batch])
        finally:
            for pending in batch:
                pending.succeed()
            self._completing = False
            self._next()

    def _next(self) -> None:
        if self._queue:
            self._start()

    def _failed(self, failure: Failure) -> None:
        self.log.failure(
            "commit of {count} change(s) failed; none acknowledged",
            failure,
            count=len(self._in_flight),
        )
        failed = self._in_flight + self._queue
        self._in_flight, self._queue = [], []
        self.batch_started, self.last_failure = None, str(failure.value)
        self._recovering = True
        for pending in failed:
            pending.fail(str(failure.value))

        def recovered(_: object) -> None:
            self._recovering = False

        d = self._on_failed(failure)
        if d is None:
            self._recovering = False
        else:
            d.addBoth(recovered)

"""The guard's ``on_disk`` fact on a unified backend: partition scans, off the reactor.

When the scan runs: before every resync (the replica starts one as the dump begins and
plans only once it has ended; the first resync at start included), and before a streamed
DELETE or move to another server of an entry we hold whose name no scan found, at most
once per ``interval`` (60 s, or ten times the last scan's duration if longer, so a large
legacy spool is not scanned without end). Scans run in a thread (``run``) and never two at
once: a second request joins the one in flight. "Partitions" here are the directories that
hold the headers (``disk.header_roots``): a metapartition where Cyrus keeps them there.

``on_disk(name)`` is True when the last scan found the name, or when its legacy
``cyrus.header`` exists now (``make_on_disk``: one stat per partition, for mailboxes made
since the scan); the stream judges by it. ``scanned(name)`` answers from the last scan
alone: a resync judges by it, since its scan has just run and a resync's plan and brake ask
about every name held and listed, which would cost a million ``realpath`` and ``stat``
calls on the reactor for a million remote entries. Both raise ``OSError`` instead of
answering False when they cannot know: before the first scan, and while the last one
failed. The guard lets that through, and callers already treat it as "do not remove": a
resync fails whole (retried later), a streamed change drops the connection so that a
resync follows. Names found by an earlier scan stay local after a failed one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.logs import milliseconds, text
from mupdate.slave.disk import SpoolLayout, make_on_disk
from mupdate.slave.scan import MAX_UNNAMED_SHOWN, ScanResult, scan_partitions

RunInThread = Callable[[Callable[[], ScanResult]], "Deferred[ScanResult]"]

MIN_INTERVAL = 60.0
"""Seconds between two scans asked for by the stream (resyncs always scan)."""


class NotScanned(OSError):
    """No scan has told us yet what the partitions hold."""


class DiskLocality:
    log = Logger()

    def __init__(
        self,
        partitions: Sequence[Path],
        layout: SpoolLayout,
        run: RunInThread,
        clock: IReactorTime,
        min_interval: float = MIN_INTERVAL,
        header_now: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.partitions = [Path(os.path.realpath(p)) for p in partitions]
        #: Is there a legacy header for the name now (make_on_disk; a test may count calls)?
        self._fast = header_now or make_on_disk(self.partitions, layout)
        self._run = run
        self._clock = clock
        self.min_interval = min_interval
        self.names: frozenset[bytes] = frozenset()
        self.error: OSError | None = None
        self.scans = 0
        self.failures = 0
        self.last_scan: float | None = None  # when the last good scan started
        self._last_duration = 0.0
        self._waiters: list[Deferred[None]] | None = None  # a scan is running
        self._stop = threading.Event()

    def on_disk(self, name: bytes) -> bool:
        """Is ``name`` on one of our partitions, by the last scan or its legacy header now?
        Raises ``OSError`` when it cannot tell. For one name at a time (the stream)."""
        if not self.partitions:
            return False
        if name in self.names or self._fast(name):
            return True
        return self.scanned(name)

    def scanned(self, name: bytes) -> bool:
        """Did the last scan find ``name``? No look at the disk: for a resync, whose scan
        has just run. Raises ``OSError`` when no scan could tell."""
        if not self.partitions:
            return False
        if name in self.names:
            return True
        if self.error is not None:
            raise OSError(f"the last partition scan failed: {self.error}") from self.error
        if self.last_scan is None:
            raise NotScanned("the partitions have not been scanned yet")
        return False

    @property
    def interval(self) -> float:
        return max(self.min_interval, 10 * self._last_duration)

    def scan(self) -> Deferred[None]:
        """Fires once a scan has ended: a new one, or the one running (or errbacks with its
        ``OSError``). Without partitions there is nothing to scan."""
        if not self.partitions:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        started = self._clock.seconds()
        partitions, stop = list(self.partitions), self._stop.is_set
        d = self._run(lambda: scan_partitions(partitions, should_stop=stop))
        d.addBoth(self._ended, started)
        return waiter

    def rescan_for(self, name: bytes) -> Deferred[None] | None:
        """Before a streamed change removes or moves ``name`` away: a scan to wait for, or
        None when what we know stands (found already, or scanned within ``interval``)."""
        if not self.partitions or name in self.names:
            return None
        fresh = self.last_scan is not None and (
            self._clock.seconds() - self.last_scan < self.interval
        )
        if fresh and self._waiters is None and self.error is None:
            return None
        self.log.info(
            "scanning partitions before the master removes or moves {mailbox}",
            mailbox=text(name),
        )
        return self.scan()

    def stop(self) -> None:
        """A running scan stops at its next directory (the service is stopping)."""
        self._stop.set()

    def _ended(self, outcome: ScanResult | Failure, started: float) -> None:
        waiters, self._waiters = self._waiters or [], None
        duration = self._clock.seconds() - started
        if isinstance(outcome, Failure):
            self.failures += 1
            self.error = (
                outcome.value if isinstance(outcome.value, OSError) else OSError(str(outcome.value))
            )
            self._log_failure(outcome)
        else:
            self._log_result(outcome, duration)
            self.scans += 1
            self.names = frozenset(outcome.names)
            self.error = None
            self.last_scan = started
            self._last_duration = duration
        for waiter in waiters:
            if self.error is not None:
                waiter.errback(self.error)
            else:
                waiter.callback(None)

    def _log_failure(self, failure: Failure) -> None:
        if self._stop.is_set():
            return  # a scan stopped for shutdown is no fault
        self.log.error(
            "cannot scan the partitions {path}: {reason}; until a scan succeeds, no "
            "mailbox the scan did not find is taken for absent (resyncs and streamed "
            "removals wait)",
            path=[str(p) for p in self.partitions],
            reason=str(failure.value),
        )

    def _log_result(self, result: ScanResult, duration: float) -> None:
        self.log.info(
            "partition scan: {count} mailboxes on {path} in {duration_ms} ms",
            count=len(result.names),
            path=[str(p) for p in self.partitions],
            duration_ms=milliseconds(duration),
        )
        if result.unnamed_count:
            self.log.warn(
                "{count} cyrus.header files name no mailbox (not Cyrus headers, or damaged; "
                "reconstruct may help): {path}",
                count=result.unnamed_count,
                path=result.unnamed[:MAX_UNNAMED_SHOWN],
            )

"""The slave's copy of the mailbox list: reconcile a dump, apply the stream, feed chained slaves.

How it works: a resync is planned by the pure ``plan_resync`` (by set, through the guard),
checked by the brake, and applied as ONE store transaction; only then is the index updated
and each change published to the streams this slave serves. Stream lines that arrive while
a resync is being applied wait in order and are applied after it. Every streamed change
goes through the guard too (Cyrus guards only the resync, §9.3), then through the same
group committer the master uses, so a chained slave sees each change once it is durable.

On a unified backend the guard's "on our partitions?" comes from partition scans
(``locality.py``): each resync waits for the scan begun with it and judges by what it found
(``resync_facts``: no look at the disk per name), and a streamed change that would remove
or move away an entry we hold, for a name no scan found, may first wait for a rescan
(``rescan_for``; rate-limited there). Lines behind it wait too, in order. When that rescan
fails, or a resync fails, the connection is dropped and every later line of it is ignored
until the next resync begins: applying them would skip the lines dropped before them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.db.index import MailboxIndex, load_index
from mupdate.db.store import (
    Change,
    ExpireTombstones,
    KeepsLocalRecords,
    MailboxStore,
    PutEntry,
    RemoveEntry,
    change_name,
)
from mupdate.logs import LARGE_DUMP, milliseconds, text
from mupdate.master.commit import GroupCommitter, RunBlocking
from mupdate.master.streams import StreamChange, StreamHub
from mupdate.model import EntryState, MailboxEntry, server_of
from mupdate.protocol.responses import DeleteLine, MailboxLine, ReserveLine
from mupdate.slave.brake import BrakeSettings, Hold, check_brake
from mupdate.slave.guard import Accept, GuardRefusal, LocalFacts, check_change
from mupdate.slave.resync import ResyncPlan, defer_removals, plan_resync

StreamLine = MailboxLine | ReserveLine | DeleteLine


class BrakeHeld(Exception):
    """The resync would remove too much; the last-known-good copy stays (design.md). The
    plan rides along: healing the master does not wait for the brake."""

    def __init__(self, hold: Hold, plan: ResyncPlan) -> None:
        super().__init__(hold.reason)
        self.hold = hold
        self.plan = plan


def entry_from_line(line: MailboxLine | ReserveLine) -> MailboxEntry:
    if isinstance(line, MailboxLine):
        return MailboxEntry(line.name, EntryState.ACTIVE, line.location, line.acl)
    return MailboxEntry(line.name, EntryState.RESERVED, line.location)


@dataclass
class ReplicaCounters:
    resyncs: int = 0
    resync_changes: int = 0
    stream_changes: int = 0
    guard_refusals: int = 0
    brake_holds: int = 0
    brake_releases: int = 0
    deferred_removals: int = 0  # entries kept at the last resync, waiting for confirmation
    last_sync: float | None = None
    refused_names: set[bytes] = field(default_factory=set)


class Replica:
    log = Logger()

    def __init__(
        self,
        store: MailboxStore,
        index: MailboxIndex,
        run_blocking: RunBlocking,
        facts: LocalFacts,
        brake: BrakeSettings,
        own_servername: bytes,
        clock_seconds: Callable[[], float],
        consume_release: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.index = index
        self.facts = facts
        #: What a resync's plan and brake judge by (locality.DiskLocality.scanned on a
        #: unified backend: the scan just run, not a stat per name on the reactor).
        self.resync_facts = facts
        self.brake = brake
        self.hub = StreamHub()
        self.counters = ReplicaCounters()
        self._own_servername = own_servername
        self._run_blocking = run_blocking
        self._now = clock_seconds
        self._consume_release = consume_release
        self._held_lines: list[StreamLine] | None = None
        self._resync_started = 0.0
        self.held: str | None = None  # why the brake holds the last resync; None: not held
        #: Told each applied resync's duration in seconds (metrics).
        self.observe_resync: Callable[[float], None] = lambda seconds: None
        #: Re-read the store before each resync: others write it too (Cyrus's imapd).
        self.reload_before_resync = False
        #: Seconds a name missing from a resync is kept until a later resync confirms it.
        self.remove_delay = 0.0
        self._missing: dict[bytes, float] = {}
        #: Asked for a resync that many seconds from now (the uplink reconnects).
        self.confirm_later: Callable[[float], None] = lambda seconds: None
        #: A partition scan to wait for before each resync's plan (locality.DiskLocality).
        self.scan_partitions: Callable[[], Deferred[None]] = lambda: succeed(None)
        #: A rescan to wait for before a streamed change takes ``name`` away; None: judge now.
        self.rescan_for: Callable[[bytes], Deferred[None] | None] = lambda name: None
        #: Drop the uplink so that a resync follows (a rescan failed).
        self.resync_now: Callable[[], None] = lambda: None
        self._scan: Deferred[None] | None = None  # the scan begun with this resync
        self._scan_wait: list[StreamLine] | None = None  # lines waiting for a rescan
        self._scan_pending: Deferred[None] | None = None
        #: A resync was demanded (the connection is being dropped): its lines are ignored.
        self._dropping = False
        self._keeps = store if isinstance(store, KeepsLocalRecords) else None
        self.committer: GroupCommitter[MailboxEntry | None] = GroupCommitter(
            store, run_blocking, self._committed, self._reload
        )

    # -- resync ------------------------------------------------------------------------

    def plan(self, dump: list[MailboxLine | ReserveLine]) -> ResyncPlan:
        remote: dict[bytes, MailboxEntry] = {}
        for line in dump:
            remote[line.name] = entry_from_line(line)  # a repeated name: the later line wins
        local = {e.name: e for e in self.index.in_order()}
        return plan_resync(local, remote, self.resync_facts, own_servername=self._own_servername)

    def _confirm_removals(self, plan: ResyncPlan) -> ResyncPlan:
        """Removals wait ``remove_delay`` for a resync that confirms them (defer_removals)."""
        deferral = defer_removals(plan, self._missing, self._now(), self.remove_delay)
        self._missing = deferral.missing
        if deferral.deferred:
            self.counters.deferred_removals = deferral.deferred
            self.log.warn(
                "keeping {count} entries the master did not list, until a resync in "
                "{duration_ms} ms confirms they are gone",
                count=deferral.deferred,
                duration_ms=milliseconds(self.remove_delay),
            )
            self.confirm_later(self.remove_delay)
        else:
            self.counters.deferred_removals = 0
        return deferral.plan

    @property
    def resyncing(self) -> bool:
        """Between ``begin_resync`` and its end: a dump is arriving or being applied."""
        return self._held_lines is not None

    def begin_resync(self) -> None:
        """From now until ``finish_resync``, stream lines wait (they follow the dump); the
        partitions are scanned while the dump arrives. Lines still waiting for a rescan
        belong to the old connection: the dump replaces them."""
        self._held_lines = []
        self._scan_wait = self._scan_pending = None
        self._dropping = False
        self._resync_started = self._now()
        self._scan = self.scan_partitions()

    def resync(self, dump: list[MailboxLine | ReserveLine]) -> Deferred[ResyncPlan]:
        """Wait for the scan, plan, brake, apply in one transaction; errbacks with
        BrakeHeld when held, with ``OSError`` when the partitions could not be scanned.

        With ``reload_before_resync`` (Cyrus's mailboxes.db, where the backend's imapd
        writes its own records too) the plan starts from the file as it is now.
        """
        return Deferred.fromCoroutine(self._scanned_then_resync(dump))

    async def _scanned_then_resync(self, dump: list[MailboxLine | ReserveLine]) -> ResyncPlan:
        scan, self._scan = self._scan, None
        if scan is not None:
            await scan
        if self.reload_before_resync:
            index = await self._run_blocking(lambda: load_index(self.store))
            assert isinstance(index, MailboxIndex)
            self.index = index
        return await self._resync(dump)

    def _resync(self, dump: list[MailboxLine | ReserveLine]) -> Deferred[ResyncPlan]:
        plan = self._confirm_removals(self.plan(dump))
        local = {e.name: e for e in self.index.in_order()}
        verdict = check_brake(plan, local, self.resync_facts, self.brake)
        if isinstance(verdict, Hold):
            if self._consume_release():
                self.log.warn(
                    "mass-delete brake released by the operator: {reason}", reason=verdict.reason
                )
                self.counters.brake_releases += 1
            else:
                self.counters.brake_holds += 1
                self.held = verdict.reason
                self.log.critical(
                    "mass-delete brake holds the resync: {reason}. It would remove {count} "
                    "entries, first (at most 20, in key order): {mailboxes}",
                    reason=verdict.reason,
                    count=verdict.would_remove,
                    mailboxes=[text(name) for name in verdict.sample],
                )
                self._held_lines = None
                self._report_refusals(plan.refused, "held resync")
                return _failed(BrakeHeld(verdict, plan))
        elif verdict.released:
            self.counters.brake_releases += 1
            self.log.warn(
                "mass-delete brake released by mupdate_brake_release: applying the resync"
            )
        self._report_refusals(plan.refused, "resync")
        if plan.is_noop():
            return succeed(plan)
        changes = list(plan.changes)
        if len(changes) >= LARGE_DUMP:
            self.log.info(
                "applying {count} resync changes after {duration_ms} ms",
                count=len(changes),
                duration_ms=milliseconds(self._now() - self._resync_started),
            )

        def apply() -> None:
            self.store.apply(changes)

        d = self._run_blocking(apply)

        def applied(_: object) -> ResyncPlan:
            published: list[StreamChange] = []
            for change in changes:
                old = self.index.get(_changed_name(change))
                self.index.apply(change)
                published.append(
                    StreamChange(_changed_name(change), old.server if old else None, _entry(change))
                )
            self.hub.publish(published)
            self._restore_kept("resync")
            return plan

        d.addCallback(applied)
        return d  # type: ignore[return-value]  # applied() returns the plan

    def finish_resync(self, plan: ResyncPlan | None) -> None:
        """Count the resync (when it was applied) and apply the stream lines that waited."""
        held, self._held_lines = self._held_lines or [], None
        if plan is not None:
            self.counters.resyncs += 1
            self.counters.resync_changes += len(plan.changes)
            self.counters.last_sync = self._now()
            self.held = None
            seconds = self._now() - self._resync_started
            self.observe_resync(seconds)
            self.log.info(
                "resync applied: {count} changes ({added} added, {updated} updated, "
                "{removed} removed), {kept} kept by the guard, in {duration_ms} ms",
                count=len(plan.changes),
                added=plan.added,
                updated=plan.updated,
                removed=plan.removed,
                kept=len(plan.refused),
                duration_ms=milliseconds(seconds),
            )
        for line in held:
            self.apply_line(line)

    def abandon_resync(self) -> None:
        """The resync failed; the uplink drops the connection, and its lines are ignored."""
        self._held_lines = None
        self._dropping = True
        scan, self._scan = self._scan, None
        if scan is not None:
            scan.addErrback(lambda _: None)  # logged by the scanner; nobody waits for it now

    # -- the stream --------------------------------------------------------------------

    def apply_line(self, line: StreamLine) -> Deferred[None] | None:
        if self._dropping:
            # Lines before this one were dropped; a resync on the next connection replaces
            # them all. (Under TLS the link may stay open until the master's close_notify.)
            self.log.debug("ignoring {mailbox}: resyncing", mailbox=text(line.name))
            return None
        waiting = self._held_lines if self._held_lines is not None else self._scan_wait
        if waiting is not None:
            waiting.append(line)
            return None
        remote = None if isinstance(line, DeleteLine) else entry_from_line(line)
        local = self.index.get(line.name)
        verdict = check_change(line.name, local, remote, self.facts)
        if isinstance(verdict, GuardRefusal):
            self._report_refusals((verdict,), "stream")
            return None
        assert isinstance(verdict, Accept)
        if verdict.change is None:
            return None
        if local is not None and self._takes_away(local, verdict.change):
            rescan = self.rescan_for(line.name)
            if rescan is not None:
                self._wait_for_rescan(rescan, line)
                return None
        self.index.apply(verdict.change)
        self.counters.stream_changes += 1
        d = self.committer.submit(verdict.change, local)
        d.addErrback(self._stream_commit_failed, line.name)
        return d

    def _takes_away(self, local: MailboxEntry, change: PutEntry | RemoveEntry) -> bool:
        """A unified slave's change that deletes ``local`` or moves it to another server."""
        if not self.facts.unified:
            return False
        if isinstance(change, RemoveEntry):
            return True
        old, new = server_of(local.location), server_of(change.entry.location)
        return old.lower() != new.lower()

    def _wait_for_rescan(self, rescan: Deferred[None], line: StreamLine) -> None:
        waiting = [line]
        self._scan_wait = waiting
        self._scan_pending = rescan
        rescan.addBoth(self._rescanned, waiting)

    def _rescanned(self, outcome: object, waiting: list[StreamLine]) -> None:
        if self._scan_wait is not waiting:
            return  # a resync began meanwhile: its dump replaces these lines
        self._scan_wait = self._scan_pending = None
        if isinstance(outcome, Failure):
            self.log.error(
                "cannot tell whether {mailbox} is on our partitions ({reason}); not applying "
                "{count} streamed changes, resyncing instead",
                mailbox=text(waiting[0].name),
                reason=str(outcome.value),
                count=len(waiting),
            )
            self._dropping = True
            self.resync_now()
            return
        for line in waiting:
            self.apply_line(line)

    def barrier(self) -> Deferred[None]:
        """Fires once every line received so far is applied and durable (a kick's wait),
        lines waiting for a rescan included."""
        pending = self._scan_pending
        if pending is None:
            return self.committer.barrier()
        done: Deferred[None] = Deferred()

        def then(_: object) -> None:
            self.barrier().chainDeferred(done)

        pending.addBoth(then)
        return done

    def _stream_commit_failed(self, failure: Failure, name: bytes) -> None:
        # The index was reloaded from disk by _reload; the next resync repairs the copy.
        self.log.error(
            "could not store the streamed change of {mailbox}: {reason}",
            mailbox=text(name),
            reason=str(failure.value),
        )

    def _committed(self, batch: list[tuple[Change, MailboxEntry | None]]) -> None:
        self.hub.publish(
            [
                StreamChange(_changed_name(change), old.server if old else None, _entry(change))
                for change, old in batch
            ]
        )
        self._restore_kept("stream")

    def _restore_kept(self, during: str) -> None:
        """Records the store itself kept as local: the index follows the file, not the master."""
        if self._keeps is None:
            return
        for entry in self._keeps.drain_kept():
            said = self.index.get(entry.name)
            if said != entry:
                self.index.apply(PutEntry(entry))
                self.hub.publish([StreamChange(entry.name, said.server if said else None, entry)])
            if said is not None and self.facts.owns_server(said.location):
                # An echo of our own mailbox: the master lags or leads the imapd by a change
                # (a CREATE's RESERVE, a SETACL); the imapd's record stands, nothing refused.
                continue
            self.counters.guard_refusals += 1
            self.counters.refused_names.add(entry.name)
            self.log.error(
                "kept the local record of {mailbox} in mailboxes.db during {state}: "
                "the backend's own mailbox (master said {location})",
                mailbox=text(entry.name),
                state=during,
                location=text(said.location) if said is not None else "DELETE",
            )

    def _reload(self, failure: Failure) -> Deferred[None]:
        self.log.critical(
            "slave store failure; reloading the copy from disk: {reason}", reason=str(failure.value)
        )

        def replace(index: object) -> None:
            assert isinstance(index, MailboxIndex)
            self.index = index

        d = self._run_blocking(lambda: load_index(self.store))
        d.addCallback(replace)
        return d  # type: ignore[return-value]  # fires with None after replace()

    # -- reporting ---------------------------------------------------------------------

    def _report_refusals(self, refusals: tuple[GuardRefusal, ...], during: str) -> None:
        for refusal in refusals:
            self.counters.guard_refusals += 1
            self.counters.refused_names.add(refusal.name)
            said = refusal.master_said
            self.log.error(
                "guard kept local mailbox {mailbox} during {state}: {reason} (master said {location})",
                mailbox=text(refusal.name),
                state=during,
                reason=refusal.reason,
                location=text(said.location) if said is not None else "DELETE",
                old_location=text(refusal.local.location) if refusal.local is not None else "-",
            )


def _changed_name(change: Change) -> bytes:
    assert not isinstance(change, ExpireTombstones), "the replica stores no tombstones"
    return change_name(change)


def _entry(change: Change) -> MailboxEntry | None:
    return change.entry if isinstance(change, PutEntry) else None


def _failed(exc: Exception) -> Deferred[ResyncPlan]:
    d: Deferred[ResyncPlan] = Deferred()
    d.errback(exc)
    return d

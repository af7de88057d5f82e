"""The slave's store in Cyrus's own ``mailboxes.db`` (design.md "Slave", protocol doc §9.7).

A ``MailboxStore``: synchronous, called from the store's one worker thread. Each call hands
the work to the ``cyr_dbtool`` child on the reactor thread (``dbtool.py``) and waits for it,
bounded, so a call is one Cyrus transaction, durable when it returns, or a ``StoreError``
with nothing kept.

Local records are the backend's own: a by-name record without a server (its imapd wrote
it) is never written over or deleted, whatever the change asks, not even rewritten with the
same content. The check is made inside the transaction, on the record as it is then, so it
also holds for a mailbox the imapd created a moment ago. What was kept this way is
reported by ``drain_kept`` so the slave can correct its index and count it.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from mupdate.cyrusdb import batch
from mupdate.cyrusdb.dbtool import DbTool, DbToolCommand
from mupdate.cyrusdb.records import (
    NAME_PREFIX,
    CyrusRecord,
    dbname_to_name,
    parse_record_value,
    record_key,
    remote_value,
)
from mupdate.db.store import Change, PutEntry, RemoveEntry, StoreError, change_name
from mupdate.model import MailboxEntry, Tombstone

T = TypeVar("T")


def read_once(command: DbToolCommand, prefix: bytes, timeout: float) -> list[tuple[bytes, bytes]]:
    """``SHOW prefix`` by a child of its own, without the reactor."""
    try:
        proc = subprocess.run(
            command.argv,
            input=batch.show(prefix),
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd="/",
            user=command.uid,
            group=command.gid,
            extra_groups=[] if command.uid is not None else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise StoreError(f"cannot run {command.argv[0]}: {exc}") from None
    if proc.returncode != 0 or proc.stderr.strip():
        message = proc.stderr.decode("utf-8", "replace").strip() or "no message"
        raise StoreError(f"{command.argv[0]} exited {proc.returncode}: {message}")
    parser = batch.OutputParser()
    try:
        records = parser.feed(proc.stdout)
    except batch.BatchOutputError as exc:
        raise StoreError(f"unreadable output from cyr_dbtool: {exc}") from None
    if parser.pending:
        raise StoreError("cyr_dbtool's output ends inside a record")
    return records


def parse_record(key: bytes, value: bytes) -> CyrusRecord:
    """A by-name record from the tool's output; ``StoreError`` when it makes no sense."""
    try:
        return parse_record_value(dbname_to_name(key[1:]), value)
    except ValueError as exc:
        raise StoreError(f"mailboxes.db record {key!r} is unreadable: {exc}") from None


class CyrusMailboxStore:
    """Cyrus's mailboxes.db through ``tool``; ``own_servername`` names local records."""

    def __init__(
        self,
        tool: DbTool,
        reactor: Any,
        own_servername: bytes,
        timeout: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._tool = tool
        self._reactor = reactor
        self._own = own_servername
        self._timeout = timeout
        self._now = now
        self._kept: list[CyrusRecord] = []
        self._kept_lock = threading.Lock()
        self.transactions = 0
        self.records_written = 0
        self.records_deleted = 0
        self.local_kept = 0
        #: Names whose record was local when last read or kept: Cyrus's own test of
        #: locality, for the guard and the healer (replaced whole by each load).
        self.local_names: frozenset[bytes] = frozenset()
        self._seen: dict[bytes, tuple[bytes, CyrusRecord]] = {}

    # -- MailboxStore ------------------------------------------------------------------

    def load_entries(self) -> list[MailboxEntry]:
        entries = []
        for record in self.load_records():
            entry = record.entry(self._own)
            if entry is not None:
                entries.append(entry)
        return entries

    def load_tombstones(self) -> list[Tombstone]:
        return []  # only the master keeps tombstones

    def apply(self, changes: Sequence[Change]) -> None:
        work = [c for c in changes if isinstance(c, PutEntry | RemoveEntry)]
        if work:
            self._call(lambda: self.transaction(work))

    def replace_all(self, entries: Iterable[MailboxEntry]) -> None:
        wanted: dict[bytes, MailboxEntry] = {}
        for entry in entries:
            if entry.name in wanted:
                raise ValueError(f"two entries named {entry.name!r}")
            wanted[entry.name] = entry
        changes: list[PutEntry | RemoveEntry] = [
            RemoveEntry(record.name, None)
            for record in self.load_records()
            if record.name not in wanted and record.is_mailbox
        ]
        changes += [PutEntry(entry) for entry in wanted.values()]
        self.apply(changes)

    def close(self) -> None:
        self._reactor.callFromThread(self._tool.stop)

    # -- what the slave asks besides ---------------------------------------------------

    def load_records(self) -> list[CyrusRecord]:
        """Every by-name record (mailboxes, tombstones, intermediates), in key order."""
        if self._reactor.running:
            found = self._call(lambda: self._tool.read_all(NAME_PREFIX))
        else:  # at start-up, before the reactor runs: a one-shot child
            found = read_once(self._tool.command, NAME_PREFIX, self._timeout)
        # Most records are as they were at the last read: reuse what they parsed to.
        seen, self._seen = self._seen, {}
        records = []
        for key, value in found:
            if not key.startswith(NAME_PREFIX):
                continue
            known = seen.get(key)
            record = known[1] if known is not None and known[0] == value else None
            if record is None:
                record = parse_record(key, value)
            self._seen[key] = (value, record)
            records.append(record)
        self.local_names = frozenset(r.name for r in records if r.is_local)
        return records

    def is_local(self, name: bytes) -> bool:
        """The last read of ``name``'s record found it local (no server)."""
        return name in self.local_names

    def drain_kept(self) -> list[MailboxEntry]:
        """Local records a change asked to touch and that were left as they are, since the
        last call; as entries (at our servername) for the index."""
        with self._kept_lock:
            kept, self._kept = self._kept, []
        return [e for e in (r.entry(self._own) for r in kept) if e is not None]

    # -- on the reactor thread ---------------------------------------------------------

    def transaction(self, changes: Sequence[PutEntry | RemoveEntry]) -> Deferred[None]:
        """One Cyrus transaction for ``changes``, in order; local records are left alone."""
        keys = list(dict.fromkeys(record_key(change_name(c)) for c in changes))
        mtime = int(self._now())

        def decide(current: dict[bytes, bytes]) -> bytes:
            state: dict[bytes, CyrusRecord | None] = {
                key: parse_record(key, value) for key, value in current.items()
            }
            commands: list[bytes] = []
            kept: list[CyrusRecord] = []
            written = deleted = 0
            for change in changes:
                key = record_key(change_name(change))
                record = state.get(key)
                if record is not None and record.is_local:
                    kept.append(record)
                    continue
                if isinstance(change, PutEntry):
                    commands.append(batch.set_(key, remote_value(change.entry, mtime)))
                    state[key] = CyrusRecord(change.entry.name, "er", None, b"", b"")
                    written += 1
                elif record is not None:
                    if record.is_mailbox:
                        commands.append(batch.delete(key))
                        state[key] = None
                        deleted += 1
                    else:
                        kept.append(record)  # a tombstone or intermediate: Cyrus's own
            self.transactions += 1
            self.records_written += written
            self.records_deleted += deleted
            self.local_kept += len(kept)
            with self._kept_lock:
                self._kept.extend(kept)
            fresh = {r.name for r in kept if r.is_local}
            if fresh - self.local_names:
                self.local_names = self.local_names | fresh
            return b"".join(commands)

        return self._tool.transaction(keys, decide)

    # -- threads -------------------------------------------------------------------------

    def _call(self, work: Callable[[], Deferred[T]]) -> T:
        """Run ``work`` on the reactor thread and wait for its result, bounded."""
        if threading.current_thread() is threading.main_thread() and self._reactor.running:
            raise StoreError("the Cyrus store is called from its worker thread, not the reactor's")
        answers: queue.Queue[object] = queue.Queue(maxsize=1)

        def run() -> None:
            maybeDeferred(work).addBoth(answers.put)

        if self._reactor.running:
            self._reactor.callFromThread(run)
        else:
            raise StoreError("the reactor is not running: the Cyrus store cannot work")
        try:
            result = answers.get(timeout=self._timeout * 3 + 10)
        except queue.Empty:
            raise StoreError("the Cyrus store did not answer in time") from None
        if isinstance(result, Failure):
            if isinstance(result.value, StoreError | ValueError):
                raise result.value
            raise StoreError(f"Cyrus store failure: {result.getErrorMessage()}")
        return result  # type: ignore[return-value]  # what work's Deferred fired with

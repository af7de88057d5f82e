"""A small honest in-memory ``MailboxStore`` for tests (style.md §11: fakes in helpers).

Same semantics as ``SqliteStore``, nothing durable. ``fail_next`` makes the next ``apply``
or ``replace_all`` raise ``StoreError`` and change nothing, to test how the glue answers a
storage fault. ``batches`` records every committed ``apply`` call (group-commit checks).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mupdate.db.store import Change, ExpireTombstones, PutEntry, RemoveEntry, StoreError
from mupdate.model import MailboxEntry, Tombstone


class InMemoryStore:
    def __init__(
        self,
        entries: Iterable[MailboxEntry] = (),
        tombstones: Iterable[Tombstone] = (),
        *,
        fail_next: bool = False,
    ) -> None:
        self.entries: dict[bytes, MailboxEntry] = {e.name: e for e in entries}
        self.tombstones: dict[bytes, Tombstone] = {t.name: t for t in tombstones}
        self.fail_next = fail_next
        self.batches: list[tuple[Change, ...]] = []
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise StoreError("store is closed")
        if self.fail_next:
            self.fail_next = False
            raise StoreError("simulated storage fault")

    def load_entries(self) -> list[MailboxEntry]:
        if self.closed:
            raise StoreError("store is closed")
        return list(self.entries.values())

    def load_tombstones(self) -> list[Tombstone]:
        if self.closed:
            raise StoreError("store is closed")
        return list(self.tombstones.values())

    def apply(self, changes: Sequence[Change]) -> None:
        self._check()
        entries, tombstones = dict(self.entries), dict(self.tombstones)
        for change in changes:
            match change:
                case PutEntry(entry=entry):
                    entries[entry.name] = entry
                    tombstones.pop(entry.name, None)
                case RemoveEntry(name=name, tombstone=tombstone):
                    entries.pop(name, None)
                    if tombstone is not None:
                        tombstones[name] = tombstone
                case ExpireTombstones(before=before):
                    tombstones = {n: t for n, t in tombstones.items() if t.deleted_at >= before}
                case _:
                    raise TypeError(f"not a store change: {change!r}")
        self.entries, self.tombstones = entries, tombstones
        self.batches.append(tuple(changes))

    def replace_all(self, entries: Iterable[MailboxEntry]) -> None:
        self._check()
        new: dict[bytes, MailboxEntry] = {}
        for entry in entries:
            if entry.name in new:
                raise ValueError(f"replace_all: mailbox {entry.name!r} given twice")
            new[entry.name] = entry
        self.entries = new
        self.tombstones = {n: t for n, t in self.tombstones.items() if n not in new}

    def close(self) -> None:
        self.closed = True

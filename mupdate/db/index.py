"""The in-memory read index: FIND, LIST and UPDATE dumps are served from it (§5.6-5.8).

Entries live in one dict by name. Key order (§7.8) is kept as a list of names sorted by
``sort_key``, brought up to date lazily: ``put`` and ``remove`` cost O(1) and only note
the name; the next ``in_order`` folds the noted names in with bisect and slicing,
O(n + k log n) for k changes, without re-sorting (a full sort is used only when k is a large
share of n). The sorted list is never modified in place once published, so an iterator keeps
a stable order while the index changes under it.

Sorting compares ``sort_key`` tuples only while some name holds a 0x1D or 0x1F byte (where
Cyrus keys collide); otherwise the plain ``mailbox_key`` gives the same order, twice as fast.
Locations (a few backends) and ACLs (often the same for all of a user's folders) repeat a
lot, so each distinct value is kept once: an entry whose location or ACL equals a known one
is stored with the shared bytes (about 100 bytes less per entry). The table of known values
is dropped when it outgrows the index, so values no longer used cannot pile up.
Imports nothing from Twisted.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator

from mupdate.db.order import mailbox_key, sort_key
from mupdate.db.store import Change, ExpireTombstones, MailboxStore, PutEntry, RemoveEntry
from mupdate.model import EntryState, MailboxEntry, Tombstone, server_of

SortKey = Callable[[bytes], bytes | tuple[bytes, bytes]]


def _odd(name: bytes) -> bool:
    """Whether ``name`` may share its Cyrus key with another name (holds 0x1D or 0x1F)."""
    return b"\x1f" in name or b"\x1d" in name


class MailboxIndex:
    """Mailbox entries and tombstones by name, iterable in Cyrus key order."""

    def __init__(
        self, entries: Iterable[MailboxEntry] = (), tombstones: Iterable[Tombstone] = ()
    ) -> None:
        self._shared: dict[bytes, bytes] = {}
        self._entries: dict[bytes, MailboxEntry] = {}
        for entry in entries:
            self._entries[entry.name] = self._slim(entry)
        # kept up to date by put/remove: status, /metrics and the systemd STATUS line read
        # it often, and a pass over a million entries would hold the reactor each time
        self._counts: dict[EntryState, int] = {}
        for entry in self._entries.values():
            self._counts[entry.state] = self._counts.get(entry.state, 0) + 1
        self._tombstones: dict[bytes, Tombstone] = {t.name: t for t in tombstones}
        for name in self._entries:
            self._tombstones.pop(name, None)
        self._odd: set[bytes] = {name for name in self._entries if _odd(name)}
        self._order: list[bytes] = sorted(self._entries, key=self._sort_key())
        self._added: set[bytes] = set()  # in _entries, not yet in _order
        self._gone: set[bytes] = set()  # in _order, no longer in _entries

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def count_by_state(self) -> dict[EntryState, int]:
        """Entries per state (states with none left out)."""
        return {state: n for state, n in self._counts.items() if n}

    def get(self, name: bytes) -> MailboxEntry | None:
        return self._entries.get(name)

    def _slim(self, entry: MailboxEntry) -> MailboxEntry:
        """``entry``, or an equal one whose location and ACL are shared with other entries."""
        shared = self._shared
        if len(shared) > 2 * len(self._entries) + 1024:
            shared.clear()
        location = shared.setdefault(entry.location, entry.location)
        acl = shared.setdefault(entry.acl, entry.acl)
        if location is entry.location and acl is entry.acl:
            return entry
        return MailboxEntry(entry.name, entry.state, location, acl)

    def put(self, entry: MailboxEntry) -> None:
        """Insert or replace ``entry`` and drop its name's tombstone, as ``PutEntry`` does."""
        entry = self._slim(entry)
        name = entry.name
        old = self._entries.get(name)
        if old is not None:
            self._counts[old.state] -= 1
        self._counts[entry.state] = self._counts.get(entry.state, 0) + 1
        if old is None:
            if _odd(name):
                self._odd.add(name)
            if name in self._gone:
                self._gone.discard(name)  # still in _order, at the right place
            else:
                self._added.add(name)
        self._entries[name] = entry
        self._tombstones.pop(name, None)

    def remove(self, name: bytes) -> None:
        """Drop the entry ``name``; nothing happens if there is none. Tombstones are kept."""
        old = self._entries.pop(name, None)
        if old is None:
            return
        self._counts[old.state] -= 1
        self._odd.discard(name)
        if name in self._added:
            self._added.discard(name)
        else:
            self._gone.add(name)

    def tombstone(self, name: bytes) -> Tombstone | None:
        return self._tombstones.get(name)

    def set_tombstone(self, t: Tombstone) -> None:
        self._tombstones[t.name] = t

    def expire_tombstones(self, before: float) -> None:
        """Drop tombstones with ``deleted_at < before``."""
        stale = [name for name, t in self._tombstones.items() if t.deleted_at < before]
        for name in stale:
            del self._tombstones[name]

    def tombstones(self) -> list[Tombstone]:
        """Every tombstone, in no particular order."""
        return list(self._tombstones.values())

    def apply(self, change: Change) -> None:
        """Apply one committed store change, with the store's semantics."""
        match change:
            case PutEntry(entry=entry):
                self.put(entry)
            case RemoveEntry(name=name, tombstone=tombstone):
                self.remove(name)
                if tombstone is not None:
                    self.set_tombstone(tombstone)
            case ExpireTombstones(before=before):
                self.expire_tombstones(before)
            case _:
                raise TypeError(f"not a store change: {change!r}")

    def in_order(self, location_prefix: bytes | None = None) -> Iterator[MailboxEntry]:
        """Entries in key order (§7.8); with a prefix, only locations starting with it (§5.7).

        The order and membership are fixed when this is called: entries added later are
        not seen, entries removed later are skipped, and an entry replaced later is
        yielded as it is when the iterator reaches it. Changing the index while iterating
        is safe.
        """
        return self._iterate(self._sorted_names(), location_prefix)

    def for_servers(self, hosts: Collection[bytes]) -> Iterator[MailboxEntry]:
        """Entries in key order whose server part is exactly one of ``hosts`` (§5.8, §8.4)."""
        wanted = frozenset(hosts)
        return (entry for entry in self.in_order() if server_of(entry.location) in wanted)

    def _iterate(self, order: list[bytes], prefix: bytes | None) -> Iterator[MailboxEntry]:
        entries = self._entries
        for name in order:
            entry = entries.get(name)
            if entry is not None and (prefix is None or entry.location.startswith(prefix)):
                yield entry

    def _sort_key(self, *, also: Iterable[bytes] = ()) -> SortKey:
        """``mailbox_key`` when it is injective on the names involved, else ``sort_key``."""
        if self._odd or any(_odd(name) for name in also):
            return sort_key
        return mailbox_key

    def _sorted_names(self) -> list[bytes]:
        """The names in key order, folding in pending changes; never mutates a published list."""
        if self._gone:
            self._order = _without(self._order, self._gone, self._sort_key(also=self._gone))
            self._gone = set()
        if self._added:
            self._order = _merged(self._order, self._added, self._sort_key())
            self._added = set()
        return self._order


def _without(order: list[bytes], gone: set[bytes], key: SortKey) -> list[bytes]:
    """A new list: ``order`` minus ``gone``, by bisect when few go, by one filter pass if many."""
    if len(gone) * 64 > len(order):
        return [name for name in order if name not in gone]
    cuts = sorted(bisect_left(order, key(name), key=key) for name in gone)
    result: list[bytes] = []
    start = 0
    for cut in cuts:
        result += order[start:cut]
        start = cut + 1
    result += order[start:]
    return result


def _merged(order: list[bytes], added: set[bytes], key: SortKey) -> list[bytes]:
    """A new list: ``order`` with ``added`` in place, by bisect when few, by one sort if many."""
    if len(added) * 16 > len(order):
        return sorted([*order, *added], key=key)
    result: list[bytes] = []
    start = 0
    for name in sorted(added, key=key):
        cut = bisect_right(order, key(name), lo=start, key=key)
        result += order[start:cut]
        result.append(name)
        start = cut
    result += order[start:]
    return result


def load_index(store: MailboxStore) -> MailboxIndex:
    """The whole list and its tombstones, read from a store (blocking: a worker's job)."""
    return MailboxIndex(store.load_entries(), store.load_tombstones())

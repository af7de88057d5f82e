"""The storage interface both mailbox stores satisfy (style.md §6; design.md "Master").

A store holds the mailbox list and the master's tombstones. It is synchronous and knows
nothing of threads or Deferreds: the glue calls it from one worker thread at a time. One
``apply`` call is one transaction and one fsync, the unit of group commit. Imports nothing
from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mupdate.model import MailboxEntry, Tombstone


class StoreError(Exception):
    """A storage fault (I/O error, corrupt row, unsupported schema). Nothing was changed."""


@dataclass(frozen=True, slots=True)
class PutEntry:
    """Insert or replace ``entry``; any tombstone of the same name is dropped."""

    entry: MailboxEntry


@dataclass(frozen=True, slots=True)
class RemoveEntry:
    """Delete ``name`` (a no-op if absent) and keep ``tombstone`` for it, if given."""

    name: bytes
    tombstone: Tombstone | None

    def __post_init__(self) -> None:
        if self.tombstone is not None and self.tombstone.name != self.name:
            raise ValueError("a RemoveEntry's tombstone must carry the removed name")


@dataclass(frozen=True, slots=True)
class ExpireTombstones:
    """Drop every tombstone with ``deleted_at < before``."""

    before: float


Change = PutEntry | RemoveEntry | ExpireTombstones


class MailboxStore(Protocol):
    """What the master and slave need from a store; every method may raise ``StoreError``."""

    def load_entries(self) -> list[MailboxEntry]:
        """Every entry, in no particular order."""
        ...

    def load_tombstones(self) -> list[Tombstone]:
        """Every tombstone, in no particular order."""
        ...

    def apply(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in order as one transaction, durable on disk when this returns.

        All or nothing: on ``StoreError`` the store is as it was before the call.
        """
        ...

    def replace_all(self, entries: Iterable[MailboxEntry]) -> None:
        """Make the mailbox list exactly ``entries``, in one transaction (import, resync).

        Tombstones of names in ``entries`` are dropped; other tombstones are kept. Two
        entries with one name raise ``ValueError`` and change nothing.
        """
        ...

    def close(self) -> None:
        """Release the store; calling it again does nothing."""
        ...


def change_name(change: PutEntry | RemoveEntry) -> bytes:
    """The mailbox a put or a removal is about."""
    return change.entry.name if isinstance(change, PutEntry) else change.name


@runtime_checkable
class KeepsLocalRecords(Protocol):
    """A store that itself refuses to touch records it finds local (Cyrus's mailboxes.db)."""

    def drain_kept(self) -> list[MailboxEntry]:
        """Local records that changes asked to touch and that were kept, since last asked."""
        ...

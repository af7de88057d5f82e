"""What the master does with a write: the same-location rule and tombstones (§7.1, §7.3, §15).

Pure: ``decide`` takes the command, the current entry, the name's tombstone and ``now``,
and returns a decision value; it reads no store and no clock (style.md §6). Where we depart
from Cyrus 3.6.1 on purpose:

* An empty mailbox name is refused; Cyrus stores a corrupt record (design.md).
* RESERVE at the entry's own location answers OK and changes nothing; Cyrus demotes an
  ACTIVE entry to RESERVED and drops its ACL (§7.3, case 45). A replica's repeat must not
  hide the mailbox from the frontends.
* DEACTIVATE of a RESERVED entry at the same location is OK (a replica's repeat, case 49);
  Cyrus aborts. DEACTIVATE of a missing name is NO; Cyrus segfaults (case 50).
* DELETE of a name deleted within the tombstone window is OK (a replica's repeat); of a
  name never held (or deleted long ago) it is NO "mailbox doesn't exist", as RFC 3656 says;
  Cyrus segfaults either way (case 52).
* ACTIVATE is never refused, exactly as in Cyrus: it is how mailboxes move (XFER, partition
  moves, ``server!`` fix-ups, ``ctl_mboxlist -m`` repairs, §15).
* "The same location" is the same bytes, or the same server where one side has an empty
  partition (``server!``, what a Cyrus 3.6 RENAME registers, §10.2): the replica's
  ``sync_server`` repeats the primary's rename at ``server!default`` (seen in the
  replication-pair seed run, docs/replication-pair-seed000.md), and refusing that RESERVE
  makes the replica undo the rename.

Imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mupdate.db.store import PutEntry, RemoveEntry
from mupdate.model import EntryState, MailboxEntry, Tombstone
from mupdate.protocol.commands import Activate, Deactivate, Delete, Reserve

INVALID_NAME: Final = b"invalid mailbox name"
"""NO text for a write naming the empty mailbox (ours; Cyrus accepts it, design.md)."""

ALREADY_EXISTS: Final = b"mailbox already exists"
"""NO text for RESERVE of a name held at another location (§5.9, §7.1)."""

DOES_NOT_EXIST: Final = b"mailbox doesn't exist"
"""NO text for DEACTIVATE or DELETE of a name the master does not hold (§5.11, §15)."""

NOT_ACTIVE: Final = b"mailbox not currently active"
"""NO text for DEACTIVATE of a name reserved at another location (§5.11, §7.1)."""


@dataclass(frozen=True, slots=True)
class Apply:
    """Commit ``change``, then answer OK and publish; ``new`` is None for a removal."""

    change: PutEntry | RemoveEntry
    old: MailboxEntry | None
    new: MailboxEntry | None


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Answer OK; write nothing, publish nothing (a replica's repeat, or a no-op write)."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer NO with ``text``; write nothing."""

    text: bytes


Decision = Apply | Unchanged | Refuse

WriteCommand = Reserve | Activate | Deactivate | Delete


def _put(old: MailboxEntry | None, new: MailboxEntry) -> Apply:
    return Apply(PutEntry(new), old, new)


def same_location(held: bytes, given: bytes) -> bool:
    """Whether ``given`` names the place of an entry held at ``held`` (for RESERVE and
    DEACTIVATE): the same bytes, or the same server where either partition is empty.

    A location without ``!`` has no partition to leave empty, so it only matches itself.
    """
    if held == given:
        return True
    h_server, h_bang, h_part = held.partition(b"!")
    g_server, g_bang, g_part = given.partition(b"!")
    return bool(h_bang and g_bang and h_server == g_server and not (h_part and g_part))


def _reserve(command: Reserve, current: MailboxEntry | None) -> Decision:
    if current is None:
        return _put(None, MailboxEntry(command.name, EntryState.RESERVED, command.location))
    if same_location(current.location, command.location):
        return Unchanged()  # both states: an ACTIVE entry keeps its state and ACL
    return Refuse(ALREADY_EXISTS)


def _activate(command: Activate, current: MailboxEntry | None) -> Decision:
    new = MailboxEntry(command.name, EntryState.ACTIVE, command.location, command.acl)
    if current == new:
        return Unchanged()
    return _put(current, new)


def _deactivate(command: Deactivate, current: MailboxEntry | None) -> Decision:
    if current is None:
        return Refuse(DOES_NOT_EXIST)
    if current.state is EntryState.ACTIVE:
        # Any location: the entry moves to the given one and loses its ACL (§5.11).
        return _put(current, MailboxEntry(command.name, EntryState.RESERVED, command.location))
    if same_location(current.location, command.location):
        return Unchanged()
    return Refuse(NOT_ACTIVE)


def _delete(
    command: Delete,
    current: MailboxEntry | None,
    tombstone: Tombstone | None,
    now: float,
    tombstone_window: float,
) -> Decision:
    if current is not None:
        grave = Tombstone(command.name, current.location, now)
        return Apply(RemoveEntry(command.name, grave), current, None)
    if tombstone is not None and tombstone.deleted_at >= now - tombstone_window:
        return Unchanged()
    return Refuse(DOES_NOT_EXIST)


def decide(
    command: WriteCommand,
    current: MailboxEntry | None,
    tombstone: Tombstone | None,
    *,
    now: float,
    tombstone_window: float,
) -> Decision:
    """The master's answer to one write, given the name's entry and tombstone (if any).

    ``current`` and ``tombstone`` must be those of ``command.name``; ``now`` is seconds since
    the epoch and ``tombstone_window`` how many seconds a tombstone makes a repeated DELETE
    OK. The tombstone only matters for DELETE of a missing entry.
    """
    if not command.name:
        return Refuse(INVALID_NAME)
    match command:
        case Reserve():
            return _reserve(command, current)
        case Activate():
            return _activate(command, current)
        case Deactivate():
            return _deactivate(command, current)
        case Delete():
            return _delete(command, current, tombstone, now, tombstone_window)
        case _:
            raise TypeError(f"not a write command: {command!r}")

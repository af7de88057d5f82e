"""The local-authority guard: what the master may change on a unified backend (§9.3, case 65).

On a unified-murder backend the slave's copy includes the backend's own mailboxes, and the
backend, not the master, is their authority. ``check_change`` judges one name: what the
slave holds (``local``) against what the master says (``remote``; None when the master
deletes the name or does not list it), and returns ``Accept`` with the store change to make
(or None when there is nothing to do) or a ``GuardRefusal`` the glue logs at error level
and counts. The resync plan and the streamed lines both go through it.

Where we differ from Cyrus 3.6.1 on purpose (§9.3):

* Cyrus guards the resync only; a streamed DELETE removes a local mailbox's entry and a
  streamed MAILBOX elsewhere turns it into a remote pointer. Both are refused here.
* Cyrus's test is "the record has no server" (its location has no ``!``). We also count a
  location at our ``servername`` or an alias (case-insensitive, as Cyrus compares
  servernames), and a ``cyrus.header`` on one of our partitions (``on_disk``).
* An echo of a local record (the master lists it at ``<ours>!<partition>`` with the same
  state and ACL while the record reads back as the bare partition) is not rewritten: Cyrus
  rewrites the record and loses its uniqueid.
* A location without ``!`` is local only in what *we* hold. From the master it names a
  server (as Cyrus routes it, §11.2), so ``MAILBOX user.x be9`` still moves a local
  mailbox away and is refused.

Standard-mode slaves (frontends) have no local mailboxes: everything is accepted there.
Pure: no store, no clock, no log; the only outside call is ``LocalFacts.on_disk``.
Imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mupdate.db.store import PutEntry, RemoveEntry
from mupdate.model import EntryState, MailboxEntry, server_of

NOT_LISTED = "local mailbox not in the master's list"
"""Refusal reason when the master deletes a local mailbox or leaves it out of its list."""


def _nowhere(name: bytes) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class LocalFacts:
    """What makes a mailbox local to this slave's host; the guard applies only when ``unified``.

    ``own_servernames`` are lower-cased (``servername`` plus ``mupdate_local_servernames``).
    ``on_disk(name)`` says whether a ``cyrus.header`` for the mailbox exists on one of our
    partitions (``mupdate.slave.disk.make_on_disk``); it may raise ``OSError`` when it
    cannot tell, which must abort the decision, never count as "not local".
    ``bare_location_is_local``: a location without ``!`` in what we hold is a local record
    (true for a copy read from Cyrus's mailboxes.db, where own records have no server). A
    store that keeps the master's bytes as they came, where ``be2`` is a remote pointer to
    server ``be2``, may turn it off.
    """

    unified: bool
    own_servernames: frozenset[str]
    on_disk: Callable[[bytes], bool] = _nowhere
    bare_location_is_local: bool = True

    def owns_server(self, location: bytes) -> bool:
        """The location's server part (before the first ``!``) is one of our names."""
        return server_of(location).decode("latin-1").lower() in self.own_servernames

    def owns_location(self, location: bytes) -> bool:
        """Ours by server name, or (unified) a bare location: Cyrus's local form (§9.3)."""
        if self.unified and self.bare_location_is_local and b"!" not in location:
            return True
        return self.owns_server(location)

    def is_local(self, name: bytes, entry: MailboxEntry | None) -> bool:
        """A unified backend's own mailbox: by the location we hold, or by its header on disk."""
        if not self.unified:
            return False
        if entry is not None and self.owns_location(entry.location):
            return True
        return self.on_disk(name)


@dataclass(frozen=True, slots=True)
class Accept:
    """Apply ``change``; None when there is nothing to do (same entry, unknown name, echo)."""

    change: PutEntry | RemoveEntry | None


@dataclass(frozen=True, slots=True)
class GuardRefusal:
    """A local mailbox kept against the master; ``master_said`` is None for DELETE / unlisted."""

    name: bytes
    local: MailboxEntry | None
    master_said: MailboxEntry | None
    reason: str


def check_change(
    name: bytes,
    local: MailboxEntry | None,
    remote: MailboxEntry | None,
    facts: LocalFacts,
) -> Accept | GuardRefusal:
    """Judge the master's word on ``name``: ``remote`` None means DELETE or "not listed".

    * Same entry on both sides, or absent on both: ``Accept(None)``.
    * Absent from the master: a local mailbox is refused; anything else is removed
      (without a tombstone: only the master keeps those).
    * Present at the master: a local mailbox may change state, ACL or partition at one of
      our servernames (or keep the location it has), never move to another server; an
      echo of a bare-partition local record is ``Accept(None)``; anything else is put.
    """
    if remote == local:
        return Accept(None)
    if remote is None:
        if facts.is_local(name, local):
            return GuardRefusal(name, local, None, NOT_LISTED)
        return Accept(RemoveEntry(name, None))
    if local is not None and _echoes_local_record(local, remote, facts):
        return Accept(None)
    # The cheap test first: a change that stays on this host needs no look at the disk.
    if not _stays_here(local, remote, facts) and facts.is_local(name, local):
        return GuardRefusal(name, local, remote, _placed_elsewhere(remote))
    return Accept(PutEntry(remote))


def _stays_here(local: MailboxEntry | None, remote: MailboxEntry, facts: LocalFacts) -> bool:
    """The master keeps the mailbox on this host: at one of our names, or where we hold it."""
    if local is not None and remote.location == local.location:
        return True
    return facts.owns_server(remote.location)


def _echoes_local_record(local: MailboxEntry, remote: MailboxEntry, facts: LocalFacts) -> bool:
    """``remote`` is ``<ours>!<p>`` of a bare-``<p>`` local record, same state and ACL."""
    if not (facts.unified and facts.bare_location_is_local) or b"!" in local.location:
        return False
    server, _, partition = remote.location.partition(b"!")
    return (
        partition == local.location
        and b"!" in remote.location
        and facts.owns_server(server)
        and (remote.state, remote.acl) == (local.state, local.acl)
    )


def _placed_elsewhere(remote: MailboxEntry) -> str:
    where = remote.location.decode("utf-8", "backslashreplace")
    where = where.replace("\r", "\\r").replace("\n", "\\n").replace("\0", "\\0")
    if remote.state is EntryState.RESERVED:
        return f"master reserves local mailbox at {where}"
    return f"master places local mailbox at {where}"

"""The plan of ``mupdate-push``: what to send the master so it agrees with one backend.

Pure decisions over plain values (style.md §2, §6): no I/O, no Twisted, no clock. The
backend's own list and the master's ``LIST "<servername>!"`` are compared as *sets* keyed by
name, never by walking both in order, so the output order of either side cannot matter
(Cyrus's ``ctl_mboxlist -m`` walks them in parallel and aborts with "mupdate said not us
before it said us" when the orders differ, protocol doc §7.8, §10.3).

What the plan proposes (protocol doc §10.3, with our differences):

* every local mailbox that the master lacks, holds RESERVED, holds at another location of
  this server, or holds with a different ACL -> ``ACTIVATE name <servername>!<partition> acl``
  (Cyrus: "Force Activate").
* every entry the master places on this server that the backend lacks -> ``DELETE name``
  (Cyrus: "Remove from MUPDATE"; Cyrus does this with and without ``-a``, and so do we).
* a local mailbox the master places on *another* server (learnt by FIND) is a CONFLICT.
  Cyrus without ``-a`` deletes the LOCAL mailbox; with ``-a`` it re-activates it here. We
  never delete anything locally: a conflict is reported and left alone, unless its name is
  given to ``--take`` or ``--authoritative`` is set; then it is re-activated here (Cyrus
  ``-a``'s end state), and the report names the server it was taken from.
* the mass-delete brake: more DELETEs than ``max_delete_share`` of this server's entries on
  the master, and more than ``brake_minimum``, stop the whole plan unless ``force``.

Imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

from mupdate.db.order import sort_key
from mupdate.model import MailboxEntry, server_of

DEFAULT_MAX_DELETE_SHARE: Final = 0.5
DEFAULT_BRAKE_MINIMUM: Final = 10


@dataclass(frozen=True, slots=True)
class LocalMailbox:
    """One mailbox of the backend's own list: a real local mailbox (no tombstone,
    intermediate, reserved or remote record), its partition and its ACL as MUPDATE carries it
    (``id TAB rights TAB`` repeated, §11.3)."""

    name: bytes
    partition: bytes
    acl: bytes = b""


class Reason(Enum):
    """Why a mailbox is (re-)activated."""

    MISSING = "missing"  # the master does not have it at all
    RESERVED = "reserved"  # the master holds it RESERVED (here)
    LOCATION = "location"  # the master holds it on this server, another partition
    ACL = "acl"  # same location, different ACL
    TAKEN = "taken"  # the master places it on another server; --take / --authoritative


@dataclass(frozen=True, slots=True)
class Activation:
    name: bytes
    location: bytes
    acl: bytes
    reason: Reason
    previous: MailboxEntry | None = None  # what the master held before, if anything


@dataclass(frozen=True, slots=True)
class Deletion:
    name: bytes
    location: bytes  # where the master's LIST placed it (on this server)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A local mailbox that the master places on another server; left alone."""

    name: bytes
    location: bytes
    reserved: bool


@dataclass(frozen=True, slots=True)
class Brake:
    """The plan would delete ``deletions`` of the ``entries`` this server has on the master."""

    deletions: int
    entries: int
    max_share: float
    minimum: int

    def describe(self) -> str:
        return (
            f"the plan deletes {self.deletions} of this server's {self.entries} entries on the "
            f"master (more than {self.max_share:.0%} and more than {self.minimum}); "
            "nothing was changed; check the source, then repeat with --force"
        )


@dataclass(frozen=True, slots=True)
class PushOptions:
    servername: bytes
    authoritative: bool = False
    take: frozenset[bytes] = frozenset()
    max_delete_share: float = DEFAULT_MAX_DELETE_SHARE
    brake_minimum: int = DEFAULT_BRAKE_MINIMUM
    force: bool = False

    def __post_init__(self) -> None:
        if not self.servername or b"!" in self.servername:
            raise ValueError("the servername must be non-empty and hold no '!'")
        if not 0.0 <= self.max_delete_share <= 1.0:
            raise ValueError("max_delete_share must be between 0 and 1")
        if self.brake_minimum < 0:
            raise ValueError("brake_minimum must not be negative")


@dataclass(frozen=True, slots=True)
class Plan:
    activations: tuple[Activation, ...]
    deletions: tuple[Deletion, ...]
    conflicts: tuple[Conflict, ...]
    unchanged: int
    master_entries: int  # this server's entries in the master's LIST
    unused_takes: tuple[bytes, ...] = ()  # --take names that were no conflict
    brake: Brake | None = None  # set: stop before changing anything

    @property
    def changes(self) -> int:
        return len(self.activations) + len(self.deletions)


def location_for(servername: bytes, partition: bytes) -> bytes:
    """What Cyrus backends send: ``<servername>!<partition>`` (§10.2, §11.2)."""
    return servername + b"!" + partition


def _ours(entries: Iterable[MailboxEntry], servername: bytes) -> dict[bytes, MailboxEntry]:
    # LIST "be1!" is a byte prefix on the location (§5.7); keep only what names this server.
    return {e.name: e for e in entries if server_of(e.location) == servername}


def _local_map(local: Iterable[LocalMailbox]) -> dict[bytes, LocalMailbox]:
    result: dict[bytes, LocalMailbox] = {}
    for mailbox in local:
        if mailbox.name in result and result[mailbox.name] != mailbox:
            raise ValueError(f"the local list holds {mailbox.name!r} twice, differently")
        result[mailbox.name] = mailbox
    return result


def names_to_find(
    local: Iterable[LocalMailbox], master: Iterable[MailboxEntry], servername: bytes
) -> list[bytes]:
    """Local mailboxes that the master's LIST for this server does not hold, in key order.

    Each needs a FIND: missing (activate), or placed elsewhere (conflict). Made in every
    mode; ``--authoritative`` only changes what happens to a conflict."""
    listed = _ours(master, servername)
    return sorted((n for n in _local_map(local) if n not in listed), key=sort_key)


def _compare(mailbox: LocalMailbox, held: MailboxEntry | None, location: bytes) -> Reason | None:
    """None when the master's entry is exactly what the backend would send."""
    if held is None:
        return Reason.MISSING
    if not held.active:
        return Reason.RESERVED
    if held.location != location:
        return Reason.LOCATION
    if held.acl != mailbox.acl:
        return Reason.ACL
    return None


def make_plan(
    local: Iterable[LocalMailbox],
    master: Iterable[MailboxEntry],
    found: Mapping[bytes, MailboxEntry | None],
    options: PushOptions,
) -> Plan:
    """The plan; ``found`` holds the FIND answer for every name of ``names_to_find``.

    A name of ``names_to_find`` without an answer in ``found`` is a caller's bug (ValueError).
    """
    mine = _local_map(local)
    listed = _ours(master, options.servername)
    activations: list[Activation] = []
    conflicts: list[Conflict] = []
    unchanged = 0
    taken: set[bytes] = set()
    for name in sorted(mine, key=sort_key):
        mailbox = mine[name]
        location = location_for(options.servername, mailbox.partition)
        held = listed.get(name)
        if held is None:
            if name not in found:
                raise ValueError(f"no FIND answer for {name!r}")
            held = found[name]
            if held is not None and server_of(held.location) != options.servername:
                if name in options.take or options.authoritative:
                    taken.add(name)
                    activations.append(Activation(name, location, mailbox.acl, Reason.TAKEN, held))
                else:
                    conflicts.append(Conflict(name, held.location, not held.active))
                continue
        reason = _compare(mailbox, held, location)
        if reason is None:
            unchanged += 1
        else:
            activations.append(Activation(name, location, mailbox.acl, reason, held))
    deletions = tuple(
        Deletion(name, listed[name].location)
        for name in sorted(listed, key=sort_key)
        if name not in mine
    )
    brake = None
    if (
        not options.force
        and len(deletions) > options.brake_minimum
        and len(deletions) > options.max_delete_share * len(listed)
    ):
        brake = Brake(len(deletions), len(listed), options.max_delete_share, options.brake_minimum)
    return Plan(
        activations=tuple(activations),
        deletions=deletions,
        conflicts=tuple(conflicts),
        unchanged=unchanged,
        master_entries=len(listed),
        unused_takes=tuple(sorted(options.take - taken, key=sort_key)),
        brake=brake,
    )


def confirm_deletions(
    deletions: Iterable[Deletion], now: Mapping[bytes, MailboxEntry | None]
) -> tuple[list[Deletion], list[Deletion]]:
    """Split planned DELETEs by a FIND made just before sending them: (still there at the
    listed location -> send, gone or moved meanwhile -> skip).

    A DELETE carries no location (§5.12): an entry that an XFER moved to another server
    after our LIST would be deleted there, and a DELETE of a name already gone crashes a
    Cyrus master in standard mode (§7.1). The re-check narrows both windows to one round
    trip; it cannot close them."""
    send: list[Deletion] = []
    skip: list[Deletion] = []
    for deletion in deletions:
        entry = now.get(deletion.name)
        (send if entry is not None and entry.location == deletion.location else skip).append(
            deletion
        )
    return send, skip


# -- what people and scripts read -------------------------------------------------------


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def plan_lines(plan: Plan) -> list[str]:
    """The plan as ``ctl_mboxlist -m -w`` prints it, plus our own lines.

    ``Remove from MUPDATE: NAME`` first (Cyrus's step 3), then in key order
    ``Force Activate: NAME`` (preceded by ``Take: NAME from LOCATION`` for a taken conflict)
    and ``Conflict: NAME is at LOCATION``."""
    lines = [f"Remove from MUPDATE: {_text(d.name)}" for d in plan.deletions]
    merged: list[tuple[tuple[bytes, bytes], list[str]]] = []
    for a in plan.activations:
        text = [f"Force Activate: {_text(a.name)}"]
        if a.reason is Reason.TAKEN and a.previous is not None:
            text.insert(0, f"Take: {_text(a.name)} from {_text(a.previous.location)}")
        merged.append((sort_key(a.name), text))
    for c in plan.conflicts:
        state = " (reserved)" if c.reserved else ""
        merged.append(
            (sort_key(c.name), [f"Conflict: {_text(c.name)} is at {_text(c.location)}{state}"])
        )
    for _, text in sorted(merged, key=lambda item: item[0]):
        lines.extend(text)
    return lines


def plan_records(plan: Plan) -> list[dict[str, object]]:
    """The plan as JSON-ready objects, one per step, in the order of ``plan_lines``."""
    records: list[dict[str, object]] = [
        {"action": "delete", "name": _text(d.name), "location": _text(d.location)}
        for d in plan.deletions
    ]
    merged: list[tuple[tuple[bytes, bytes], dict[str, object]]] = []
    for a in plan.activations:
        record: dict[str, object] = {
            "action": "activate",
            "name": _text(a.name),
            "location": _text(a.location),
            "acl": _text(a.acl),
            "reason": a.reason.value,
        }
        if a.previous is not None:
            record["previous_location"] = _text(a.previous.location)
            record["previous_state"] = a.previous.state.value
        merged.append((sort_key(a.name), record))
    for c in plan.conflicts:
        merged.append(
            (
                sort_key(c.name),
                {
                    "action": "conflict",
                    "name": _text(c.name),
                    "location": _text(c.location),
                    "state": "reserved" if c.reserved else "active",
                },
            )
        )
    records.extend(record for _, record in sorted(merged, key=lambda item: item[0]))
    return records

"""The resync plan: the master's full list against the slave's copy, by set (§9.2, case 63).

Cyrus 3.6.1 merges the two lists as if both were in ``strcmp`` order, but both are in
mailboxes.db key order (§7.8); around names with bytes below ``.`` (space, ``-``...) it
deletes entries both sides hold (local ``{user.a.b, user.a-b}``, master ``{user.a-b}``
left Cyrus's slave empty). Here every name of ``local | remote`` is judged on its own by
the guard (``check_change``), so no order can lose a name; the plan's changes come out in
key order only so that the same inputs always give the same plan.

The plan is applied by the glue as ONE store transaction, after the brake (``brake.py``).
Pure; imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from mupdate.db.order import sort_key
from mupdate.db.store import Change, RemoveEntry
from mupdate.model import MailboxEntry
from mupdate.slave.guard import Accept, GuardRefusal, LocalFacts, check_change


@dataclass(frozen=True, slots=True)
class ResyncPlan:
    """What a resync does; the counts describe ``changes``.

    ``changes``: PutEntry / RemoveEntry in key order, for one store transaction.
    ``refused``: local mailboxes kept against the master's list (log and count each).
    ``heal``: local entries the master lacks entirely, to re-announce (RESERVE, then
    ACTIVATE when the entry is active) at their own location, written ``server!partition``.
    """

    changes: tuple[Change, ...]
    refused: tuple[GuardRefusal, ...]
    heal: tuple[MailboxEntry, ...]
    added: int
    updated: int
    removed: int

    def is_noop(self) -> bool:
        """Nothing to write to the store (refusals and healing may still need reporting)."""
        return not self.changes


def plan_resync(
    local: Mapping[bytes, MailboxEntry],
    remote: Mapping[bytes, MailboxEntry],
    facts: LocalFacts,
    *,
    own_servername: bytes = b"",
) -> ResyncPlan:
    """Plan the merge of the master's list ``remote`` into the slave's copy ``local``.

    Both map names to entries. Each name of either side goes through ``check_change``.
    A refused name the master does not list at all, held in ``local`` at a location we own
    (``facts.owns_location``), is also in ``heal``; a name the master holds elsewhere is a
    conflict, reported in ``refused`` and never healed, and a name known only by
    ``on_disk`` (no entry) has nothing to re-announce. A heal entry stored in Cyrus's local
    form (a bare partition, no ``!``) is re-announced at ``own_servername!partition``; when
    ``own_servername`` is empty such entries are left out of ``heal`` (still in
    ``refused``), since the master would read a bare partition as a server name.
    """
    changes: list[Change] = []
    refused: list[GuardRefusal] = []
    heal: list[MailboxEntry] = []
    added = updated = removed = 0
    for name in sorted(local.keys() | remote.keys(), key=sort_key):
        held, said = local.get(name), remote.get(name)
        verdict = check_change(name, held, said, facts)
        if isinstance(verdict, Accept):
            if verdict.change is None:
                continue
            changes.append(verdict.change)
            if isinstance(verdict.change, RemoveEntry):
                removed += 1
            elif held is None:
                added += 1
            else:
                updated += 1
            continue
        refused.append(verdict)
        if said is None and held is not None:
            announced = _heal_entry(held, facts, own_servername)
            if announced is not None:
                heal.append(announced)
    return ResyncPlan(tuple(changes), tuple(refused), tuple(heal), added, updated, removed)


def _heal_entry(
    held: MailboxEntry, facts: LocalFacts, own_servername: bytes
) -> MailboxEntry | None:
    if not facts.owns_location(held.location):
        return None  # local by on_disk alone: not sure enough to tell the master where it is
    if b"!" in held.location:
        return held
    if not own_servername:
        return None
    return replace(held, location=own_servername + b"!" + held.location)


@dataclass(frozen=True, slots=True)
class Deferral:
    """``plan`` without the removals still waiting for confirmation; ``missing`` the names
    (with when first seen missing) to carry to the next resync."""

    plan: ResyncPlan
    missing: dict[bytes, float]
    deferred: int


def defer_removals(
    plan: ResyncPlan, missing: Mapping[bytes, float], now: float, delay: float
) -> Deferral:
    """Apply a removal only when the name was already missing from a resync ``delay`` ago.

    A master refilled after losing its list (by healing slaves and pushing backends) lists
    a while later what it lacks now; a frontend that resyncs in between must not drop those
    mailboxes for that while. A name missing once is kept and remembered; a later resync
    that still misses it, at least ``delay`` seconds after, removes it; a resync that lists
    it again forgets it. ``delay`` 0 applies every removal at once.
    """
    if delay <= 0:
        return Deferral(plan, {}, 0)
    kept: list[Change] = []
    carried: dict[bytes, float] = {}
    deferred = 0
    for change in plan.changes:
        if not isinstance(change, RemoveEntry):
            kept.append(change)
            continue
        first = missing.get(change.name, now)
        if now - first >= delay:
            kept.append(change)
        else:
            carried[change.name] = first
            deferred += 1
    if not deferred:
        return Deferral(plan, {}, 0)
    return Deferral(
        replace(plan, changes=tuple(kept), removed=plan.removed - deferred), carried, deferred
    )

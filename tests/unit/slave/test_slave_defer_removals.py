"""Removals a resync finds wait for a later resync that confirms them (defer_removals).

The seed-001 case: a master that lost its list is refilled piece by piece (healing unified
slaves, pushing backends); a frontend resyncing in between must not drop the mailboxes of
the pieces that have not come back yet.
"""

from __future__ import annotations

from mupdate.db.store import PutEntry, RemoveEntry
from mupdate.model import EntryState, MailboxEntry
from mupdate.slave.guard import LocalFacts
from mupdate.slave.resync import defer_removals, plan_resync

STANDARD = LocalFacts(False, frozenset({"fe"}))


def active(name: bytes, location: bytes = b"be1!default") -> MailboxEntry:
    return MailboxEntry(name, EntryState.ACTIVE, location, b"u\tlrs\t")


def names(changes: object) -> list[tuple[str, bytes]]:
    assert isinstance(changes, tuple)
    return [
        ("put", c.entry.name) if isinstance(c, PutEntry) else ("remove", c.name)
        for c in changes
        if isinstance(c, PutEntry | RemoveEntry)
    ]


def test_a_first_miss_keeps_the_entry_and_remembers_when() -> None:
    local = {b"a": active(b"a"), b"b": active(b"b")}
    plan = plan_resync(local, {b"a": active(b"a")}, STANDARD)
    deferral = defer_removals(plan, {}, now=100.0, delay=30.0)
    assert deferral.deferred == 1
    assert names(deferral.plan.changes) == []
    assert deferral.plan.removed == 0
    assert deferral.missing == {b"b": 100.0}


def test_a_miss_confirmed_after_the_delay_is_removed_and_forgotten() -> None:
    local = {b"a": active(b"a"), b"b": active(b"b")}
    plan = plan_resync(local, {b"a": active(b"a")}, STANDARD)
    early = defer_removals(plan, {b"b": 100.0}, now=129.0, delay=30.0)
    assert early.deferred == 1
    assert early.missing == {b"b": 100.0}  # first seen missing then: the clock keeps running
    late = defer_removals(plan, {b"b": 100.0}, now=130.0, delay=30.0)
    assert late.deferred == 0
    assert names(late.plan.changes) == [("remove", b"b")]
    assert late.plan.removed == 1
    assert late.missing == {}


def test_a_name_listed_again_is_forgotten() -> None:
    local = {b"a": active(b"a"), b"b": active(b"b")}
    plan = plan_resync(local, {b"a": active(b"a"), b"b": active(b"b")}, STANDARD)
    deferral = defer_removals(plan, {b"b": 100.0}, now=500.0, delay=30.0)
    assert deferral.deferred == 0
    assert deferral.missing == {}


def test_adds_and_updates_are_never_deferred() -> None:
    local = {b"b": active(b"b"), b"c": active(b"c")}
    remote = {b"a": active(b"a"), b"c": active(b"c", b"be2!default")}
    plan = plan_resync(local, remote, STANDARD)
    deferral = defer_removals(plan, {}, now=1.0, delay=30.0)
    assert names(deferral.plan.changes) == [("put", b"a"), ("put", b"c")]
    assert (deferral.plan.added, deferral.plan.updated) == (plan.added, plan.updated)
    assert deferral.missing == {b"b": 1.0}


def test_no_delay_applies_every_removal_at_once() -> None:
    local = {b"a": active(b"a"), b"b": active(b"b")}
    plan = plan_resync(local, {}, STANDARD)
    deferral = defer_removals(plan, {}, now=1.0, delay=0.0)
    assert deferral.plan == plan
    assert deferral.deferred == 0

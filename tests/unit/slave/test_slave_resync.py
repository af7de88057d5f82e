"""The resync plan: by set, through the guard, in key order, with healing (§9.2, §9.3).

Conformance cases 63 (Cyrus's ordered-merge loss) and 65 (unified guard); seed 000 (a
master that lost its database).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from mupdate.db.order import mailbox_key, sort_key
from mupdate.db.store import Change, PutEntry, RemoveEntry
from mupdate.model import EntryState, MailboxEntry
from mupdate.slave.guard import NOT_LISTED, GuardRefusal, LocalFacts
from mupdate.slave.resync import ResyncPlan, plan_resync

ACL = b"alice\tlrswipkxtecdan\t"
ACL2 = b"alice\tlrs\t"
OWN = frozenset({"be1", "be1-replica"})
UNIFIED = LocalFacts(True, OWN)
STANDARD = LocalFacts(False, OWN)


def active(name: bytes, location: bytes, acl: bytes = ACL) -> MailboxEntry:
    return MailboxEntry(name, EntryState.ACTIVE, location, acl)


def reserved(name: bytes, location: bytes) -> MailboxEntry:
    return MailboxEntry(name, EntryState.RESERVED, location)


def listing(*entries: MailboxEntry) -> dict[bytes, MailboxEntry]:
    return {e.name: e for e in entries}


def applied(
    local: Mapping[bytes, MailboxEntry], changes: tuple[Change, ...]
) -> dict[bytes, MailboxEntry]:
    result = dict(local)
    for change in changes:
        if isinstance(change, PutEntry):
            result[change.entry.name] = change.entry
        else:
            assert isinstance(change, RemoveEntry)
            assert change.tombstone is None
            result.pop(change.name, None)
    return result


def changed_name(change: Change) -> bytes:
    assert isinstance(change, PutEntry | RemoveEntry)
    return change.entry.name if isinstance(change, PutEntry) else change.name


def on_disk_of(*names: bytes) -> LocalFacts:
    held = frozenset(names)
    return LocalFacts(True, OWN, held.__contains__)


def test_case_63_set_merge_keeps_name_both_sides_hold() -> None:
    local = listing(active(b"user.a.b", b"be2!p"), active(b"user.a-b", b"be2!p"))
    remote = listing(active(b"user.a-b", b"be2!p"))
    for facts in (STANDARD, UNIFIED):
        plan = plan_resync(local, remote, facts)
        assert plan.changes == (RemoveEntry(b"user.a.b", None),)
        assert applied(local, plan.changes) == remote


def test_case_65_cyrus_observed_guard_keeps_unlisted_and_misplaced_local_mailboxes() -> None:
    loc1, loc2 = active(b"user.loc1", b"default"), active(b"user.loc2", b"default")
    elsewhere = active(b"user.loc2", b"be9!p9")
    plan = plan_resync(listing(loc1, loc2), listing(elsewhere), UNIFIED, own_servername=b"be1")
    assert plan.changes == ()
    assert plan.refused == (
        GuardRefusal(b"user.loc1", loc1, None, NOT_LISTED),
        GuardRefusal(b"user.loc2", loc2, elsewhere, "master places local mailbox at be9!p9"),
    )
    assert plan.heal == (active(b"user.loc1", b"be1!default"),)  # loc2 is a conflict: not healed


def test_counts_added_updated_removed() -> None:
    local = listing(
        active(b"user.same", b"be2!p"),
        active(b"user.acl", b"be2!p"),
        active(b"user.moved", b"be2!p"),
        active(b"user.gone", b"be2!p"),
        active(b"user.gone2", b"be3!p"),
    )
    remote = listing(
        active(b"user.same", b"be2!p"),
        active(b"user.acl", b"be2!p", ACL2),
        reserved(b"user.moved", b"be3!p"),
        active(b"user.new", b"be2!p"),
        reserved(b"user.new2", b"be2!p"),
    )
    plan = plan_resync(local, remote, STANDARD)
    assert (plan.added, plan.updated, plan.removed) == (2, 2, 2)
    assert len(plan.changes) == 6
    assert plan.refused == ()
    assert plan.heal == ()
    assert not plan.is_noop()
    assert applied(local, plan.changes) == remote


def test_changes_come_in_mailbox_key_order() -> None:
    names = [
        b"user.a b",
        b"user.a.b",
        b"user.a-b",
        b"user.a^b",
        b"user.a",
        b"user.ab",
        b"x!user.a",
        b"user.a!b",
    ]
    remote = listing(*(active(n, b"be2!p") for n in names))
    plan = plan_resync({}, remote, STANDARD)
    order = [c.entry.name for c in plan.changes if isinstance(c, PutEntry)]
    assert order == sorted(names, key=sort_key)
    assert [mailbox_key(n) for n in order] == sorted(mailbox_key(n) for n in names)


def test_refusals_and_heal_come_in_mailbox_key_order() -> None:
    names = [b"user.b", b"user.a.b", b"user.a-b", b"user.a b"]
    plan = plan_resync(listing(*(active(n, b"be1!p") for n in names)), {}, UNIFIED)
    assert [r.name for r in plan.refused] == sorted(names, key=sort_key)
    assert [e.name for e in plan.heal] == sorted(names, key=sort_key)


def test_same_lists_are_a_noop() -> None:
    both = listing(active(b"user.a", b"be2!p"), reserved(b"user.b", b"be1!p"))
    plan = plan_resync(both, dict(both), UNIFIED)
    assert plan == ResyncPlan((), (), (), 0, 0, 0)
    assert plan.is_noop()


def test_refusals_alone_leave_nothing_to_apply() -> None:
    plan = plan_resync(listing(active(b"user.a", b"be1!p")), {}, UNIFIED)
    assert plan.is_noop()
    assert len(plan.refused) == 1
    assert plan.heal == (active(b"user.a", b"be1!p"),)


def test_heal_rewrites_local_form_to_own_servername() -> None:
    plan = plan_resync(listing(active(b"user.a", b"default")), {}, UNIFIED, own_servername=b"be1")
    assert plan.heal == (active(b"user.a", b"be1!default"),)


def test_heal_keeps_a_location_that_names_its_server() -> None:
    local = listing(active(b"user.a", b"BE1-Replica!p2"), active(b"user.b", b"be1!"))
    plan = plan_resync(local, {}, UNIFIED, own_servername=b"be1")
    assert plan.heal == (local[b"user.a"], local[b"user.b"])


def test_heal_skips_local_form_without_own_servername() -> None:
    local = listing(active(b"user.a", b"default"))
    plan = plan_resync(local, {}, UNIFIED)
    assert plan.heal == ()
    assert [r.name for r in plan.refused] == [b"user.a"]


def test_heal_keeps_reserved_state_and_empty_acl() -> None:
    plan = plan_resync(listing(reserved(b"user.a", b"p1")), {}, UNIFIED, own_servername=b"be1")
    assert plan.heal == (reserved(b"user.a", b"be1!p1"),)


def test_heal_skips_entries_local_by_disk_alone() -> None:
    facts = on_disk_of(b"user.elsewhere", b"user.unheld")
    local = listing(active(b"user.elsewhere", b"be9!p9"))
    plan = plan_resync(local, {}, facts, own_servername=b"be1")
    assert [r.name for r in plan.refused] == [b"user.elsewhere"]
    assert plan.heal == ()
    assert plan.changes == ()


def test_heal_skips_conflicts_with_another_server() -> None:
    local = listing(active(b"user.a", b"be1!p"))
    remote = listing(reserved(b"user.a", b"be9!p9"))
    plan = plan_resync(local, remote, UNIFIED, own_servername=b"be1")
    assert plan.refused == (
        GuardRefusal(
            b"user.a",
            local[b"user.a"],
            remote[b"user.a"],
            "master reserves local mailbox at be9!p9",
        ),
    )
    assert plan.heal == ()


def test_master_listing_local_mailbox_at_own_server_is_applied_not_healed() -> None:
    local = listing(active(b"user.a", b"be1!p"))
    remote = listing(active(b"user.a", b"be1!p2", ACL2))
    plan = plan_resync(local, remote, UNIFIED, own_servername=b"be1")
    assert plan.changes == (PutEntry(remote[b"user.a"]),)
    assert (plan.refused, plan.heal, plan.updated) == ((), (), 1)


def test_echo_of_local_form_record_is_left_alone() -> None:
    local = listing(active(b"user.a", b"default"))
    remote = listing(active(b"user.a", b"be1!default"))
    assert plan_resync(local, remote, UNIFIED, own_servername=b"be1") == ResyncPlan(
        (), (), (), 0, 0, 0
    )


def test_standard_mode_makes_the_copy_equal_the_master_and_never_heals() -> None:
    local = listing(
        active(b"user.a", b"be1!p"), active(b"user.b", b"default"), active(b"user.c", b"be2!p")
    )
    remote = listing(active(b"user.c", b"be9!p"), active(b"user.d", b"be1!p"))
    plan = plan_resync(local, remote, STANDARD, own_servername=b"be1")
    assert applied(local, plan.changes) == remote
    assert (plan.refused, plan.heal) == ((), ())
    assert (plan.added, plan.updated, plan.removed) == (1, 1, 2)


def test_seed_000_master_lost_database_unified_backend_keeps_local_mailboxes() -> None:
    own = [
        active(b"user.alice", b"default"),
        active(b"user.bob", b"be1!p2"),
        reserved(b"user.new", b"default"),
    ]
    alias = [active(b"user.rep", b"BE1-REPLICA!default")]
    disk_only = [active(b"user.xfer", b"be9!p9")]
    others = [active(f"user.u{i:02}".encode(), b"be2!default") for i in range(30)]
    local = listing(*own, *alias, *disk_only, *others)
    facts = LocalFacts(True, OWN, frozenset({b"user.xfer"}).__contains__)

    plan = plan_resync(local, {}, facts, own_servername=b"be1")

    assert plan.changes == tuple(RemoveEntry(e.name, None) for e in others)
    assert (plan.added, plan.updated, plan.removed) == (0, 0, 30)
    kept = own + alias + disk_only
    assert applied(local, plan.changes) == listing(*kept)
    assert {r.name for r in plan.refused} == {e.name for e in kept}
    assert all(r.master_said is None and r.reason == NOT_LISTED for r in plan.refused)
    assert set(plan.heal) == {
        active(b"user.alice", b"be1!default"),
        active(b"user.bob", b"be1!p2"),
        reserved(b"user.new", b"be1!default"),
        active(b"user.rep", b"BE1-REPLICA!default"),
    }


# -- property: by set, whatever the order ---------------------------------------------------

NAMES = st.text(alphabet="ab.- ^", min_size=1, max_size=4).map(lambda t: b"user." + t.encode())
LOCATIONS = st.sampled_from(
    [b"be1!default", b"BE1-replica!p2", b"default", b"be2!p2", b"be3!p3", b"be2"]
)


@st.composite
def entries(draw: st.DrawFn) -> dict[bytes, MailboxEntry]:
    result: dict[bytes, MailboxEntry] = {}
    for name in draw(st.lists(NAMES, max_size=12, unique=True)):
        location = draw(LOCATIONS)
        if draw(st.booleans()):
            result[name] = reserved(name, location)
        else:
            result[name] = active(name, location, draw(st.sampled_from([ACL, ACL2, b""])))
    return result


@given(
    local=entries(),
    remote=entries(),
    disk=st.frozensets(NAMES, max_size=6),
    unified=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_plan_applied_follows_master_except_local_names_whatever_the_order(
    local: dict[bytes, MailboxEntry],
    remote: dict[bytes, MailboxEntry],
    disk: frozenset[bytes],
    unified: bool,
    order: random.Random,
) -> None:
    facts = LocalFacts(unified, OWN, disk.__contains__)
    plan = plan_resync(local, remote, facts, own_servername=b"be1")
    result = applied(local, plan.changes)

    for name in local.keys() | remote.keys():
        if facts.is_local(name, local.get(name)):
            if name in local:
                assert name in result
        else:
            assert result.get(name) == remote.get(name)
    if not unified:
        assert result == remote
        assert (plan.refused, plan.heal) == ((), ())

    changed = [changed_name(c) for c in plan.changes]
    assert changed == sorted(set(changed), key=sort_key)
    assert plan.removed == sum(isinstance(c, RemoveEntry) for c in plan.changes)
    assert plan.added + plan.updated + plan.removed == len(plan.changes)
    assert {e.name for e in plan.heal} <= {r.name for r in plan.refused}
    assert all(b"!" in e.location for e in plan.heal)

    shuffled_local = list(local.items())
    shuffled_remote = list(remote.items())
    order.shuffle(shuffled_local)
    order.shuffle(shuffled_remote)
    assert (
        plan_resync(dict(shuffled_local), dict(shuffled_remote), facts, own_servername=b"be1")
        == plan
    )

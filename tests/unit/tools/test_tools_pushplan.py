"""The pure plan of ``mupdate-push`` (``mupdate.tools.pushplan``; protocol doc §10.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mupdate.db.order import sort_key
from mupdate.model import EntryState, MailboxEntry
from mupdate.tools.pushplan import (
    Activation,
    Conflict,
    Deletion,
    LocalMailbox,
    PushOptions,
    Reason,
    confirm_deletions,
    location_for,
    make_plan,
    names_to_find,
    plan_lines,
    plan_records,
)

SERVER = b"be1"
ACL = b"carol\tlrswipkxtecdan\t"
ACL2 = b"carol\tlrswipkxtecdan\tbob\tlrs\t"


def local(name: bytes, partition: bytes = b"default", acl: bytes = ACL) -> LocalMailbox:
    return LocalMailbox(name, partition, acl)


def active(name: bytes, location: bytes = b"be1!default", acl: bytes = ACL) -> MailboxEntry:
    return MailboxEntry(name, EntryState.ACTIVE, location, acl)


def reserved(name: bytes, location: bytes = b"be1!default") -> MailboxEntry:
    return MailboxEntry(name, EntryState.RESERVED, location)


@dataclass
class Case:
    local: list[LocalMailbox]
    listed: list[MailboxEntry]
    found: dict[bytes, MailboxEntry | None] = field(default_factory=dict)
    take: tuple[bytes, ...] = ()
    authoritative: bool = False
    activations: list[tuple[bytes, bytes, bytes, Reason]] = field(default_factory=list)
    deletions: list[bytes] = field(default_factory=list)
    conflicts: list[tuple[bytes, bytes]] = field(default_factory=list)
    unchanged: int = 0


CASES = {
    "in_sync": Case([local(b"user.a")], [active(b"user.a")], unchanged=1),
    "missing_on_master": Case(
        [local(b"user.a")],
        [],
        found={b"user.a": None},
        activations=[(b"user.a", b"be1!default", ACL, Reason.MISSING)],
    ),
    "differs_by_acl": Case(
        [local(b"user.a", acl=ACL2)],
        [active(b"user.a")],
        activations=[(b"user.a", b"be1!default", ACL2, Reason.ACL)],
    ),
    "acl_trailing_tab_is_significant": Case(
        [local(b"user.a", acl=b"carol\tlrs")],
        [active(b"user.a", acl=b"carol\tlrs\t")],
        activations=[(b"user.a", b"be1!default", b"carol\tlrs", Reason.ACL)],
    ),
    "differs_by_partition": Case(
        [local(b"user.a", partition=b"p2")],
        [active(b"user.a")],
        activations=[(b"user.a", b"be1!p2", ACL, Reason.LOCATION)],
    ),
    "empty_partition_from_rename_bug": Case(
        [local(b"user.a")],
        [active(b"user.a", location=b"be1!")],
        activations=[(b"user.a", b"be1!default", ACL, Reason.LOCATION)],
    ),
    "reserved_on_master": Case(
        [local(b"user.a")],
        [reserved(b"user.a")],
        activations=[(b"user.a", b"be1!default", ACL, Reason.RESERVED)],
    ),
    "master_has_extra": Case(
        [local(b"user.a")],
        [active(b"user.a"), active(b"user.ghost")],
        deletions=[b"user.ghost"],
        unchanged=1,
    ),
    "master_has_extra_reserved": Case([], [reserved(b"user.r")], deletions=[b"user.r"]),
    "conflict_left_alone": Case(
        [local(b"user.a")],
        [],
        found={b"user.a": active(b"user.a", location=b"be2!default")},
        conflicts=[(b"user.a", b"be2!default")],
    ),
    "conflict_reserved_elsewhere": Case(
        [local(b"user.a")],
        [],
        found={b"user.a": reserved(b"user.a", location=b"be2!p")},
        conflicts=[(b"user.a", b"be2!p")],
    ),
    "take_overrides_conflict": Case(
        [local(b"user.a")],
        [],
        found={b"user.a": active(b"user.a", location=b"be2!default")},
        take=(b"user.a",),
        activations=[(b"user.a", b"be1!default", ACL, Reason.TAKEN)],
    ),
    "authoritative_takes_every_conflict": Case(
        [local(b"user.a"), local(b"user.b")],
        [],
        found={b"user.a": active(b"user.a", location=b"be2!x"), b"user.b": None},
        authoritative=True,
        activations=[
            (b"user.a", b"be1!default", ACL, Reason.TAKEN),
            (b"user.b", b"be1!default", ACL, Reason.MISSING),
        ],
    ),
    "authoritative_still_deletes_from_master": Case(
        [], [active(b"user.ghost")], authoritative=True, deletions=[b"user.ghost"]
    ),
    "found_at_own_server_outside_list": Case(
        # e.g. location "be1" without "!": not in LIST "be1!", but ours (Cyrus aborts here)
        [local(b"user.a")],
        [],
        found={b"user.a": active(b"user.a", location=b"be1")},
        activations=[(b"user.a", b"be1!default", ACL, Reason.LOCATION)],
    ),
    "list_prefix_match_of_other_server_ignored": Case(
        # LIST "be1!" is a byte prefix; an entry at be10 can never come back, but if it did
        [local(b"user.a")],
        [active(b"user.x", location=b"be10!default")],
        found={b"user.a": None},
        activations=[(b"user.a", b"be1!default", ACL, Reason.MISSING)],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan_cases(case: Case) -> None:
    options = PushOptions(SERVER, case.authoritative, frozenset(case.take))
    plan = make_plan(case.local, case.listed, case.found, options)
    assert [(a.name, a.location, a.acl, a.reason) for a in plan.activations] == case.activations
    assert [d.name for d in plan.deletions] == case.deletions
    assert [(c.name, c.location) for c in plan.conflicts] == case.conflicts
    assert plan.unchanged == case.unchanged
    assert plan.brake is None


def test_names_to_find_are_locals_missing_from_the_list_in_key_order() -> None:
    names = [b"user.carol-x", b"user.carol.a^b", b"user.carol", b"user.carol.Sent"]
    got = names_to_find([local(n) for n in names], [active(b"user.carol.Sent")], SERVER)
    assert got == [b"user.carol", b"user.carol.a^b", b"user.carol-x"]


def test_key_order_not_byte_order() -> None:
    """``user.carol-x`` sorts after ``user.carol.*`` in Cyrus key order (§7.8), before in
    strcmp order. The plan is made by set, so any master order gives the same plan, and
    the output follows key order."""
    names = [b"user.carol", b"user.carol.a^b", b"user.carol-x", b"user.carol.Sent"]
    assert sorted(names) != sorted(names, key=sort_key)
    listed = [active(b"user.carol-x"), active(b"user.carol.a^b", acl=b"x\ty\t")]
    found = {b"user.carol": None, b"user.carol.Sent": None}
    options = PushOptions(SERVER)
    plans = [
        make_plan([local(n) for n in order], master, found, options)
        for order in (names, names[::-1], sorted(names))
        for master in (listed, listed[::-1])
    ]
    assert all(p == plans[0] for p in plans)
    assert [a.name for a in plans[0].activations] == [
        b"user.carol",
        b"user.carol.Sent",
        b"user.carol.a^b",
    ]
    assert plans[0].unchanged == 1
    assert plan_lines(plans[0]) == [
        "Force Activate: user.carol",
        "Force Activate: user.carol.Sent",
        "Force Activate: user.carol.a^b",
    ]


def test_every_name_to_find_needs_an_answer() -> None:
    with pytest.raises(ValueError, match="no FIND answer"):
        make_plan([local(b"user.a")], [], {}, PushOptions(SERVER))


def test_local_duplicate_that_differs_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        make_plan([local(b"a"), local(b"a", b"p2")], [active(b"a")], {}, PushOptions(SERVER))


def test_unused_takes_are_reported() -> None:
    plan = make_plan(
        [local(b"user.a")],
        [active(b"user.a")],
        {},
        PushOptions(SERVER, take=frozenset({b"user.a", b"user.zz"})),
    )
    assert plan.unused_takes == (b"user.a", b"user.zz")
    assert plan.activations == ()


# -- the mass-delete brake ----------------------------------------------------------------


def _master(count: int) -> list[MailboxEntry]:
    return [active(b"user.m%03d" % i) for i in range(count)]


@pytest.mark.parametrize(
    ("entries", "kept", "force", "share", "minimum", "stops"),
    [
        (40, 0, False, 0.5, 10, True),  # 40 of 40
        (40, 19, False, 0.5, 10, True),  # 21 of 40 > 50%
        (40, 20, False, 0.5, 10, False),  # 20 of 40 = 50%: not more
        (40, 0, True, 0.5, 10, False),  # --force
        (10, 0, False, 0.5, 10, False),  # 10 deletions: not more than the minimum
        (11, 0, False, 0.5, 10, True),
        (40, 35, False, 0.1, 0, True),  # 5 of 40 = 12.5% > 10%, and 5 > 0
        (40, 30, False, 0.2, 0, True),  # 10 of 40 = 25% > 20%
        (0, 0, False, 0.5, 10, False),  # nothing on the master
    ],
)
def test_brake(
    entries: int, kept: int, force: bool, share: float, minimum: int, stops: bool
) -> None:
    master = _master(entries)
    locals_ = [local(e.name) for e in master[:kept]]
    options = PushOptions(SERVER, max_delete_share=share, brake_minimum=minimum, force=force)
    plan = make_plan(locals_, master, {}, options)
    assert len(plan.deletions) == entries - kept
    assert (plan.brake is not None) is stops
    if plan.brake is not None:
        assert plan.brake.deletions == entries - kept
        assert plan.brake.entries == entries
        assert "--force" in plan.brake.describe()


def test_brake_counts_only_this_servers_entries() -> None:
    master = [*_master(12), active(b"user.other", location=b"be2!default")]
    plan = make_plan([], master, {}, PushOptions(SERVER))
    assert plan.master_entries == 12
    assert plan.brake is not None
    assert plan.brake.entries == 12


@pytest.mark.parametrize(
    "bad",
    [
        {"servername": b""},
        {"servername": b"be1!x"},
        {"servername": SERVER, "max_delete_share": 1.5},
        {"servername": SERVER, "brake_minimum": -1},
    ],
)
def test_options_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"servername|max_delete_share|brake_minimum"):
        PushOptions(**bad)  # type: ignore[arg-type]


# -- re-check before DELETE ---------------------------------------------------------------


def test_confirm_deletions_skips_gone_and_moved() -> None:
    planned = [
        Deletion(b"still", b"be1!default"),
        Deletion(b"gone", b"be1!default"),
        Deletion(b"moved", b"be1!default"),
        Deletion(b"now_reserved_here", b"be1!default"),
    ]
    now = {
        b"still": active(b"still"),
        b"gone": None,
        b"moved": active(b"moved", location=b"be2!default"),
        b"now_reserved_here": reserved(b"now_reserved_here"),
    }
    send, skip = confirm_deletions(planned, now)
    assert [d.name for d in send] == [b"still", b"now_reserved_here"]
    assert [d.name for d in skip] == [b"gone", b"moved"]


# -- output -------------------------------------------------------------------------------


def test_lines_and_records_like_ctl_mboxlist_w() -> None:
    """The §10.3 observed scenario: ghost on the master, onp2 missing, a^b elsewhere,
    user.carol RESERVED there."""
    locals_ = [
        local(b"DELETED.user.carol.6B0"),
        local(b"user.carol"),
        local(b"user.carol.a^b"),
        local(b"user.carol.onp2", b"p2"),
    ]
    listed = [
        active(b"DELETED.user.carol.6B0", location=b"be1!"),
        reserved(b"user.carol"),
        active(b"user.ghost"),
    ]
    found = {b"user.carol.a^b": active(b"user.carol.a^b", b"be2!default"), b"user.carol.onp2": None}
    plan = make_plan(locals_, listed, found, PushOptions(SERVER))
    assert plan_lines(plan) == [
        "Remove from MUPDATE: user.ghost",
        "Force Activate: DELETED.user.carol.6B0",
        "Force Activate: user.carol",
        "Conflict: user.carol.a^b is at be2!default",
        "Force Activate: user.carol.onp2",
    ]
    taken = make_plan(locals_, listed, found, PushOptions(SERVER, authoritative=True))
    assert plan_lines(taken)[3:5] == [
        "Take: user.carol.a^b from be2!default",
        "Force Activate: user.carol.a^b",
    ]
    records = plan_records(plan)
    assert records[0] == {"action": "delete", "name": "user.ghost", "location": "be1!default"}
    assert records[2] == {
        "action": "activate",
        "name": "user.carol",
        "location": "be1!default",
        "acl": ACL.decode(),
        "reason": "reserved",
        "previous_location": "be1!default",
        "previous_state": "reserved",
    }
    assert records[3] == {
        "action": "conflict",
        "name": "user.carol.a^b",
        "location": "be2!default",
        "state": "active",
    }


def test_odd_bytes_survive_to_output() -> None:
    plan = make_plan([local(b"user.\xff x")], [], {b"user.\xff x": None}, PushOptions(SERVER))
    assert plan.activations == (Activation(b"user.\xff x", b"be1!default", ACL, Reason.MISSING),)
    assert plan_lines(plan) == ["Force Activate: user.\\xff x"]
    assert location_for(b"be1", b"") == b"be1!"
    assert Conflict(b"a", b"b", False) == Conflict(b"a", b"b", False)

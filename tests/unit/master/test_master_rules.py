"""The master's write rules: every (command x entry state x location x tombstone) cell.

Protocol doc §7.1 (Cyrus's table), §7.3 and §15 (where we differ), conformance cases 42-53.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mupdate.db.index import MailboxIndex
from mupdate.db.store import PutEntry, RemoveEntry
from mupdate.master.rules import (
    ALREADY_EXISTS,
    DOES_NOT_EXIST,
    INVALID_NAME,
    NOT_ACTIVE,
    Apply,
    Decision,
    Refuse,
    Unchanged,
    WriteCommand,
    decide,
)
from mupdate.model import EntryState, MailboxEntry, Tombstone
from mupdate.protocol.commands import Activate, Deactivate, Delete, Reserve

NOW = 1_000_000.0
WINDOW = 300.0
N = b"user.alice"
L = b"be1!default"
L2 = b"be2!default"
ACL = b"alice\tlrswipkxtecdan\t"
ACL2 = b"alice\tlrs\t"

RESERVED_HERE = MailboxEntry(N, EntryState.RESERVED, L)
RESERVED_ELSEWHERE = MailboxEntry(N, EntryState.RESERVED, L2)
ACTIVE_HERE = MailboxEntry(N, EntryState.ACTIVE, L, ACL)
ACTIVE_ELSEWHERE = MailboxEntry(N, EntryState.ACTIVE, L2, ACL)

FRESH = Tombstone(N, L2, NOW - 10)
EXPIRED = Tombstone(N, L2, NOW - WINDOW - 1)
TOMBSTONES = {"no tombstone": None, "fresh tombstone": FRESH, "expired tombstone": EXPIRED}

RESERVE = Reserve(b"X0", N, L)
ACTIVATE = Activate(b"X1", N, L, ACL)
ACTIVATE_NEW_ACL = Activate(b"X1", N, L, ACL2)
DEACTIVATE = Deactivate(b"X2", N, L)
DELETE = Delete(b"X3", N)

NOW_RESERVED = MailboxEntry(N, EntryState.RESERVED, L)
NOW_ACTIVE = MailboxEntry(N, EntryState.ACTIVE, L, ACL)


def put(old: MailboxEntry | None, new: MailboxEntry) -> Apply:
    return Apply(PutEntry(new), old, new)


def removed(old: MailboxEntry) -> Apply:
    return Apply(RemoveEntry(N, Tombstone(N, old.location, NOW)), old, None)


@dataclass(frozen=True)
class Row:
    behaviour: str
    command: WriteCommand
    current: MailboxEntry | None
    expected: Decision
    tombstones: tuple[str, ...] = tuple(TOMBSTONES)  # the tombstone changes nothing here


# Every command against every current state; "here" is the command's location L.
TABLE = [
    Row("reserve_free_name_creates_reserved_entry", RESERVE, None, put(None, NOW_RESERVED)),
    Row("reserve_same_location_keeps_reserved_entry", RESERVE, RESERVED_HERE, Unchanged()),
    Row("reserve_other_location_refused_when_reserved", RESERVE, RESERVED_ELSEWHERE,
        Refuse(ALREADY_EXISTS)),
    Row("reserve_same_location_keeps_active_entry", RESERVE, ACTIVE_HERE, Unchanged()),
    Row("reserve_other_location_refused_when_active", RESERVE, ACTIVE_ELSEWHERE,
        Refuse(ALREADY_EXISTS)),
    Row("activate_free_name_creates_active_entry", ACTIVATE, None, put(None, NOW_ACTIVE)),
    Row("activate_reserved_same_location_activates", ACTIVATE, RESERVED_HERE,
        put(RESERVED_HERE, NOW_ACTIVE)),
    Row("activate_reserved_elsewhere_moves_and_activates", ACTIVATE, RESERVED_ELSEWHERE,
        put(RESERVED_ELSEWHERE, NOW_ACTIVE)),
    Row("activate_identical_active_entry_is_unchanged", ACTIVATE, ACTIVE_HERE, Unchanged()),
    Row("activate_same_location_new_acl_replaces_acl", ACTIVATE_NEW_ACL, ACTIVE_HERE,
        put(ACTIVE_HERE, MailboxEntry(N, EntryState.ACTIVE, L, ACL2))),
    Row("activate_active_elsewhere_moves_mailbox", ACTIVATE, ACTIVE_ELSEWHERE,
        put(ACTIVE_ELSEWHERE, NOW_ACTIVE)),
    Row("deactivate_reserved_same_location_is_replica_repeat", DEACTIVATE, RESERVED_HERE,
        Unchanged()),
    Row("deactivate_reserved_elsewhere_refused", DEACTIVATE, RESERVED_ELSEWHERE,
        Refuse(NOT_ACTIVE)),
    Row("deactivate_active_same_location_reserves_and_clears_acl", DEACTIVATE, ACTIVE_HERE,
        put(ACTIVE_HERE, NOW_RESERVED)),
    Row("deactivate_active_elsewhere_reserves_at_given_location", DEACTIVATE, ACTIVE_ELSEWHERE,
        put(ACTIVE_ELSEWHERE, NOW_RESERVED)),
    Row("deactivate_missing_refused_whatever_the_tombstone", DEACTIVATE, None,
        Refuse(DOES_NOT_EXIST)),
    Row("delete_reserved_here_removes_with_tombstone", DELETE, RESERVED_HERE,
        removed(RESERVED_HERE)),
    Row("delete_reserved_elsewhere_removes_with_tombstone", DELETE, RESERVED_ELSEWHERE,
        removed(RESERVED_ELSEWHERE)),
    Row("delete_active_here_removes_with_tombstone", DELETE, ACTIVE_HERE, removed(ACTIVE_HERE)),
    Row("delete_active_elsewhere_removes_with_tombstone", DELETE, ACTIVE_ELSEWHERE,
        removed(ACTIVE_ELSEWHERE)),
    Row("delete_missing_with_fresh_tombstone_is_replica_repeat", DELETE, None, Unchanged(),
        ("fresh tombstone",)),
    Row("delete_missing_with_expired_tombstone_refused", DELETE, None, Refuse(DOES_NOT_EXIST),
        ("expired tombstone",)),
    Row("delete_never_known_name_refused", DELETE, None, Refuse(DOES_NOT_EXIST),
        ("no tombstone",)),
]  # fmt: skip

CELLS = [
    pytest.param(row, TOMBSTONES[tomb], id=f"{row.behaviour}[{tomb}]")
    for row in TABLE
    for tomb in row.tombstones
]


def test_table_covers_every_cell() -> None:
    commands = {RESERVE, ACTIVATE, DEACTIVATE, DELETE}
    currents = {None, RESERVED_HERE, RESERVED_ELSEWHERE, ACTIVE_HERE, ACTIVE_ELSEWHERE}
    cells = {(row.command, row.current, tomb) for row in TABLE for tomb in row.tombstones}
    assert cells >= {(c, e, t) for c in commands for e in currents for t in TOMBSTONES}


@pytest.mark.parametrize(("row", "tombstone"), CELLS)
def test_write_rules_table(row: Row, tombstone: Tombstone | None) -> None:
    decision = decide(row.command, row.current, tombstone, now=NOW, tombstone_window=WINDOW)
    assert decision == row.expected


# The same rules, named after the conformance cases and design.md's sentences.


def d(
    command: WriteCommand, current: MailboxEntry | None, tomb: Tombstone | None = None
) -> Decision:
    return decide(command, current, tomb, now=NOW, tombstone_window=WINDOW)


@pytest.mark.parametrize(
    "command",
    [Reserve(b"T", b"", L), Activate(b"T", b"", b"h!p", b""), Deactivate(b"T", b"", L),
     Delete(b"T", b"")],
    ids=["reserve", "activate", "deactivate", "delete"],
)  # fmt: skip
def test_empty_mailbox_name_is_refused(command: WriteCommand) -> None:
    assert d(command, None) == Refuse(INVALID_NAME)
    assert d(command, MailboxEntry(b"", EntryState.ACTIVE, L, ACL)) == Refuse(INVALID_NAME)


def test_reserve_same_location_keeps_active_entry() -> None:
    # Case 45 [ours]: Cyrus demotes the entry and loses its ACL; we answer OK, change nothing.
    assert d(RESERVE, ACTIVE_HERE) == Unchanged()


def test_reserve_compares_whole_location_bytes() -> None:
    assert d(Reserve(b"T", N, b"be1!p2"), ACTIVE_HERE) == Refuse(ALREADY_EXISTS)
    assert d(Reserve(b"T", N, b"be1"), RESERVED_HERE) == Refuse(ALREADY_EXISTS)
    assert d(Reserve(b"T", N, b"BE1!default"), RESERVED_HERE) == Refuse(ALREADY_EXISTS)
    assert d(Reserve(b"T", N, b"be2!"), ACTIVE_HERE) == Refuse(ALREADY_EXISTS)


def test_empty_partition_is_the_same_location_on_the_same_server() -> None:
    # A Cyrus 3.6 RENAME registers `server!` (§10.2); the replica's sync_server repeats the
    # rename at `server!default` (replication-pair seed run): RESERVE and DEACTIVATE there
    # are the replica's repeat, in both directions, and change nothing.
    renamed = MailboxEntry(N, EntryState.ACTIVE, b"be1!", ACL)
    assert d(RESERVE, renamed) == Unchanged()
    assert d(Reserve(b"T", N, b"be1!"), ACTIVE_HERE) == Unchanged()
    reserved = MailboxEntry(N, EntryState.RESERVED, b"be1!")
    assert d(RESERVE, reserved) == Unchanged()
    assert d(DEACTIVATE, reserved) == Unchanged()
    assert d(Deactivate(b"T", N, b"be1!"), RESERVED_HERE) == Unchanged()
    # another server, or a location without `!`, is still another location
    assert d(Reserve(b"T", N, b"be2!default"), renamed) == Refuse(ALREADY_EXISTS)
    assert d(Reserve(b"T", N, b"be1"), renamed) == Refuse(ALREADY_EXISTS)
    assert d(Deactivate(b"T", N, b"be2!"), reserved) == Refuse(NOT_ACTIVE)


def test_reserve_empty_location_is_stored() -> None:
    # Case 53: RESERVE "user.emptyloc" "" is OK; the location reads back as empty.
    new = MailboxEntry(b"user.emptyloc", EntryState.RESERVED, b"")
    assert d(Reserve(b"T", b"user.emptyloc", b""), None) == put(None, new)


def test_activate_fixes_up_empty_partition() -> None:
    # §10.2: a RENAME leaves `server!`; the next ACTIVATE at `server!part` must succeed.
    current = MailboxEntry(N, EntryState.ACTIVE, b"be1!", ACL)
    assert d(ACTIVATE, current) == put(current, NOW_ACTIVE)


def test_activate_keeps_acl_bytes_exactly() -> None:
    odd = Activate(b"T", N, L, b"anyone rls")  # not tab-separated: stored as given
    assert d(odd, None) == put(None, MailboxEntry(N, EntryState.ACTIVE, L, b"anyone rls"))


def test_deactivate_moves_active_entry_to_given_location() -> None:
    # Case 47: DEACTIVATE "user.bob" "be9!p9" on ACTIVE be1!default -> RESERVE at be9!p9.
    bob = MailboxEntry(b"user.bob", EntryState.ACTIVE, b"be1!default", ACL)
    expected = MailboxEntry(b"user.bob", EntryState.RESERVED, b"be9!p9")
    assert d(Deactivate(b"T", b"user.bob", b"be9!p9"), bob) == put(bob, expected)


def test_deactivate_missing_is_refused_not_a_crash() -> None:
    # Case 50 [ours]: Cyrus 3.6 segfaults.
    assert d(Deactivate(b"T", b"user.doesnotexist", L), None) == Refuse(b"mailbox doesn't exist")


def test_delete_tombstone_window_edge_is_inclusive() -> None:
    edge = Tombstone(N, L, NOW - WINDOW)
    assert d(DELETE, None, edge) == Unchanged()
    just_out = Tombstone(N, L, NOW - WINDOW - 0.001)
    assert d(DELETE, None, just_out) == Refuse(DOES_NOT_EXIST)


def test_delete_records_last_location_and_time() -> None:
    decision = d(DELETE, ACTIVE_ELSEWHERE)
    assert isinstance(decision, Apply)
    assert decision.change == RemoveEntry(N, Tombstone(N, L2, NOW))
    assert decision.new is None


def test_texts_are_cyrus_texts() -> None:
    assert ALREADY_EXISTS == b"mailbox already exists"
    assert NOT_ACTIVE == b"mailbox not currently active"
    assert DOES_NOT_EXIST == b"mailbox doesn't exist"


# Whole scenarios: decisions applied to an index, as the master would.


def run(index: MailboxIndex, command: WriteCommand, now: float = NOW) -> Decision:
    decision = decide(
        command, index.get(command.name), index.tombstone(command.name), now=now,
        tombstone_window=WINDOW,
    )  # fmt: skip
    if isinstance(decision, Apply):
        index.apply(decision.change)
    return decision


def test_replica_pair_repeats_create_and_entry_stays_active() -> None:
    index = MailboxIndex()
    for _ in ("primary", "replica"):
        assert not isinstance(run(index, RESERVE), Refuse)
        assert not isinstance(run(index, ACTIVATE), Refuse)
        assert index.get(N) == NOW_ACTIVE  # never demoted between the replica's two writes


def test_replica_pair_repeats_delete_within_window() -> None:
    index = MailboxIndex([ACTIVE_HERE])
    assert isinstance(run(index, DELETE), Apply)
    assert run(index, DELETE, now=NOW + 5) == Unchanged()
    assert run(index, DELETE, now=NOW + WINDOW + 1) == Refuse(DOES_NOT_EXIST)


def test_replica_pair_repeats_xfer() -> None:
    # XFER: DEACTIVATE at the destination, then ACTIVATE there; the replica repeats both.
    index = MailboxIndex([ACTIVE_ELSEWHERE])
    for _ in ("primary", "replica"):
        assert not isinstance(run(index, DEACTIVATE), Refuse)
        assert not isinstance(run(index, ACTIVATE), Refuse)
    assert index.get(N) == NOW_ACTIVE


def test_replica_pair_repeats_rename() -> None:
    # §10.2 RENAME: DELETE old, RESERVE new at `server!`, ACTIVATE new; then the replica.
    old, new = b"user.old", b"user.new"
    index = MailboxIndex([MailboxEntry(old, EntryState.ACTIVE, L, ACL)])
    for _ in ("primary", "replica"):
        assert not isinstance(run(index, Delete(b"X", old)), Refuse)
        assert not isinstance(run(index, Reserve(b"X", new, b"be1!")), Refuse)
        assert not isinstance(run(index, Activate(b"X", new, b"be1!", ACL)), Refuse)
    assert index.get(new) == MailboxEntry(new, EntryState.ACTIVE, b"be1!", ACL)
    assert old not in index


def test_replica_pair_sync_server_repeats_rename_at_its_partition() -> None:
    # Seen with Cyrus 3.6.1 sync_client/sync_server: the primary's RENAME registers the new
    # name at `be1!`; the replica's sync_server repeats DELETE old, RESERVE new at
    # `be1!default`, ACTIVATE new at `be1!default`. All OK; the ACTIVATE fixes up the location.
    old, new = b"user.old", b"user.new"
    index = MailboxIndex([MailboxEntry(old, EntryState.ACTIVE, L, ACL)])
    for location in (b"be1!", b"be1!default"):
        assert not isinstance(run(index, Delete(b"X", old)), Refuse)
        assert not isinstance(run(index, Reserve(b"X", new, location)), Refuse)
        assert not isinstance(run(index, Activate(b"X", new, location, ACL)), Refuse)
        assert index.get(new) == MailboxEntry(new, EntryState.ACTIVE, location, ACL)
    assert old not in index


def test_recreate_after_delete_clears_tombstone() -> None:
    index = MailboxIndex([ACTIVE_HERE])
    run(index, DELETE)
    run(index, RESERVE)
    assert index.tombstone(N) is None

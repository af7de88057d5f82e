"""The local-authority guard: every (mode x how a mailbox is local x what the master says) cell.

Protocol doc §9.3 (Cyrus's guard and its limits), §11.2 (locations), conformance cases 64-65;
design.md "Local-authority guard".
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

import mupdate.slave
from mupdate.db.store import PutEntry, RemoveEntry
from mupdate.model import EntryState, MailboxEntry
from mupdate.slave.guard import NOT_LISTED, Accept, GuardRefusal, LocalFacts, check_change

N = b"user.alice"
ACL = b"alice\tlrswipkxtecdan\t"
ACL2 = b"alice\tlrs\t"
OWN = frozenset({"be1", "be1-replica"})


def active(location: bytes, acl: bytes = ACL) -> MailboxEntry:
    return MailboxEntry(N, EntryState.ACTIVE, location, acl)


def reserved(location: bytes) -> MailboxEntry:
    return MailboxEntry(N, EntryState.RESERVED, location)


def facts(unified: bool, on_disk: bool = False) -> LocalFacts:
    return LocalFacts(unified, OWN, lambda name: on_disk and name == N)


@dataclass(frozen=True)
class Row:
    """What the slave holds, whether N has a header on disk, what the master says, outcomes.

    Outcomes: "noop" Accept(None), "put" Accept(PutEntry(remote)),
    "remove" Accept(RemoveEntry(N, None)), "refuse" GuardRefusal.
    """

    local: MailboxEntry | None
    on_disk: bool
    remote: MailboxEntry | None
    unified: str
    standard: str


OWN_SERVER = active(b"be1!default")
ALIAS = active(b"BE1-Replica!default")  # an alias, in another case than configured
BARE = active(b"default")  # Cyrus's local form: no server (§9.3)
DISK_ELSEWHERE = active(b"be9!p9")  # held as a remote pointer, but the header is ours
REMOTE = active(b"be2!p2")

ROWS: dict[str, Row] = {
    # local by our own servername
    "own_server_master_lacks_it_is_kept": Row(OWN_SERVER, False, None, "refuse", "remove"),
    "own_server_same_entry_is_noop": Row(OWN_SERVER, False, OWN_SERVER, "noop", "noop"),
    "own_server_new_acl_is_put": Row(OWN_SERVER, False, active(b"be1!default", ACL2), "put", "put"),
    "own_server_reserve_same_location_is_put": Row(
        OWN_SERVER, False, reserved(b"be1!default"), "put", "put"
    ),
    "own_server_other_partition_is_put": Row(OWN_SERVER, False, active(b"be1!p2"), "put", "put"),
    "own_server_moved_to_alias_is_put": Row(
        OWN_SERVER, False, active(b"be1-replica!p3"), "put", "put"
    ),
    "own_server_moved_to_server_in_other_case_is_put": Row(
        OWN_SERVER, False, active(b"BE1!default"), "put", "put"
    ),
    "own_server_moved_to_other_server_is_refused": Row(
        OWN_SERVER, False, active(b"be9!p9"), "refuse", "put"
    ),
    "own_server_reserved_at_other_server_is_refused": Row(
        OWN_SERVER, False, reserved(b"be9!p9"), "refuse", "put"
    ),
    "own_server_moved_to_bare_server_is_refused": Row(
        OWN_SERVER, False, active(b"be9"), "refuse", "put"
    ),
    "own_server_moved_to_server_named_like_prefix_is_refused": Row(
        OWN_SERVER, False, active(b"be10!default"), "refuse", "put"
    ),
    # local by an alias servername, compared case-insensitively
    "alias_master_lacks_it_is_kept": Row(ALIAS, False, None, "refuse", "remove"),
    "alias_same_entry_is_noop": Row(ALIAS, False, ALIAS, "noop", "noop"),
    "alias_new_acl_is_put": Row(ALIAS, False, active(b"BE1-Replica!default", ACL2), "put", "put"),
    "alias_reserve_same_location_is_put": Row(
        ALIAS, False, reserved(b"BE1-Replica!default"), "put", "put"
    ),
    "alias_other_partition_is_put": Row(ALIAS, False, active(b"BE1-Replica!p2"), "put", "put"),
    "alias_moved_to_servername_is_put": Row(ALIAS, False, active(b"be1!default"), "put", "put"),
    "alias_moved_to_other_server_is_refused": Row(ALIAS, False, active(b"be9!p9"), "refuse", "put"),
    "alias_reserved_at_other_server_is_refused": Row(
        ALIAS, False, reserved(b"be9!p9"), "refuse", "put"
    ),
    # local by a location without '!' (Cyrus's own test)
    "bare_master_lacks_it_is_kept": Row(BARE, False, None, "refuse", "remove"),
    "bare_same_entry_is_noop": Row(BARE, False, BARE, "noop", "noop"),
    "bare_new_acl_is_put": Row(BARE, False, active(b"default", ACL2), "put", "put"),
    "bare_echo_at_servername_is_noop": Row(BARE, False, active(b"be1!default"), "noop", "put"),
    "bare_echo_at_alias_in_other_case_is_noop": Row(
        BARE, False, active(b"Be1-Replica!default"), "noop", "put"
    ),
    "bare_echo_with_new_acl_is_put": Row(BARE, False, active(b"be1!default", ACL2), "put", "put"),
    "bare_echo_reserved_is_put": Row(BARE, False, reserved(b"be1!default"), "put", "put"),
    "bare_other_partition_at_servername_is_put": Row(BARE, False, active(b"be1!p2"), "put", "put"),
    "bare_reserve_same_location_is_put": Row(BARE, False, reserved(b"default"), "put", "put"),
    "bare_moved_to_other_server_is_refused": Row(BARE, False, active(b"be9!p9"), "refuse", "put"),
    "bare_reserved_at_other_server_is_refused": Row(
        BARE, False, reserved(b"be9!p9"), "refuse", "put"
    ),
    "bare_moved_to_bare_server_is_refused": Row(BARE, False, active(b"be9"), "refuse", "put"),
    "bare_partition_named_as_server_is_refused": Row(
        BARE, False, active(b"default!default"), "refuse", "put"
    ),
    # local by its cyrus.header on our partitions, while we hold it elsewhere
    "on_disk_master_lacks_it_is_kept": Row(DISK_ELSEWHERE, True, None, "refuse", "remove"),
    "on_disk_same_entry_is_noop": Row(DISK_ELSEWHERE, True, DISK_ELSEWHERE, "noop", "noop"),
    "on_disk_new_acl_at_held_location_is_put": Row(
        DISK_ELSEWHERE, True, active(b"be9!p9", ACL2), "put", "put"
    ),
    "on_disk_reserve_at_held_location_is_put": Row(
        DISK_ELSEWHERE, True, reserved(b"be9!p9"), "put", "put"
    ),
    "on_disk_other_partition_of_held_server_is_refused": Row(
        DISK_ELSEWHERE, True, active(b"be9!p2"), "refuse", "put"
    ),
    "on_disk_moved_to_servername_is_put": Row(
        DISK_ELSEWHERE, True, active(b"be1!default"), "put", "put"
    ),
    "on_disk_moved_to_other_server_is_refused": Row(
        DISK_ELSEWHERE, True, active(b"be8!p8"), "refuse", "put"
    ),
    "on_disk_reserved_at_other_server_is_refused": Row(
        DISK_ELSEWHERE, True, reserved(b"be8!p8"), "refuse", "put"
    ),
    # local by its cyrus.header alone: we hold no entry
    "on_disk_unheld_delete_is_noop": Row(None, True, None, "noop", "noop"),
    "on_disk_unheld_at_servername_is_put": Row(None, True, active(b"be1!default"), "put", "put"),
    "on_disk_unheld_reserved_at_servername_is_put": Row(
        None, True, reserved(b"be1!default"), "put", "put"
    ),
    "on_disk_unheld_at_other_server_is_refused": Row(
        None, True, active(b"be9!p9"), "refuse", "put"
    ),
    "on_disk_unheld_reserved_at_other_server_is_refused": Row(
        None, True, reserved(b"be9!p9"), "refuse", "put"
    ),
    # not local
    "remote_master_lacks_it_is_removed": Row(REMOTE, False, None, "remove", "remove"),
    "remote_same_entry_is_noop": Row(REMOTE, False, REMOTE, "noop", "noop"),
    "remote_new_acl_is_put": Row(REMOTE, False, active(b"be2!p2", ACL2), "put", "put"),
    "remote_reserve_same_location_is_put": Row(REMOTE, False, reserved(b"be2!p2"), "put", "put"),
    "remote_other_partition_is_put": Row(REMOTE, False, active(b"be2!p3"), "put", "put"),
    "remote_moved_to_other_server_is_put": Row(REMOTE, False, active(b"be9!p9"), "put", "put"),
    "remote_reserved_at_other_server_is_put": Row(REMOTE, False, reserved(b"be9!p9"), "put", "put"),
    "remote_moved_to_servername_is_put": Row(REMOTE, False, active(b"be1!default"), "put", "put"),
    "unknown_delete_is_noop": Row(None, False, None, "noop", "noop"),  # case 64
    "unknown_new_mailbox_is_put": Row(None, False, active(b"be9!p9"), "put", "put"),
    "unknown_new_reserve_is_put": Row(None, False, reserved(b"be9!p9"), "put", "put"),
    "unknown_at_servername_is_put": Row(None, False, active(b"be1!default"), "put", "put"),
}

CELLS = [
    pytest.param(row, unified, id=f"{'unified' if unified else 'standard'}-{name}")
    for name, row in ROWS.items()
    for unified in (True, False)
]


def expected(row: Row, unified: bool) -> Accept | GuardRefusal:
    outcome = row.unified if unified else row.standard
    if outcome == "noop":
        return Accept(None)
    if outcome == "remove":
        return Accept(RemoveEntry(N, None))
    if outcome == "put":
        assert row.remote is not None
        return Accept(PutEntry(row.remote))
    assert outcome == "refuse"
    if row.remote is None:
        return GuardRefusal(N, row.local, None, NOT_LISTED)
    verb = "reserves" if row.remote.state is EntryState.RESERVED else "places"
    where = row.remote.location.decode()
    return GuardRefusal(N, row.local, row.remote, f"master {verb} local mailbox at {where}")


@pytest.mark.parametrize(("row", "unified"), CELLS)
def test_check_change(row: Row, unified: bool) -> None:
    assert check_change(N, row.local, row.remote, facts(unified, row.on_disk)) == expected(
        row, unified
    )


def test_refusal_names_where_the_master_placed_it() -> None:
    refusal = check_change(N, OWN_SERVER, active(b"be9!p9"), facts(True))
    assert refusal == GuardRefusal(
        N, OWN_SERVER, active(b"be9!p9"), "master places local mailbox at be9!p9"
    )


def test_refusal_reason_escapes_odd_bytes_in_location() -> None:
    refusal = check_change(N, OWN_SERVER, active(b"be\xff!p\x00\r\n9"), facts(True))
    assert isinstance(refusal, GuardRefusal)
    assert refusal.reason == "master places local mailbox at be\\xff!p\\0\\r\\n9"


def test_standard_mode_never_refuses_and_never_asks_the_disk() -> None:
    def on_disk(name: bytes) -> bool:
        raise AssertionError("a frontend has no partitions to look at")

    standard = LocalFacts(False, OWN, on_disk)
    for row in ROWS.values():
        assert isinstance(check_change(N, row.local, row.remote, standard), Accept)


def test_unchanged_entry_does_not_ask_the_disk() -> None:
    def on_disk(name: bytes) -> bool:
        raise AssertionError("nothing to decide")

    assert check_change(N, REMOTE, REMOTE, LocalFacts(True, OWN, on_disk)) == Accept(None)


def test_disk_fault_is_not_taken_for_not_local() -> None:
    def on_disk(name: bytes) -> bool:
        raise PermissionError("spool unreadable")

    with pytest.raises(PermissionError):
        check_change(N, REMOTE, None, LocalFacts(True, OWN, on_disk))


def test_default_on_disk_says_nothing_is_on_disk() -> None:
    plain = LocalFacts(True, OWN)
    assert not plain.is_local(N, None)
    assert check_change(N, REMOTE, None, plain) == Accept(RemoveEntry(N, None))


@pytest.mark.parametrize(
    ("location", "unified", "owned"),
    [
        (b"be1!default", True, True),
        (b"be1!default", False, True),
        (b"BE1!default", True, True),
        (b"Be1-RePlica!p2", True, True),
        (b"be1!", True, True),
        (b"be1", True, True),  # server alone
        (b"be1", False, True),
        (b"default", True, True),  # Cyrus's local form
        (b"default", False, False),
        (b"", True, True),
        (b"", False, False),
        (b"be2!be1", True, False),
        (b"be10!default", True, False),
        (b"be!1!default", True, False),
        (b"!default", True, False),
        (b"be1 !default", True, False),
    ],
)
def test_owns_location(location: bytes, unified: bool, owned: bool) -> None:
    assert LocalFacts(unified, OWN).owns_location(location) is owned


def test_owns_location_compares_latin1_bytes_case_insensitively() -> None:
    facts = LocalFacts(True, frozenset({"bé1"}))
    assert facts.owns_location(b"B\xc91!p")
    assert not facts.owns_location("bé1!p".encode())


def test_bare_location_is_not_local_when_the_store_keeps_master_bytes() -> None:
    facts = LocalFacts(True, OWN, bare_location_is_local=False)
    assert not facts.owns_location(b"default")
    assert facts.owns_location(b"be1")
    assert not facts.is_local(N, active(b"be2"))
    assert check_change(N, active(b"be2"), None, facts) == Accept(RemoveEntry(N, None))
    assert check_change(N, BARE, active(b"be1!default"), facts) == Accept(
        PutEntry(active(b"be1!default"))
    )


@pytest.mark.parametrize(
    ("entry", "on_disk", "unified", "local"),
    [
        (OWN_SERVER, False, True, True),
        (ALIAS, False, True, True),
        (BARE, False, True, True),
        (DISK_ELSEWHERE, True, True, True),
        (None, True, True, True),
        (REMOTE, False, True, False),
        (None, False, True, False),
        (OWN_SERVER, True, False, False),
        (BARE, True, False, False),
        (None, True, False, False),
    ],
)
def test_is_local(entry: MailboxEntry | None, on_disk: bool, unified: bool, local: bool) -> None:
    assert facts(unified, on_disk).is_local(N, entry) is local


def test_on_disk_is_asked_about_the_name_itself() -> None:
    asked: list[bytes] = []

    def on_disk(name: bytes) -> bool:
        asked.append(name)
        return False

    check_change(b"user.bob", REMOTE, None, LocalFacts(True, OWN, on_disk))
    assert asked == [b"user.bob"]


def test_decisions_import_nothing_from_twisted() -> None:
    code = (
        "import sys, mupdate.slave, mupdate.slave.guard, mupdate.slave.brake\n"
        "import mupdate.slave.resync, mupdate.slave.disk, mupdate.slave.scan\n"
        "bad = sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_public_names_are_exported() -> None:
    for name in mupdate.slave.__all__:
        assert hasattr(mupdate.slave, name), name

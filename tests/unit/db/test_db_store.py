"""The MailboxStore contract, run against SqliteStore and the in-memory fake alike."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mupdate.db.sqlite import SqliteStore
from mupdate.db.store import (
    Change,
    ExpireTombstones,
    MailboxStore,
    PutEntry,
    RemoveEntry,
    StoreError,
)
from mupdate.model import EntryState, MailboxEntry, Tombstone
from tests.helpers.memstore import InMemoryStore

ACTIVE = EntryState.ACTIVE
RESERVED = EntryState.RESERVED

ODD_ENTRIES = [
    MailboxEntry(b"user.n\x00ul", ACTIVE, b"be1!default", b"n\x00\tlrs\t"),
    MailboxEntry(b"user.cr\rlf\n", ACTIVE, b"be\r\n!p", b"a\tlrs\t\r\n"),
    MailboxEntry(b"user.\xe9t\xe9\xff\x80", RESERVED, b"\xff!\xfe"),
    MailboxEntry(b"user.emptyloc", RESERVED, b""),
    MailboxEntry(b"user.emptyacl", ACTIVE, b"be1!", b""),
    MailboxEntry(b'user.q"x\\y', ACTIVE, b"partition", b"anyone rls"),
]

StoreFactory = Callable[[], MailboxStore]


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens (or, for SQLite, reopens) the store under test; closes everything afterwards."""
    opened: list[MailboxStore] = []
    memory = InMemoryStore()

    def make() -> MailboxStore:
        store: MailboxStore = (
            SqliteStore(tmp_path / "mailboxes.sqlite") if request.param == "sqlite" else memory
        )
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def entries_of(store: MailboxStore) -> dict[bytes, MailboxEntry]:
    return {e.name: e for e in store.load_entries()}


def test_new_store_is_empty(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.load_entries() == []
    assert store.load_tombstones() == []


def test_put_and_load_round_trip_is_bytes_exact(make_store: StoreFactory) -> None:
    store = make_store()
    store.apply([PutEntry(e) for e in ODD_ENTRIES])
    assert entries_of(store) == {e.name: e for e in ODD_ENTRIES}


def test_put_replaces_and_clears_tombstone(make_store: StoreFactory) -> None:
    store = make_store()
    store.apply([RemoveEntry(b"user.a", Tombstone(b"user.a", b"be1!p", 100.0))])
    assert store.load_tombstones() == [Tombstone(b"user.a", b"be1!p", 100.0)]
    store.apply([PutEntry(MailboxEntry(b"user.a", RESERVED, b"be2!p"))])
    store.apply([PutEntry(MailboxEntry(b"user.a", ACTIVE, b"be2!p", b"a\tlrs\t"))])
    assert store.load_entries() == [MailboxEntry(b"user.a", ACTIVE, b"be2!p", b"a\tlrs\t")]
    assert store.load_tombstones() == []


def test_remove_keeps_tombstone_and_missing_remove_is_noop(make_store: StoreFactory) -> None:
    store = make_store()
    store.apply([PutEntry(MailboxEntry(b"user.a", ACTIVE, b"be1!p", b"x\ty\t"))])
    store.apply(
        [
            RemoveEntry(b"user.a", Tombstone(b"user.a", b"be1!p", 5.0)),
            RemoveEntry(b"user.never", None),
        ]
    )
    assert store.load_entries() == []
    assert store.load_tombstones() == [Tombstone(b"user.a", b"be1!p", 5.0)]


def test_expire_tombstones_drops_only_older_ones(make_store: StoreFactory) -> None:
    store = make_store()
    store.apply(
        [
            RemoveEntry(b"old", Tombstone(b"old", b"l", 10.0)),
            RemoveEntry(b"edge", Tombstone(b"edge", b"l", 20.0)),
            RemoveEntry(b"new", Tombstone(b"new", b"l", 30.0)),
        ]
    )
    store.apply([ExpireTombstones(before=20.0)])
    assert sorted(t.name for t in store.load_tombstones()) == [b"edge", b"new"]


def test_batch_changes_apply_in_order(make_store: StoreFactory) -> None:
    store = make_store()
    a1 = MailboxEntry(b"user.a", RESERVED, b"be1!p")
    a2 = MailboxEntry(b"user.a", ACTIVE, b"be1!p", b"acl")
    store.apply([PutEntry(a1), PutEntry(a2), RemoveEntry(b"user.a", None), PutEntry(a1)])
    assert store.load_entries() == [a1]


def test_replace_all_makes_list_exactly_that(make_store: StoreFactory) -> None:
    store = make_store()
    store.apply(
        [
            PutEntry(MailboxEntry(b"user.gone", ACTIVE, b"be1!p", b"acl")),
            PutEntry(MailboxEntry(b"user.kept", ACTIVE, b"be1!p", b"old")),
            RemoveEntry(b"user.back", Tombstone(b"user.back", b"be1!p", 1.0)),
            RemoveEntry(b"user.dead", Tombstone(b"user.dead", b"be1!p", 1.0)),
        ]
    )
    new = [
        MailboxEntry(b"user.kept", ACTIVE, b"be2!p", b"new"),
        MailboxEntry(b"user.back", RESERVED, b"be1!p"),
    ]
    store.replace_all(iter(new))
    assert entries_of(store) == {e.name: e for e in new}
    assert [t.name for t in store.load_tombstones()] == [b"user.dead"]


def test_replace_all_with_duplicate_names_changes_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    before = MailboxEntry(b"user.a", ACTIVE, b"be1!p", b"acl")
    store.apply([PutEntry(before)])
    dup = MailboxEntry(b"user.b", RESERVED, b"x")
    with pytest.raises(ValueError, match="given twice"):
        store.replace_all([dup, dup])
    assert store.load_entries() == [before]


def test_replace_all_with_nothing_empties_the_list(make_store: StoreFactory) -> None:
    store = make_store()
    store.apply([PutEntry(MailboxEntry(b"user.a", RESERVED, b"x"))])
    store.replace_all([])
    assert store.load_entries() == []


def test_closed_store_raises_store_error(make_store: StoreFactory) -> None:
    store = make_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError):
        store.load_entries()
    with pytest.raises(StoreError):
        store.apply([])


# SQLite only: atomicity, durability across reopen, settings, check().


def open_sqlite(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "mailboxes.sqlite")


def test_sqlite_failing_batch_changes_nothing(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path)
    keep = MailboxEntry(b"user.keep", ACTIVE, b"be1!p", b"acl")
    store.apply([PutEntry(keep), RemoveEntry(b"t", Tombstone(b"t", b"l", 1.0))])
    batch: list[Change] = [
        PutEntry(MailboxEntry(b"user.new", RESERVED, b"be1!p")),
        RemoveEntry(b"user.keep", Tombstone(b"user.keep", b"be1!p", 2.0)),
        ExpireTombstones(before=10.0),
        # NaN is stored as NULL, which deleted_at's NOT NULL refuses: a fault mid-batch.
        RemoveEntry(b"user.x", Tombstone(b"user.x", b"l", math.nan)),
        PutEntry(MailboxEntry(b"user.after", RESERVED, b"be1!p")),
    ]
    with pytest.raises(StoreError, match="nothing changed"):
        store.apply(batch)
    assert store.load_entries() == [keep]
    assert store.load_tombstones() == [Tombstone(b"t", b"l", 1.0)]
    store.apply([PutEntry(MailboxEntry(b"user.later", RESERVED, b"x"))])  # still usable
    assert len(store.load_entries()) == 2
    store.close()


def test_sqlite_fault_raised_by_database_rolls_back(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path)
    store.close()
    # Inject a fault the way a full disk or I/O error would surface: from inside SQLite.
    raw = sqlite3.connect(tmp_path / "mailboxes.sqlite")
    raw.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON mailboxes WHEN NEW.name = X'626f6f6d'"
        " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
    )
    raw.commit()
    raw.close()
    store = open_sqlite(tmp_path)
    with pytest.raises(StoreError, match="injected fault"):
        store.apply(
            [
                PutEntry(MailboxEntry(b"user.first", RESERVED, b"x")),
                PutEntry(MailboxEntry(b"boom", RESERVED, b"x")),
            ]
        )
    assert store.load_entries() == []
    store.close()


def test_sqlite_reopen_keeps_reserved_entries_and_tombstones(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path)
    store.apply([PutEntry(e) for e in ODD_ENTRIES])
    store.apply([RemoveEntry(b"user.d", Tombstone(b"user.d", b"be1!\xff", 1234.5))])
    store.close()
    reopened = open_sqlite(tmp_path)
    assert entries_of(reopened) == {e.name: e for e in ODD_ENTRIES}
    assert any(e.state is RESERVED for e in reopened.load_entries())
    assert reopened.load_tombstones() == [Tombstone(b"user.d", b"be1!\xff", 1234.5)]
    assert reopened.check() == []
    reopened.close()


def test_sqlite_runs_wal_with_synchronous_full(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path)
    assert store.durability() == ("wal", "full")
    store.close()
    raw = sqlite3.connect(tmp_path / "mailboxes.sqlite")
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent in the file
    raw.close()


def test_sqlite_created_with_schema_version_and_blob_columns(tmp_path: Path) -> None:
    open_sqlite(tmp_path).close()
    raw = sqlite3.connect(tmp_path / "mailboxes.sqlite")
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    columns = {row[1]: row[2] for row in raw.execute("PRAGMA table_info(mailboxes)")}
    assert columns == {"name": "BLOB", "state": "TEXT", "location": "BLOB", "acl": "BLOB"}
    raw.close()
    assert not (tmp_path / "mailboxes.sqlite.new").exists()


def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    open_sqlite(tmp_path).close()
    raw = sqlite3.connect(tmp_path / "mailboxes.sqlite")
    raw.execute("UPDATE schema_version SET version = 2")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="schema version 2"):
        open_sqlite(tmp_path)


def test_sqlite_refuses_foreign_database(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "mailboxes.sqlite")
    raw.execute("CREATE TABLE other (x)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="not a mupdate database"):
        open_sqlite(tmp_path)


def test_sqlite_check_finds_injected_corruption(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path)
    store.apply([PutEntry(MailboxEntry(b"user.ok", ACTIVE, b"be1!p", b"acl"))])
    assert store.check() == []
    store.close()
    raw = sqlite3.connect(tmp_path / "mailboxes.sqlite")
    raw.execute("PRAGMA ignore_check_constraints = ON")
    raw.execute("INSERT INTO mailboxes VALUES (X'7573657242', 'reserved', X'6c', X'61636c')")
    raw.execute("INSERT INTO mailboxes VALUES (X'7573657243', 'weird', X'6c', X'')")
    raw.execute("INSERT INTO mailboxes VALUES ('text-name', 'active', X'6c', X'')")
    raw.execute("INSERT INTO tombstones VALUES (X'757365722e6f6b', X'6c', 1.0)")
    raw.commit()
    raw.close()
    store = open_sqlite(tmp_path)
    problems = "\n".join(store.check())
    assert "reserved mailbox with an ACL: b'userB'" in problems
    assert "bad mailbox state: b'userC' 'weird'" in problems
    assert "a mailbox column is not a BLOB: 'text-name'" in problems
    assert "tombstone for a mailbox that exists: b'user.ok'" in problems
    with pytest.raises(StoreError):
        store.load_entries()  # a corrupt row is a storage fault, not a crash elsewhere
    store.close()


def test_memstore_fail_next_simulates_one_fault_and_changes_nothing() -> None:
    store = InMemoryStore([MailboxEntry(b"user.a", RESERVED, b"x")], fail_next=True)
    with pytest.raises(StoreError, match="simulated"):
        store.apply([RemoveEntry(b"user.a", None)])
    assert store.load_entries() == [MailboxEntry(b"user.a", RESERVED, b"x")]
    assert store.batches == []
    store.apply([RemoveEntry(b"user.a", None)])  # the flag clears after one fault
    assert store.load_entries() == []
    assert store.batches == [(RemoveEntry(b"user.a", None),)]

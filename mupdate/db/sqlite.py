"""The embedded mailbox store: SQLite, WAL, ``synchronous=FULL`` (design.md "Master").

A write is committed and fsynced before ``apply`` returns, so the master may answer OK;
one ``apply`` is one transaction (group commit). Names, locations and ACLs are BLOB
columns, bytes-exact. The schema comes from ``schema/schema-vN.sql`` (style.md §6); a new
database is built beside its final path and renamed in, so a crash never leaves half a
schema behind. RESERVED entries and tombstones persist across restarts (Cyrus drops
reserved entries at start, §7.5). Imports nothing from Twisted and knows nothing of threads:
the glue calls it from one worker thread at a time (hence ``check_same_thread=False``).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

from mupdate.db.store import Change, ExpireTombstones, PutEntry, RemoveEntry, StoreError
from mupdate.model import EntryState, MailboxEntry, Tombstone

SCHEMA_VERSION: Final = 1

_SYNCHRONOUS_NAMES: Final = {0: "off", 1: "normal", 2: "full", 3: "extra"}
_STATES: Final = {state.value: state for state in EntryState}
_PROBLEM_LIMIT: Final = 20  # rows reported per kind of problem; the count says the rest

_PUT: Final = "INSERT OR REPLACE INTO mailboxes (name, state, location, acl) VALUES (?, ?, ?, ?)"
_INSERT: Final = "INSERT INTO mailboxes (name, state, location, acl) VALUES (?, ?, ?, ?)"
_DROP_TOMBSTONE: Final = "DELETE FROM tombstones WHERE name = ?"
_REMOVE: Final = "DELETE FROM mailboxes WHERE name = ?"
_TOMBSTONE: Final = (
    "INSERT OR REPLACE INTO tombstones (name, location, deleted_at) VALUES (?, ?, ?)"
)
_EXPIRE: Final = "DELETE FROM tombstones WHERE deleted_at < ?"

# (what is wrong, query returning (name, detail) rows); see ``check``.
_CHECKS: Final = (
    (
        "a mailbox column is not a BLOB",
        "SELECT name, typeof(name) || '/' || typeof(location) || '/' || typeof(acl)"
        " FROM mailboxes WHERE typeof(name) != 'blob' OR typeof(location) != 'blob'"
        " OR typeof(acl) != 'blob'",
    ),
    (
        "bad mailbox state",
        "SELECT name, quote(state) FROM mailboxes WHERE state IS NULL"
        " OR state NOT IN ('reserved', 'active')",
    ),
    (
        "reserved mailbox with an ACL",
        "SELECT name, quote(acl) FROM mailboxes WHERE state = 'reserved' AND length(acl) > 0",
    ),
    ("mailbox with an empty name", "SELECT name, '' FROM mailboxes WHERE length(name) = 0"),
    (
        "a tombstone column has the wrong type",
        "SELECT name, typeof(name) || '/' || typeof(location) || '/' || typeof(deleted_at)"
        " FROM tombstones WHERE typeof(name) != 'blob' OR typeof(location) != 'blob'"
        " OR typeof(deleted_at) NOT IN ('real', 'integer')",
    ),
    (
        "tombstone for a mailbox that exists",
        "SELECT t.name, '' FROM tombstones AS t JOIN mailboxes AS m ON m.name = t.name",
    ),
)


def _schema_script(version: int) -> str:
    """The packaged ``schema-vN.sql`` (shipped through ``package_data``)."""
    resource = importlib.resources.files("mupdate.db").joinpath("schema", f"schema-v{version}.sql")
    return resource.read_text(encoding="utf-8")


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    try:
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot switch to WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA cache_size = -65536")  # 64 MiB: a 1M-entry resync is 1/3 faster
    except BaseException:
        db.close()
        raise
    return db


def _fsync_directory(path: str) -> None:
    """Make a rename in ``path``'s directory durable (POSIX; a no-op where unsupported)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create(path: str) -> None:
    """Build a version-1 database at ``path + ".new"`` and rename it to ``path``."""
    building = path + ".new"
    for leftover in (building, building + "-wal", building + "-shm", building + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)
    db = _connect(building)
    try:
        db.executescript("BEGIN;\n" + _schema_script(SCHEMA_VERSION) + "\nCOMMIT;")
    finally:
        db.close()  # the last close checkpoints the WAL and removes -wal and -shm
    os.replace(building, path)
    _fsync_directory(path)


def _blob(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise StoreError(f"{what} is {type(value).__name__}, not a BLOB")
    return value


def _entry_from_row(row: tuple[object, object, object, object]) -> MailboxEntry:
    name = _blob(row[0], "a mailbox name")
    state = _STATES.get(row[1]) if isinstance(row[1], str) else None
    if state is None:
        raise StoreError(f"mailbox {name!r}: bad state {row[1]!r}")
    try:
        return MailboxEntry(
            name, state, _blob(row[2], f"location of {name!r}"), _blob(row[3], f"ACL of {name!r}")
        )
    except ValueError as e:
        raise StoreError(f"mailbox {name!r}: {e}") from e


def _tombstone_from_row(row: tuple[object, object, object]) -> Tombstone:
    name = _blob(row[0], "a tombstone name")
    deleted_at = row[2]
    if not isinstance(deleted_at, int | float) or isinstance(deleted_at, bool):
        raise StoreError(f"tombstone {name!r}: deleted_at is {deleted_at!r}")
    return Tombstone(name, _blob(row[1], f"tombstone location of {name!r}"), float(deleted_at))


def _entry_row(entry: MailboxEntry) -> tuple[bytes, str, bytes, bytes]:
    return (entry.name, entry.state.value, entry.location, entry.acl)


def _apply_one(db: sqlite3.Connection, change: Change) -> None:
    match change:
        case PutEntry(entry=entry):
            db.execute(_PUT, _entry_row(entry))
            db.execute(_DROP_TOMBSTONE, (entry.name,))
        case RemoveEntry(name=name, tombstone=tombstone):
            db.execute(_REMOVE, (name,))
            if tombstone is not None:
                db.execute(_TOMBSTONE, (name, tombstone.location, tombstone.deleted_at))
        case ExpireTombstones(before=before):
            db.execute(_EXPIRE, (before,))
        case _:
            raise TypeError(f"not a store change: {change!r}")


class SqliteStore:
    """A ``MailboxStore`` in one SQLite file, created on first open."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        try:
            if not os.path.exists(self._path):
                _create(self._path)
            db = _connect(self._path)
        except sqlite3.Error as e:
            raise StoreError(f"{self._path}: cannot open: {e}") from e
        except OSError as e:
            raise StoreError(f"{self._path}: cannot create: {e}") from e
        self._db: sqlite3.Connection | None = db
        try:
            self._check_version(db)
        except BaseException:
            self.close()
            raise

    def _check_version(self, db: sqlite3.Connection) -> None:
        try:
            rows = db.execute("SELECT version FROM schema_version").fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self._path}: not a mupdate database: {e}") from e
        if len(rows) != 1 or not isinstance(rows[0][0], int):
            raise StoreError(f"{self._path}: schema_version holds {rows!r}, not one version")
        version = rows[0][0]
        # Upgrades would go here, one upgrade-to-vN.sql per step; version 1 is the first.
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self._path}: schema version {version}, this program knows {SCHEMA_VERSION}"
            )

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self._path}: store is closed")
        return self._db

    def _transaction(self, body: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``body`` in one write transaction; roll back on any exception."""
        db = self._open()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"{self._path}: cannot begin a transaction: {e}") from e
        try:
            body(db)
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"{self._path}: write failed, nothing changed: {e}") from e
            raise

    def load_entries(self) -> list[MailboxEntry]:
        """Every entry; a malformed row raises ``StoreError`` (run ``check`` for details)."""
        try:
            cursor = self._open().execute("SELECT name, state, location, acl FROM mailboxes")
            return [_entry_from_row(row) for row in cursor]
        except sqlite3.Error as e:
            raise StoreError(f"{self._path}: cannot read mailboxes: {e}") from e

    def load_tombstones(self) -> list[Tombstone]:
        try:
            cursor = self._open().execute("SELECT name, location, deleted_at FROM tombstones")
            return [_tombstone_from_row(row) for row in cursor]
        except sqlite3.Error as e:
            raise StoreError(f"{self._path}: cannot read tombstones: {e}") from e

    def apply(self, changes: Sequence[Change]) -> None:
        """One transaction, fsynced (WAL, ``synchronous=FULL``) before returning."""

        def body(db: sqlite3.Connection) -> None:
            for change in changes:
                _apply_one(db, change)

        self._transaction(body)

    def replace_all(self, entries: Iterable[MailboxEntry]) -> None:
        """The list becomes exactly ``entries``; see ``MailboxStore.replace_all``."""

        def rows() -> Iterator[tuple[bytes, str, bytes, bytes]]:
            seen: set[bytes] = set()
            for entry in entries:
                if entry.name in seen:
                    raise ValueError(f"replace_all: mailbox {entry.name!r} given twice")
                seen.add(entry.name)
                yield _entry_row(entry)

        def body(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM mailboxes")
            db.executemany(_INSERT, rows())
            db.execute("DELETE FROM tombstones WHERE name IN (SELECT name FROM mailboxes)")

        self._transaction(body)

    def check(self) -> list[str]:
        """Consistency problems found, one line each; empty when the database is sound."""
        db = self._open()
        problems: list[str] = []
        try:
            for (message,) in db.execute("PRAGMA integrity_check"):
                if message != "ok":
                    problems.append(f"integrity_check: {message}")
            versions = db.execute("SELECT version FROM schema_version").fetchall()
            if versions != [(SCHEMA_VERSION,)]:
                problems.append(
                    f"schema_version holds {versions!r}, expected one row {SCHEMA_VERSION}"
                )
            for what, query in _CHECKS:
                rows = db.execute(query).fetchall()
                for name, detail in rows[:_PROBLEM_LIMIT]:
                    problems.append(f"{what}: {name!r} {detail}".rstrip())
                if len(rows) > _PROBLEM_LIMIT:
                    problems.append(f"{what}: {len(rows) - _PROBLEM_LIMIT} more")
        except sqlite3.Error as e:
            problems.append(f"cannot read the database: {e}")
        return problems

    def durability(self) -> tuple[str, str]:
        """``(journal_mode, synchronous)`` as this connection runs, e.g. ``("wal", "full")``."""
        db = self._open()
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
        (sync,) = db.execute("PRAGMA synchronous").fetchone()
        return str(mode).lower(), _SYNCHRONOUS_NAMES.get(sync, str(sync))

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

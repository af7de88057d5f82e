"""The Cyrus store against Cyrus 3.6's own ``cyr_dbtool`` on a real twoskip mailboxes.db (§9.7).

A real reactor (pytest-twisted), a real ``cyr_dbtool ... twoskip batch`` child run as the
``cyrus`` user, a ``mailboxes.db`` in a directory of its own under /tmp. The store's sync
methods run in a thread (``deferToThread``), as the slave's worker runs them; what they
wrote is read back through the store and through a one-shot ``cyr_dbtool ... show``,
byte for byte. Every wait is bounded. Needs the Cyrus packages: without ``cyr_dbtool`` the
tests fail, naming what is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from mupdate.cyrusdb.dbtool import DbTool, DbToolCommand
from mupdate.cyrusdb.records import record_key, remote_value
from mupdate.cyrusdb.store import CyrusMailboxStore, read_once
from mupdate.db.store import PutEntry, RemoveEntry, StoreError
from mupdate.model import EntryState, MailboxEntry

pytestmark = pytest.mark.interop

DBTOOL = "/usr/lib/cyrus/bin/cyr_dbtool"
MTIME = 1795503549
WAIT = 120.0  # bound on any one wait; the 50,000-record transaction takes a few seconds
T = TypeVar("T")


def active(name: bytes, location: bytes, acl: bytes = b"") -> MailboxEntry:
    return MailboxEntry(name, EntryState.ACTIVE, location, acl)


ENTRIES = [
    active(b"example.com!user.dom", b"be1!p2", b"dom\tlrs\tan yone\tlr\t"),
    active(b"user.8bit", b"be1!default", "dé\tlr\ta\t\t".encode()),
    active(b"user.alice.Archive", b"be1!", b"alice\tlrswipkxtecdan\t"),
    active(b"user.bare", b"be9"),
    active(b"user.q", b"be1!default", b'a"b\tlrs\tc{d\tlr\tx(y)\tl\t'),
    MailboxEntry(b"user.res", EntryState.RESERVED, b"be1!default"),
]
LOCAL = (
    b"%(A %(carol lrswipkxtecdan) I 3fwf3xpoiqxjwhmqhe4347uo P default T e"
    b" V 1795503535 M 1795503535)"
)
TOMBSTONE = b"%(T ed P default M 1795503535)"


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as installed  # the one pytest-twisted installed

    return installed


@pytest.fixture
def cyrus_dir() -> Iterator[Path]:
    assert os.access(DBTOOL, os.X_OK), f"{DBTOOL} is missing: install the Cyrus 3.6 packages"
    cyrus = pwd.getpwnam("cyrus")
    top = Path(tempfile.mkdtemp(prefix="mupdate-cyrusdb-", dir="/tmp"))
    try:
        top.chmod(0o755)
        db = top / "db"
        db.mkdir()
        os.chown(db, cyrus.pw_uid, cyrus.pw_gid)
        (top / "imapd.conf").write_text(f"configdirectory: {db}\n")
        yield top
    finally:
        shutil.rmtree(top)


@dataclass
class Rig:
    reactor: Any
    conf: Path
    database: Path
    command: DbToolCommand
    tool: DbTool
    store: CyrusMailboxStore

    async def wait(self, d: Deferred[T]) -> T:
        return await d.addTimeout(WAIT, self.reactor)

    async def sync(self, f: Callable[..., T], *args: Any) -> T:
        """A sync store method, in a thread as the slave's worker calls it."""
        return await self.wait(deferToThread(f, *args))

    async def apply(self, *changes: PutEntry | RemoveEntry) -> None:
        await self.sync(self.store.apply, list(changes))

    async def dbtool(self, *args: str, stdin: bytes = b"") -> bytes:
        """A one-shot cyr_dbtool as the cyrus user; its stdout."""
        argv = [DBTOOL, "-C", str(self.conf), "-n", str(self.database), "twoskip", *args]
        uid, gid = self.command.uid, self.command.gid

        def run() -> bytes:
            proc = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                timeout=WAIT,
                check=True,
                user=uid,
                group=gid,
                extra_groups=[],
            )
            return proc.stdout

        return await self.wait(deferToThread(run))

    async def show(self) -> bytes:
        return await self.dbtool("show")

    async def raw_set(self, key: bytes, value: bytes) -> None:
        await self.dbtool("batch", stdin=b"SET " + literal(key) + b" " + literal(value) + b"\n")


def build_rig(reactor: Any, top: Path, argv: tuple[str, ...] | None, timeout: float) -> Rig:
    cyrus = pwd.getpwnam("cyrus")
    conf = top / "imapd.conf"
    database = top / "db" / "mailboxes.db"
    command = DbToolCommand.batch(
        DBTOOL, str(conf), str(database), "twoskip", cyrus.pw_uid, cyrus.pw_gid
    )
    if argv is not None:
        command = DbToolCommand(argv, cyrus.pw_uid, cyrus.pw_gid)
    tool = KillingDbTool(reactor, reactor, command, timeout)
    tool.reactor = reactor
    store = CyrusMailboxStore(tool, reactor, b"be1", timeout, now=lambda: MTIME)
    return Rig(reactor, conf, database, command, tool, store)


class KillingDbTool(DbTool):
    """A DbTool whose next transaction has its child SIGKILLed once the writes are on
    their way: ``decide`` has returned, the records go out, the commit has not arrived."""

    kill_next = False
    reactor: Any = None

    def transaction(self, keys: Any, decide: Any) -> Deferred[None]:
        if not self.kill_next:
            return super().transaction(keys, decide)
        self.kill_next = False

        def deciding(current: dict[bytes, bytes]) -> bytes:
            writes = decide(current)
            pid = self.pid
            assert pid is not None
            self.reactor.callLater(0, os.kill, pid, signal.SIGKILL)
            return writes  # type: ignore[no-any-return]  # decide's bytes

        return super().transaction(keys, deciding)


@pytest_twisted.async_yield_fixture
async def rig(reactor: Any, cyrus_dir: Path) -> AsyncIterator[Rig]:
    r = build_rig(reactor, cyrus_dir, None, 60.0)
    try:
        yield r
    finally:
        await r.wait(r.tool.stop())


def show_lines(records: list[tuple[bytes, bytes]]) -> bytes:
    """``cyr_dbtool ... show``: key TAB value LF per record, in key order."""
    return b"".join(k + b"\t" + v + b"\n" for k, v in sorted(records))


# -- writing and reading back -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_puts_are_cyrus_records_byte_for_byte(rig):
    await rig.apply(*(PutEntry(e) for e in ENTRIES))
    expected = [(record_key(e.name), remote_value(e, MTIME)) for e in ENTRIES]
    assert await rig.show() == show_lines(expected)
    assert sorted(await rig.sync(rig.store.load_entries), key=lambda e: record_key(e.name)) == (
        sorted(ENTRIES, key=lambda e: record_key(e.name))
    )
    assert await rig.sync(read_once, rig.command, b"N", WAIT) == sorted(expected)
    assert (rig.store.transactions, rig.store.records_written) == (1, len(ENTRIES))


@pytest_twisted.ensureDeferred
async def test_observed_bytes_of_two_records(rig):
    await rig.apply(PutEntry(ENTRIES[0]), PutEntry(ENTRIES[3]))
    assert await rig.show() == (
        b'Nexample.com\x1duser\x1fdom\t%(T er P p2 S be1 M 1795503549 A %(dom lrs "an yone" lr))\n'
        b"Nuser\x1fbare\t%(T er S be9 M 1795503549 A %())\n"
    )


@pytest_twisted.ensureDeferred
async def test_removes_and_moves(rig):
    await rig.apply(*(PutEntry(e) for e in ENTRIES))
    moved = active(b"user.bare", b"be2!p", b"x\tlr\t")
    await rig.apply(RemoveEntry(b"user.q", None), PutEntry(moved), RemoveEntry(b"user.none", None))
    expected = [e for e in ENTRIES if e.name not in (b"user.q", b"user.bare")] + [moved]
    assert await rig.show() == show_lines(
        [(record_key(e.name), remote_value(e, MTIME)) for e in expected]
    )
    assert rig.store.records_deleted == 1


@pytest_twisted.ensureDeferred
async def test_replace_all_leaves_only_the_given_entries(rig):
    await rig.apply(*(PutEntry(e) for e in ENTRIES))
    keep = [ENTRIES[1], active(b"user.new", b"be3!p")]
    await rig.sync(rig.store.replace_all, keep)
    assert sorted(await rig.sync(rig.store.load_entries), key=lambda e: e.name) == sorted(
        keep, key=lambda e: e.name
    )


@pytest_twisted.ensureDeferred
async def test_store_refuses_the_reactor_thread(rig):
    with pytest.raises(StoreError, match="worker thread"):
        rig.store.apply([PutEntry(ENTRIES[0])])


# -- what is Cyrus's own ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_local_record_is_never_touched(rig):
    key = record_key(b"user.carol")
    await rig.raw_set(key, LOCAL)
    before = await rig.show()
    assert before == key + b"\t" + LOCAL + b"\n"
    await rig.apply(PutEntry(active(b"user.carol", b"be2!p", b"x\tlr\t")))
    assert await rig.show() == before
    local = active(b"user.carol", b"be1!default", b"carol\tlrswipkxtecdan\t")
    assert await rig.sync(rig.store.drain_kept) == [local]
    await rig.apply(RemoveEntry(b"user.carol", None))
    assert await rig.show() == before
    assert await rig.sync(rig.store.drain_kept) == [local]
    assert await rig.sync(rig.store.drain_kept) == []
    assert await rig.sync(rig.store.load_entries) == [local]
    assert rig.store.local_kept == 2


@pytest_twisted.ensureDeferred
async def test_local_record_kept_beside_other_changes(rig):
    await rig.raw_set(record_key(b"user.carol"), LOCAL)
    await rig.apply(PutEntry(ENTRIES[3]), RemoveEntry(b"user.carol", None), PutEntry(ENTRIES[4]))
    assert await rig.show() == show_lines(
        [
            (record_key(b"user.carol"), LOCAL),
            (record_key(ENTRIES[3].name), remote_value(ENTRIES[3], MTIME)),
            (record_key(ENTRIES[4].name), remote_value(ENTRIES[4], MTIME)),
        ]
    )


@pytest_twisted.ensureDeferred
async def test_tombstone_is_not_deleted(rig):
    key = record_key(b"user.gone")
    await rig.raw_set(key, TOMBSTONE)
    await rig.apply(RemoveEntry(b"user.gone", None))
    assert await rig.show() == key + b"\t" + TOMBSTONE + b"\n"
    assert await rig.sync(rig.store.load_entries) == []
    assert await rig.sync(rig.store.drain_kept) == []  # no mailbox to report


# -- the child dying ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_child_killed_between_transactions(rig):
    await rig.apply(PutEntry(ENTRIES[0]))
    assert rig.tool.spawned == 1
    pid = rig.tool.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # At once, on the reactor thread: the death is not noticed yet, the first commands
    # go to the dead child; the transaction must not fail for that.
    await rig.wait(rig.store.transaction([PutEntry(ENTRIES[3])]))
    assert rig.tool.spawned == 2
    assert rig.tool.pid not in (None, pid)
    assert await rig.show() == show_lines(
        [(record_key(e.name), remote_value(e, MTIME)) for e in (ENTRIES[0], ENTRIES[3])]
    )


@pytest_twisted.ensureDeferred
async def test_child_killed_in_a_big_transaction(rig):
    await rig.apply(PutEntry(ENTRIES[0]))
    before = await rig.show()
    big = [PutEntry(active(b"user.u%05d" % i, b"be1!default", b"u\tlrs\t")) for i in range(50_000)]
    rig.tool.kill_next = True
    with pytest.raises(StoreError, match="cyr_dbtool"):
        await rig.sync(rig.store.apply, big)
    assert b"Yes, consistent" in await rig.dbtool("consistent")
    assert await rig.show() == before  # nothing of it was kept
    await rig.apply(PutEntry(ENTRIES[3]))
    assert rig.tool.spawned == 2
    assert await rig.sync(rig.store.load_entries) == [ENTRIES[0], ENTRIES[3]]


@pytest_twisted.ensureDeferred
async def test_child_that_never_answers_times_out(reactor, cyrus_dir):
    rig = build_rig(reactor, cyrus_dir, ("/bin/sh", "-c", "exec cat >/dev/null"), 2.0)
    try:
        with pytest.raises(StoreError, match="did not answer within 2 s"):
            await rig.apply(PutEntry(ENTRIES[0]))
        assert rig.tool.spawned == 1
        with pytest.raises(StoreError, match="did not answer within 2 s"):
            await rig.sync(rig.store.load_entries)
        assert rig.tool.spawned == 2  # the silent child was given up on, not reused
        # Two queued on the reactor thread: the second starts the moment the first times
        # out, before the killed child is reaped, and must get a child of its own.
        first = rig.store.transaction([PutEntry(ENTRIES[0])])
        second = rig.store.transaction([PutEntry(ENTRIES[3])])
        for d in (first, second):
            with pytest.raises(StoreError, match="did not answer within 2 s"):
                await rig.wait(d)
        assert rig.tool.spawned == 4
    finally:
        await rig.wait(rig.tool.stop())  # fires once both killed children are reaped

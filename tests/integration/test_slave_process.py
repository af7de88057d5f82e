"""Our slave as a real `twistd mupdate-slave` process following our master, on 127.0.0.1.

Propagation is observed through UPDATE streams (a chained reader on the slave), so waits
are on events bounded by the client's read timeout, not on polls of the store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cyrus import repo_root, wait_until
from tests.helpers.ourmaster import OurMaster, _env
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import Entry, MupdateClient
from tests.helpers.spool import write_header


def login(node: OurMaster, timeout: float = 20.0) -> MupdateClient:
    c = MupdateClient.connect(node.host, node.port, timeout=timeout)
    c.authenticate_plain(node.admin, node.password)
    return c


def stream(node: OurMaster) -> tuple[MupdateClient, list[Entry]]:
    c = login(node)
    c.send_raw(b"U01 UPDATE\r\n")
    dump = c.read_until_tagged(b"U01")
    assert dump.ok, dump.raw
    return c, dump.entries


def next_change(c: MupdateClient) -> tuple[bytes, tuple[bytes, ...]]:
    r = c.read_response()
    assert r.tag == b"U01", r.raw
    return r.kind, r.args


def write(node: OurMaster, *commands: tuple[str, ...]) -> None:
    with login(node) as c:
        for verb, *args in commands:
            result = c.command(verb.encode(), *args)
            assert result.ok, result.raw


@pytest.fixture
def master(tmp_path):
    m = OurMaster(tmp_path / "master", servername="m1")
    m.start()
    yield m
    m.stop()


def make_slave(tmp_path: Path, master: OurMaster, name: str, **kw) -> OurSlave:
    kw.setdefault("extra_config", {"mupdate_retry_max": "3"})
    return OurSlave(
        tmp_path / name, master_address=master.address, servername=name, retry_delay=1, **kw
    )


@pytest.fixture
def slave(tmp_path, master):
    s = make_slave(
        tmp_path, master, "fe1", extra_config={"mupdate_retry_max": "3", "mupdate_realm": "EX"}
    )
    yield s
    s.stop()


def test_sync_then_stream_then_read_only(master, slave):
    write(master, ("ACTIVATE", "user.a", "be1!default", "a\tlrs\t"), ("RESERVE", "user.r", "be2!p"))
    slave.start()
    # mupdate_realm is read (Cyrus's option) but none of our mechanisms has a realm: say so.
    assert "mupdate_realm is set but has no effect" in slave.log_path.read_text()
    with login(master) as m:
        expected = m.list()
    watcher, dump = stream(slave)
    with watcher:
        assert dump == expected
        write(master, ("ACTIVATE", "user.b", "be1!default", ""), ("DELETE", "user.a"))
        assert next_change(watcher) == (b"MAILBOX", (b"user.b", b"be1!default", b""))
        assert next_change(watcher) == (b"DELETE", (b"user.a",))
        refused = watcher.command(b"NOOP")
        assert refused.ok
    with login(slave) as s:
        assert s.command(b"RESERVE", "user.x", "be1!p").raw.endswith(b'BAD "read-only session"\r\n')
        assert s.find("user.b") == Entry(b"MAILBOX", b"user.b", b"be1!default", b"")


def test_reconnect_after_master_restart_and_resync_of_missed_changes(master, slave):
    write(master, ("ACTIVATE", "user.keep", "be1!p", ""), ("ACTIVATE", "user.gone", "be1!p", ""))
    slave.start()
    watcher, _ = stream(slave)
    with watcher:
        master.stop()
        master.start()
        write(master, ("DELETE", "user.gone"), ("ACTIVATE", "user.new", "be2!p", ""))
        seen = {next_change(watcher) for _ in range(2)}  # the resync publishes both
    assert seen == {(b"DELETE", (b"user.gone",)), (b"MAILBOX", (b"user.new", b"be2!p", b""))}
    slave.stop()
    write(master, ("ACTIVATE", "user.offline", "be3!p", ""))  # made while the slave is down
    slave.start()
    watcher, dump = stream(slave)
    with watcher, login(master) as m:
        if Entry(b"MAILBOX", b"user.offline", b"be3!p", b"") not in dump:
            assert next_change(watcher) == (b"MAILBOX", (b"user.offline", b"be3!p", b""))
        assert {e.name for e in login(slave).list()} == {e.name for e in m.list()}


def test_chained_slave_follows_a_slave(tmp_path, master, slave):
    write(master, ("ACTIVATE", "user.c", "be1!p", "c\tlrs\t"))
    slave.start()
    chained = OurSlave(
        tmp_path / "fe2",
        master_address=slave.address,
        servername="fe2",
        retry_delay=1,
        extra_config={"mupdate_retry_max": "3"},
    )
    chained.start()
    try:
        watcher, dump = stream(chained)
        with watcher:
            assert dump == [Entry(b"MAILBOX", b"user.c", b"be1!p", b"c\tlrs\t")]
            write(master, ("RESERVE", "user.d", "be2!p"))
            assert next_change(watcher) == (b"RESERVE", (b"user.d", b"be2!p"))
    finally:
        chained.stop()


def test_empty_slave_holds_readers_until_first_sync(tmp_path, master):
    write(master, ("ACTIVATE", "user.first", "be1!p", ""))
    master.stop()
    slave = make_slave(tmp_path, master, "fe3")
    slave.start()
    try:
        with login(slave) as reader:
            reader.send_raw(b"L1 LIST\r\n")
            master.start()
            result = reader.read_until_tagged(b"L1")
            assert result.entries == [Entry(b"MAILBOX", b"user.first", b"be1!p", b"")]
        master.stop()
        slave.stop()
        slave.start()  # master down, copy from the earlier run: served at once
        with login(slave) as reader:
            assert reader.list() == [Entry(b"MAILBOX", b"user.first", b"be1!p", b"")]
    finally:
        slave.stop()


@pytest.mark.parametrize("layout", ["legacy", "uuid"])
def test_seed_000_master_loses_its_database(tmp_path, master, layout):
    """Seed 000: the master loses its database; no slave loses a mailbox. The backend's
    headers are in Cyrus's legacy layout, or in 3.6's default uuid layout, where only the
    header names its mailbox (the slave scans its partition)."""
    local = ["user.l1", "user.l1.Sent", "user.l2"]
    partition = tmp_path / "be1-spool"
    for name in local:
        write_header(partition, name.encode(), layout)
    write(
        master,
        *(("ACTIVATE", name, "be1!default", "o\tlrs\t") for name in local),
        *(("ACTIVATE", f"user.r{i}", "be2!default", "") for i in range(20)),
    )
    backend = make_slave(tmp_path, master, "be1", mode="unified", partitions={"default": partition})
    frontend = make_slave(tmp_path, master, "fe1")
    backend.start()
    frontend.start()
    try:
        with login(backend) as b, login(frontend) as f:
            assert len(b.list()) == len(f.list()) == 23
        master.stop()
        shutil.rmtree(master.store_dir)
        master.start()
        # The unified backend heals the master: its three local mailboxes come back.
        watcher, dump = stream(master)
        with watcher:
            healed = {e.name for e in dump}
            while not set(local) <= {n.decode() for n in healed}:
                kind, args = next_change(watcher)
                if kind == b"MAILBOX":
                    healed.add(args[0])
        with login(master) as m:
            assert sorted(e.name for e in m.list()) == sorted(n.encode() for n in local)
            assert all(e.location == b"be1!default" and e.acl == b"o\tlrs\t" for e in m.list())
        with login(backend) as b:
            names = {e.name for e in b.list()}
        assert {n.encode() for n in local} <= names  # the guard kept every local mailbox
        assert "partition scan: 3 mailboxes on" in backend.log_path.read_text()
        # The frontend's brake holds the resync that would drop 20 of 23 entries.
        wait_until(
            lambda: "mass-delete brake holds" in frontend.log_path.read_text(),
            30,
            "the brake to hold",
        )
        with login(frontend) as f:
            assert len(f.list()) == 23
        # The operator releases it once; the next resync applies the master's list.
        watcher, _ = stream(frontend)
        with watcher:
            tool = [
                sys.executable,
                "-m",
                "mupdate.tools.brake",
                "release",
                "--config",
                str(frontend.config_path),
            ]
            subprocess.run(tool, env=_env(repo_root()), check=True, timeout=60, capture_output=True)
            removed = 0
            while removed < 20:
                kind, _args = next_change(watcher)
                removed += kind == b"DELETE"
        with login(frontend) as f:
            assert sorted(e.name for e in f.list()) == sorted(n.encode() for n in local)
    finally:
        backend.stop()
        frontend.stop()

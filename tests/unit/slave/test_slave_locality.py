"""The guard's on-disk fact from partition scans: when they run, and what a failure means.

Real files in tmp_path; scans run through ``ManualRunner`` (the test says when the thread
would finish) or at once; time is a ``Clock``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, globalLogPublisher

from mupdate.slave.disk import SpoolLayout
from mupdate.slave.locality import DiskLocality, NotScanned
from mupdate.slave.scan import MAGIC
from tests.helpers.glue import ManualRunner, immediate

ALICE_UUID = "uuid/x/4/x4wc3csw9usap879mghge8wh"


def put(root: Path, relative: str, name: bytes) -> None:
    path = root / relative / "cyrus.header"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MAGIC + b"%(T e N " + name + b" I x A %(a lrs))\n")


@pytest.fixture
def events():
    captured: list[LogEvent] = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


def at(events: list[LogEvent], level: LogLevel, fragment: str) -> list[LogEvent]:
    return [
        e for e in events if e.get("log_level") == level and fragment in (e.get("log_format") or "")
    ]


def locality(partition: Path, runner: Any = immediate, clock: Clock | None = None) -> DiskLocality:
    return DiskLocality([partition], SpoolLayout(), runner, clock or Clock())


def test_before_the_first_scan_it_cannot_say_absent(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "user/legacy", b"user.legacy")
    put(p, ALICE_UUID, b"user.alice")
    disk = locality(p)
    assert disk.on_disk(b"user.legacy") is True  # the legacy path answers without a scan
    with pytest.raises(NotScanned):
        disk.on_disk(b"user.alice")


def test_scan_finds_uuid_names_and_the_fast_path_finds_new_legacy_ones(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    p = tmp_path / "spool"
    put(p, ALICE_UUID, b"user.alice")
    disk = locality(p)
    done = disk.scan()
    assert done.called
    assert disk.on_disk(b"user.alice") is True
    assert disk.on_disk(b"user.bob") is False
    put(p, "user/bob", b"user.bob")  # made since the scan, legacy layout
    assert disk.on_disk(b"user.bob") is True
    put(p, "uuid/n/e/new000", b"user.new")  # made since the scan, uuid layout: next scan
    assert disk.on_disk(b"user.new") is False
    [info] = at(events, LogLevel.info, "partition scan")
    assert info["count"] == 1
    assert info["path"] == [str(p)]


def test_without_partitions_nothing_is_on_disk_and_nothing_is_scanned(tmp_path: Path) -> None:
    runner = ManualRunner()
    disk = DiskLocality([], SpoolLayout(), runner, Clock())
    assert disk.scan().called
    assert disk.on_disk(b"user.alice") is False
    assert disk.rescan_for(b"user.alice") is None
    assert runner.calls == []


def test_a_failed_scan_keeps_what_earlier_scans_found_and_answers_nothing_else(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    p = tmp_path / "spool"
    put(p, ALICE_UUID, b"user.alice")
    disk = locality(p)
    disk.scan()
    p.rename(tmp_path / "unmounted")  # the partition is gone: an unmounted spool
    failed = disk.scan()
    reason: list[BaseException] = []
    failed.addErrback(lambda f: reason.append(f.value))
    assert isinstance(reason[0], FileNotFoundError)
    assert disk.on_disk(b"user.alice") is True  # found before: still local
    with pytest.raises(OSError, match="the last partition scan failed"):
        disk.on_disk(b"user.bob")
    [error] = at(events, LogLevel.error, "cannot scan the partitions")
    assert error["path"] == [str(p)]
    assert "No such file or directory" in error["reason"]
    (tmp_path / "unmounted").rename(p)  # mounted again: the next scan clears the fault
    disk.scan()
    assert disk.on_disk(b"user.bob") is False
    assert (disk.scans, disk.failures) == (2, 1)


def test_scanned_answers_from_the_scan_alone_and_still_refuses_to_guess(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, ALICE_UUID, b"user.alice")
    put(p, "user/legacy", b"user.legacy")
    looked_up: list[bytes] = []

    def header_now(name: bytes) -> bool:
        looked_up.append(name)
        return True

    disk = DiskLocality([p], SpoolLayout(), immediate, Clock(), header_now=header_now)
    with pytest.raises(NotScanned):
        disk.scanned(b"user.bob")
    disk.scan()
    put(p, "user/bob", b"user.bob")  # made since the scan: the next scan will tell
    assert [disk.scanned(n) for n in (b"user.alice", b"user.legacy", b"user.bob")] == [
        True,
        True,
        False,
    ]
    assert looked_up == []
    assert disk.on_disk(b"user.bob") is True  # the stream's check looks at the disk
    assert looked_up == [b"user.bob"]
    p.rename(tmp_path / "unmounted")
    disk.scan().addErrback(lambda _: None)
    with pytest.raises(OSError, match="the last partition scan failed"):
        disk.scanned(b"user.bob")
    assert disk.scanned(b"user.alice") is True  # found before: still local


def test_concurrent_requests_share_one_scan(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, ALICE_UUID, b"user.alice")
    runner = ManualRunner()
    disk = locality(p, runner)
    first, second = disk.scan(), disk.scan()
    assert len(runner.calls) == 1
    assert not first.called
    runner.run_all()
    assert first.called
    assert second.called
    assert disk.on_disk(b"user.alice") is True


def test_rescan_for_a_stream_removal_is_rate_limited(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    p = tmp_path / "spool"
    put(p, ALICE_UUID, b"user.alice")
    clock = Clock()
    runner = ManualRunner()
    disk = locality(p, runner, clock)
    disk.scan()
    clock.advance(2)  # the scan took 2 s: the interval becomes max(60, 10 x 2) = 60
    runner.run_all()
    assert disk.interval == 60
    assert disk.rescan_for(b"user.alice") is None  # found: nothing to learn
    assert disk.rescan_for(b"user.bob") is None  # scanned 2 s ago
    clock.advance(57.75)
    assert disk.rescan_for(b"user.bob") is None
    clock.advance(0.25)
    waiting = disk.rescan_for(b"user.bob")
    assert waiting is not None
    assert not waiting.called
    assert disk.rescan_for(b"user.carl") is not None  # joins the scan in flight
    assert len(runner.calls) == 1
    clock.advance(10)  # a slow scan: 10 s
    runner.run_all()
    assert waiting.called
    assert disk.interval == 100
    assert disk.rescan_for(b"user.bob") is None
    logged = at(events, LogLevel.info, "scanning partitions before the master removes")
    assert [e["mailbox"] for e in logged] == ["user.bob", "user.carl"]


def test_unnamed_headers_are_reported_not_fatal(tmp_path: Path, events: list[LogEvent]) -> None:
    p = tmp_path / "spool"
    put(p, ALICE_UUID, b"user.alice")
    junk = p / "uuid/j/u/junk0" / "cyrus.header"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not a header")
    disk = locality(p)
    assert disk.scan().called
    assert disk.error is None
    assert disk.on_disk(b"user.alice") is True
    [warned] = at(events, LogLevel.warn, "name no mailbox")
    assert warned["count"] == 1
    assert warned["path"] == [str(junk)]


def test_stop_ends_a_running_scan_quietly(tmp_path: Path, events: list[LogEvent]) -> None:
    p = tmp_path / "spool"
    put(p, ALICE_UUID, b"user.alice")
    runner = ManualRunner()
    disk = locality(p, runner)
    d = disk.scan()
    disk.stop()
    runner.run_all()
    failures: list[BaseException] = []
    d.addErrback(lambda f: failures.append(f.value))
    assert "stopped" in str(failures[0])
    assert at(events, LogLevel.error, "cannot scan") == []

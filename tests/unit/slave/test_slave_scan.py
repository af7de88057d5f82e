"""The partition scan: every ``cyrus.header``, every layout, read from real files.

The header bytes below are copied from Cyrus 3.6.1 spools (``mailbox_legacy_dirs: no`` for
the uuid layout, ``hashimapspool: yes`` with ``mailbox_legacy_dirs: yes`` for the hashed one).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mupdate.slave.disk import header_roots
from mupdate.slave.scan import (
    MAGIC,
    MAX_UNNAMED_SHOWN,
    HeaderError,
    ScanError,
    header_name,
    scan_partitions,
)


def cyrus_header(dlist: bytes) -> bytes:
    return MAGIC + dlist + b"\n"


ALICE = cyrus_header(
    b"%(T e N user.alice I x4wc3csw9usap879mghge8wh A %(alice lrswipkxtecdan bob lrs))"
)
SPACE = cyrus_header(
    b'%(T e N "user.alice.sp ace" I pk761pts0qlmjf6rrzz0u8do A %(alice lrswipkxtecdan))'
)
DAVE = cyrus_header(
    b"%(T el N example.com!user.dave.x^y I bdpk5hlnzx8e9pb2qqcx47tv "
    b"A %(dave@example.com lrswipkxtecdan))"
)
CAROL = cyrus_header(b"%(T el N user.carol I u2k77q4gkxglf2gl67ju73id A %(carol lrswipkxtecdan))")
OLD = MAGIC + b"user.carol\t4f8e2a1c0b3d5e67\n\\Seen junk\ncarol\tlrswipkxtecda\t\n"
FIRST_LINE_ONLY = b"\xa1\x02\x8b\x0dCyrus mailbox header\n"  # what older tests wrote


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (ALICE, b"user.alice"),
        (SPACE, b"user.alice.sp ace"),
        (DAVE, b"example.com!user.dave.x^y"),
        (CAROL, b"user.carol"),
        (cyrus_header(b"%(N {8+}\r\nuser.\xe9t\xe9 I x)"), b"user.\xe9t\xe9"),
        # N is found before a part that does not parse, and without the line's end
        (MAGIC + b"%(T e N user.trunc I abc A %(alice lrs", b"user.trunc"),
        (OLD, None),  # quotaroot TAB uniqueid: no name in the header
        (MAGIC + b"\tuniqueid\n\n\n", None),
    ],
)
def test_header_name(data: bytes, name: bytes | None) -> None:
    assert header_name(data) == name


@pytest.mark.parametrize(
    "data",
    [
        b"",
        FIRST_LINE_ONLY,
        b"garbage" + ALICE,
        MAGIC + b"%N user.x\n",
        MAGIC + b"%(T e I abc)\n",  # no N
        MAGIC + b"%(T e N NIL I abc)\n",
        MAGIC + b'%(T e N "" I abc)\n',
        MAGIC + b"%(T e N (user x) I abc)\n",
        MAGIC + b'%(T e N "user.x\n',
        MAGIC + b"%(T e N {99}\r\nuser.x)\n",
    ],
)
def test_header_name_refuses_what_cyrus_refuses(data: bytes) -> None:
    with pytest.raises(HeaderError):
        header_name(data)


def put(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative / "cyrus.header"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_uuid_layout(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    put(p, "uuid/p/k/pk761pts0qlmjf6rrzz0u8do", SPACE)
    put(p, "uuid/b/d/bdpk5hlnzx8e9pb2qqcx47tv", DAVE)
    (p / "uuid/x/4/x4wc3csw9usap879mghge8wh/1.").write_bytes(b"a message")
    (p / "uuid/j/p/jpy1gv9w1q2ebxaxp5cqtpja").mkdir(parents=True)  # no header (yet)
    result = scan_partitions([p])
    assert result.names == {b"user.alice", b"user.alice.sp ace", b"example.com!user.dave.x^y"}
    assert result.headers == 3
    assert result.unnamed == []


def test_scan_does_not_list_uuid_mailbox_directories(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    put(p, "uuid/x/4/x4wc3csw9usap879mghge8wh/inner", CAROL)  # not where Cyrus keeps one
    assert scan_partitions([p]).names == {b"user.alice"}


def test_scan_hashed_legacy_layout(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "c/user/carol", CAROL)
    put(p, "c/user/carol/Sent", cyrus_header(b"%(T el N user.carol.Sent I mx A %(carol lr))"))
    put(p, "domain/e/example.com/d/user/dave/x^y", DAVE)
    assert scan_partitions([p]).names == {
        b"user.carol",
        b"user.carol.Sent",
        b"example.com!user.dave.x^y",
    }


def test_scan_old_headers_take_the_name_from_the_legacy_path(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "user/carol", OLD)
    put(p, "domain/example.com/user/bob", OLD)
    put(p, "z/user/zed", OLD)  # hashed: read both ways
    result = scan_partitions([p])
    assert {b"user.carol", b"example.com!user.bob", b"user.zed"} <= result.names
    assert result.names - {b"user.carol", b"example.com!user.bob", b"user.zed"} == {
        b"domain.example.com.user.bob",
        b"z.user.zed",
    }
    assert result.unnamed == []


def test_scan_garbage_headers(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "user/alice", FIRST_LINE_ONLY)  # legacy: the path still names it
    bad = put(p, "uuid/g/a/garbage0000", b"\0" * 40)  # uuid: nothing names it
    put(p, "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    result = scan_partitions([p])
    assert result.names == {b"user.alice"}
    assert result.unnamed == [str(bad)]
    assert result.unnamed_count == 1
    assert result.headers == 3


def test_scan_counts_every_unnamed_but_lists_a_few(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    for i in range(MAX_UNNAMED_SHOWN + 5):
        put(p, f"uuid/g/{i % 10}/g{i % 10}junk{i:02d}", b"junk")
    result = scan_partitions([p])
    assert result.unnamed_count == MAX_UNNAMED_SHOWN + 5
    assert len(result.unnamed) == MAX_UNNAMED_SHOWN
    assert result.names == set()


def test_scan_several_partitions(tmp_path: Path) -> None:
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    put(p1, "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    put(p2, "user/carol", CAROL)
    assert scan_partitions([p1, p2]).names == {b"user.alice", b"user.carol"}


def test_scan_finds_headers_only_on_the_metapartition(tmp_path: Path) -> None:
    # metapartition_files: header index: Cyrus writes cyrus.header (and cyrus.index) under
    # metapartition-p1, in the same directories it makes for messages on partition-p1.
    data, meta = tmp_path / "data", tmp_path / "meta"
    (data / "uuid/x/4/x4wc3csw9usap879mghge8wh").mkdir(parents=True)
    (data / "uuid/x/4/x4wc3csw9usap879mghge8wh/1.").write_bytes(b"a message")
    (data / "c/user/carol").mkdir(parents=True)
    put(meta, "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    put(meta, "c/user/carol", CAROL)
    (meta / "c/user/carol/cyrus.index").write_bytes(b"index")
    roots = header_roots((("p1", data),), (("p1", meta),), {"header", "index"})
    assert roots == [meta]
    assert scan_partitions(roots).names == {b"user.alice", b"user.carol"}
    assert scan_partitions([data]).names == set()  # what the data partition alone says


def test_scan_keeps_to_the_data_partition_without_header_in_metapartition_files(
    tmp_path: Path,
) -> None:
    data, meta = tmp_path / "data", tmp_path / "meta"
    put(data, "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    (meta / "uuid/x/4/x4wc3csw9usap879mghge8wh").mkdir(parents=True)
    (meta / "uuid/x/4/x4wc3csw9usap879mghge8wh/cyrus.index").write_bytes(b"index")
    put(meta, "uuid/s/t/stale0000000000000000000", CAROL)  # not where Cyrus reads headers
    roots = header_roots((("p1", data),), (("p1", meta),), {"index", "cache"})
    assert roots == [data]
    assert scan_partitions(roots).names == {b"user.alice"}


def test_scan_of_an_absent_metapartition_fails(tmp_path: Path) -> None:
    # An unmounted metapartition hides every header: an error, never "not here".
    data = tmp_path / "data"
    put(data, "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    roots = header_roots((("p1", data),), (("p1", tmp_path / "meta"),), {"header"})
    with pytest.raises(FileNotFoundError):
        scan_partitions(roots)


def test_scan_of_a_metapartition_does_not_follow_links_out_of_it(tmp_path: Path) -> None:
    data, meta = tmp_path / "data", tmp_path / "meta"
    put(data, "user/alice", ALICE)  # a stale header left on the data partition
    (meta / "user" / "alice").mkdir(parents=True)
    (meta / "user" / "alice" / "cyrus.header").symlink_to(data / "user/alice/cyrus.header")
    (meta / "data").symlink_to(data)  # a directory link
    result = scan_partitions(header_roots((("p1", data),), (("p1", meta),), {"header"}))
    assert result.names == set()
    assert result.links == 1


def test_scan_of_an_empty_partition_finds_nothing(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    result = scan_partitions([tmp_path / "p"])
    assert result.names == set()
    assert result.directories == 1


def test_scan_of_an_absent_partition_fails(tmp_path: Path) -> None:
    # An unmounted spool must not read as "no mailboxes here".
    (tmp_path / "p1").mkdir()
    with pytest.raises(FileNotFoundError):
        scan_partitions([tmp_path / "p1", tmp_path / "absent"])


def test_scan_does_not_follow_symlinks_out_of_the_partition(tmp_path: Path) -> None:
    p, outside = tmp_path / "spool", tmp_path / "outside"
    put(outside, "user/evil", cyrus_header(b"%(T e N user.evil I e)"))
    put(outside, "user/linked", cyrus_header(b"%(T e N user.linked I l)"))
    put(p, "user/alice", ALICE)
    (p / "user" / "evil").symlink_to(outside / "user" / "evil")  # a directory link
    (p / "user" / "linked").mkdir()
    (p / "user" / "linked" / "cyrus.header").symlink_to(outside / "user/linked/cyrus.header")
    (p / "user" / "inside").mkdir()
    (p / "user" / "inside" / "cyrus.header").symlink_to(p / "user/alice/cyrus.header")
    result = scan_partitions([p])
    assert result.names == {b"user.alice"}  # the inside link reads alice's header
    assert result.links == 1
    assert result.headers == 2


def test_scan_through_a_symlinked_partition(tmp_path: Path) -> None:
    put(tmp_path / "real", "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert scan_partitions([tmp_path / "link"]).names == {b"user.alice"}


def test_scan_skips_header_entries_that_are_not_files(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    (p / "user" / "dirhdr" / "cyrus.header").mkdir(parents=True)
    (p / "user" / "fifo").mkdir()
    os.mkfifo(p / "user" / "fifo" / "cyrus.header")  # opening it would block
    assert scan_partitions([p]).names == set()


def test_scan_fails_on_a_header_it_cannot_read(tmp_path: Path) -> None:
    # A symlink loop: stat fails with ELOOP even for root; the scan must not shrug it off.
    p = tmp_path / "spool"
    (p / "uuid" / "l" / "o").mkdir(parents=True)
    (p / "uuid" / "l" / "o" / "loop0").mkdir()
    (p / "uuid" / "l" / "o" / "loop0" / "cyrus.header").symlink_to("cyrus.header")
    with pytest.raises(OSError, match="Too many levels of symbolic links") as caught:
        scan_partitions([p])
    assert not isinstance(caught.value, FileNotFoundError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_scan_fails_on_an_unreadable_directory(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "user/alice", ALICE)
    (p / "user").chmod(0)
    try:
        with pytest.raises(PermissionError):
            scan_partitions([p])
    finally:
        (p / "user").chmod(0o755)


def test_scan_is_bounded_in_depth(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "a/b/c/d", CAROL)
    assert scan_partitions([p], max_depth=4).names == {b"user.carol"}
    with pytest.raises(ScanError, match="deeper than any Cyrus mailbox path"):
        scan_partitions([p], max_depth=3)


def test_scan_reads_a_bounded_prefix_of_each_header(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    acl = b" ".join(b"u%05d lrs" % i for i in range(20000))  # a header far above the bound
    put(p, "uuid/x/4/x4wc3csw9usap879mghge8wh", cyrus_header(b"%(T e N user.big A %(" + acl))
    assert scan_partitions([p], max_header_bytes=4096).names == {b"user.big"}


def test_scan_stops_when_asked(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "user/alice", ALICE)
    with pytest.raises(ScanError, match="stopped"):
        scan_partitions([p], should_stop=lambda: True)


# -- mailboxes that go away while the scan runs (Cyrus deletes and renames at any time) -------


def on_call(n: int, action: Callable[[], None]) -> Callable[[], bool]:
    """A ``should_stop`` that never stops, but runs ``action`` just before the scan takes its
    ``n``-th directory off its stack: everything listed by then is still to be visited."""
    calls = 0

    def hook() -> bool:
        nonlocal calls
        calls += 1
        if calls == n:
            action()
        return False

    return hook


def replace_with_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_bytes(b"not a directory any more")


@pytest.mark.parametrize("how", [shutil.rmtree, replace_with_file])
def test_scan_skips_a_directory_gone_since_it_was_listed(
    tmp_path: Path, how: Callable[[Path], None]
) -> None:
    p = tmp_path / "spool"
    put(p, "user/alice", ALICE)
    put(p, "user/bob", cyrus_header(b"%(T e N user.bob I b)"))
    # Calls 1 and 2 take the partition and user/ (listing alice and bob); then bob goes.
    result = scan_partitions([p], should_stop=on_call(3, lambda: how(p / "user" / "bob")))
    assert result.names == {b"user.alice"}
    assert result.vanished == 1


def test_scan_skips_a_uuid_mailbox_gone_since_it_was_listed(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "uuid/x/4/x4wc3csw9usap879mghge8wh", ALICE)
    put(p, "uuid/x/4/x4bbbbbbbbbbbbbbbbbbbbbb", cyrus_header(b"%(T e N user.bob I b)"))
    # partition, uuid/, uuid/x/, uuid/x/4/ (listing both mailboxes); then bob's directory
    # turns into a file, and reading its header meets ENOTDIR.
    gone = p / "uuid/x/4/x4bbbbbbbbbbbbbbbbbbbbbb"
    result = scan_partitions([p], should_stop=on_call(5, lambda: replace_with_file(gone)))
    assert result.names == {b"user.alice"}


def test_scan_fails_when_the_partition_itself_goes_mid_scan(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "user/alice", ALICE)

    def unmount() -> None:
        p.rename(tmp_path / "elsewhere")
        p.mkdir()  # the bare mount point: another directory where the partition was

    with pytest.raises(ScanError, match="the partition changed during the scan"):
        scan_partitions([p], should_stop=on_call(2, unmount))


def test_scan_fails_when_the_partition_is_removed_mid_scan(tmp_path: Path) -> None:
    p = tmp_path / "spool"
    put(p, "user/alice", ALICE)
    with pytest.raises(FileNotFoundError):
        scan_partitions([p], should_stop=on_call(2, lambda: shutil.rmtree(p)))

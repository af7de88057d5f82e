"""Is a mailbox on our partitions: Cyrus's legacy spool layout, and names that try to escape.

design.md "Local-authority guard" (a ``cyrus.header`` under a ``partition-NAME`` path); §11.1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mupdate.slave.disk import header_path, make_on_disk

P = Path("/var/spool/cyrus/mail")


@pytest.mark.parametrize(
    ("name", "path"),
    [
        (b"user.alice", "user/alice/cyrus.header"),
        (b"user.carol.Sent", "user/carol/Sent/cyrus.header"),
        (b"user.carol.a^b", "user/carol/a^b/cyrus.header"),  # as Cyrus 3.6 lays it out
        (b"user.carol.with space", "user/carol/with space/cyrus.header"),
        (b"user.carol.&AOk-t&AOk-", "user/carol/&AOk-t&AOk-/cyrus.header"),
        (b"user.carol.a-b", "user/carol/a-b/cyrus.header"),
        (b"news.list", "news/list/cyrus.header"),
        (b"DELETED.user.carol.Sent.6B038279", "DELETED/user/carol/Sent/6B038279/cyrus.header"),
        (b"example.com!user.alice", "domain/example.com/user/alice/cyrus.header"),
        (b"example.com!user.alice.a^b", "domain/example.com/user/alice/a^b/cyrus.header"),
        (b"example.com!shared", "domain/example.com/shared/cyrus.header"),
        (b"user.a^^b", "user/a^^b/cyrus.header"),
        (b"user.^^", "user/^^/cyrus.header"),  # '^' never becomes '.': no '..' from a name
        (b"user.^x", "user/^x/cyrus.header"),
    ],
)
def test_header_path_legacy_layout(name: bytes, path: str) -> None:
    assert header_path(P, name) == P / path


def test_header_path_keeps_8bit_bytes() -> None:
    path = header_path(P, b"user.caf\xe9")
    assert os.fsencode(path) == b"/var/spool/cyrus/mail/user/caf\xe9/cyrus.header"


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"user/alice",
        b"user.alice/../../etc",
        b"user.a\0b",
        b".user",
        b"user.",
        b"user..alice",
        b"!user.alice",  # empty domain
        b".!user.alice",
        b"..!user.alice",
        b"a/b!user.alice",
        b"a\0!user.alice",
        b"example.com!",
        b"example.com!user..x",
    ],
)
def test_header_path_refuses_names_that_leave_the_partition(name: bytes) -> None:
    with pytest.raises(ValueError, match=r"mailbox name|domain"):
        header_path(P, name)


def make_header(partition: Path, relative: str) -> None:
    path = partition / relative / "cyrus.header"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xa1\x02\x8b\x0dCyrus mailbox header\n")


@pytest.fixture
def spool(tmp_path: Path) -> tuple[Path, Path]:
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    make_header(p1, "user/alice")
    make_header(p1, "user/carol/a^b")
    make_header(p2, "domain/example.com/user/bob")
    (p1 / "user" / "nohdr").mkdir(parents=True)
    (p1 / "user" / "dirhdr" / "cyrus.header").mkdir(parents=True)
    make_header(tmp_path, "secret")  # outside both partitions
    make_header(tmp_path, "p1x/user/x")  # a sibling whose name starts like p1
    return p1, p2


@pytest.mark.parametrize(
    ("name", "found"),
    [
        (b"user.alice", True),
        (b"user.carol.a^b", True),
        (b"example.com!user.bob", True),
        (b"user.bob", False),
        (b"user.carol", False),  # a parent directory, no header of its own
        (b"user.nohdr", False),
        (b"user.dirhdr", False),  # cyrus.header is a directory
        (b"other.com!user.bob", False),
        (b"user.alice.Sent", False),
    ],
)
def test_make_on_disk_finds_headers_on_any_partition(
    spool: tuple[Path, Path], name: bytes, found: bool
) -> None:
    assert make_on_disk(spool)(name) is found


@pytest.mark.parametrize(
    "name",
    [
        b"^^.secret",
        b"^^.^^.secret",
        b"user.^^.^^.^^.secret",
        b"^^!secret",
        b"..!secret",
        b"^^.p1x.user.x",
        b"",
    ],
)
def test_make_on_disk_refuses_traversal(spool: tuple[Path, Path], name: bytes) -> None:
    assert make_on_disk(spool)(name) is False


def test_make_on_disk_does_not_follow_symlinks_out_of_the_partition(
    spool: tuple[Path, Path],
) -> None:
    p1, _ = spool
    (p1 / "user" / "evil").symlink_to(p1.parent / "secret")
    (p1 / "user" / "alias").symlink_to(p1 / "user" / "alice")
    on_disk = make_on_disk([p1])
    assert on_disk(b"user.evil") is False
    assert on_disk(b"user.alias") is True  # a link that stays inside is still ours


def test_make_on_disk_through_a_symlinked_partition(
    spool: tuple[Path, Path], tmp_path: Path
) -> None:
    p1, _ = spool
    (tmp_path / "link").symlink_to(p1)
    assert make_on_disk([tmp_path / "link"])(b"user.alice") is True


def test_make_on_disk_with_no_partitions_finds_nothing(spool: tuple[Path, Path]) -> None:
    assert make_on_disk([])(b"user.alice") is False


def test_make_on_disk_missing_partition_finds_nothing(tmp_path: Path) -> None:
    assert make_on_disk([tmp_path / "absent"])(b"user.alice") is False


def test_make_on_disk_accepts_a_generator_once(spool: tuple[Path, Path]) -> None:
    on_disk = make_on_disk(p for p in spool)
    assert on_disk(b"user.alice") is True
    assert on_disk(b"example.com!user.bob") is True


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_make_on_disk_unreadable_spool_raises_rather_than_says_absent(
    spool: tuple[Path, Path],
) -> None:
    p1, _ = spool
    (p1 / "user").chmod(0)
    try:
        with pytest.raises(PermissionError):
            make_on_disk([p1])(b"user.alice")
    finally:
        (p1 / "user").chmod(0o755)

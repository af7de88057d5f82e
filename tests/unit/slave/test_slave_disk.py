"""Is a mailbox on our partitions: Cyrus's legacy spool layout, and names that try to escape.

design.md "Local-authority guard" (a ``cyrus.header`` under a ``partition-NAME`` path); §11.1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mupdate.slave.disk import (
    SpoolLayout,
    dir_hash,
    header_path,
    header_roots,
    legacy_names,
    make_on_disk,
)

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


# -- metapartitions: where Cyrus 3.6's mboxname_metapath puts cyrus.header ----------------

DATA = (("a", Path("/data/a")), ("b", Path("/data/b")))
META = (("a", Path("/meta/a")), ("c", Path("/meta/c")))


@pytest.mark.parametrize(
    ("files", "metadirs", "roots"),
    [
        ((), (), ["/data/a", "/data/b"]),
        ({"index", "cache"}, (), ["/data/a", "/data/b"]),  # the header stays with the data
        ({"header"}, (), ["/meta/a", "/data/b"]),  # b has no metapartition; c has no data
        ({"header", "index"}, (("b", Path("/fast/b")),), ["/meta/a", "/fast/b"]),
        ((), (("a", Path("/fast/a")),), ["/fast/a", "/data/b"]),  # metadir-header wins alone
    ],
)
def test_header_roots_follow_cyrus(
    files: set[str], metadirs: tuple[tuple[str, Path], ...], roots: list[str]
) -> None:
    assert header_roots(DATA, META, files, metadirs) == [Path(r) for r in roots]


def test_header_roots_name_a_shared_directory_once() -> None:
    shared = (("a", Path("/meta")), ("b", Path("/meta")))
    assert header_roots(DATA, shared, {"header"}) == [Path("/meta")]


def test_make_on_disk_finds_a_legacy_header_on_the_metapartition(tmp_path: Path) -> None:
    data, meta = tmp_path / "data", tmp_path / "meta"
    make_header(meta, "user/alice")
    (data / "user" / "alice").mkdir(parents=True)
    (data / "user" / "alice" / "1.").write_bytes(b"a message")
    partitions, metas = (("p", data),), (("p", meta),)
    assert make_on_disk(header_roots(partitions, metas, {"header"}))(b"user.alice") is True
    assert make_on_disk(header_roots(partitions, metas, {"index"}))(b"user.alice") is False


# -- hashimapspool: Cyrus's hash letters (seen on Cyrus 3.6.1 with hashimapspool: yes) ----

HASHED = SpoolLayout(hashed=True)
FULL = SpoolLayout(hashed=True, full=True)


@pytest.mark.parametrize(
    ("name", "layout", "path"),
    [
        (b"user.carol", HASHED, "c/user/carol/cyrus.header"),
        (b"user.carol.Sent", HASHED, "c/user/carol/Sent/cyrus.header"),
        (b"shared", HASHED, "s/shared/cyrus.header"),
        (b"shared.news", HASHED, "n/shared/news/cyrus.header"),  # the second part is hashed
        (b"user.9lives", HASHED, "q/user/9lives/cyrus.header"),
        (b"example.com!user.dave", HASHED, "domain/e/example.com/d/user/dave/cyrus.header"),
        (b"example.com!user.dave.x^y", HASHED, "domain/e/example.com/d/user/dave/x^y/cyrus.header"),
        # fulldirhash: yes (Cyrus's dir_hash_c, full): letters A-W
        (b"user.zoe", FULL, "J/user/zoe/cyrus.header"),
        (b"user.zoe.Drafts", FULL, "J/user/zoe/Drafts/cyrus.header"),
        (b"user.a^b", FULL, "F/user/a^b/cyrus.header"),  # hashes "a": a dot ends the hash
        (b"ex.org!user.eve", FULL, "domain/A/ex.org/W/user/eve/cyrus.header"),
    ],
)
def test_header_path_hashed_layouts(name: bytes, layout: SpoolLayout, path: str) -> None:
    assert header_path(P, name, layout) == P / path


def test_make_on_disk_with_a_hashed_spool(tmp_path: Path) -> None:
    make_header(tmp_path, "c/user/carol")
    make_header(tmp_path, "domain/e/example.com/d/user/dave")
    hashed = make_on_disk([tmp_path], HASHED)
    assert hashed(b"user.carol") is True
    assert hashed(b"example.com!user.dave") is True
    assert hashed(b"user.dave") is False
    assert make_on_disk([tmp_path])(b"user.carol") is False  # not where the plain layout looks


@pytest.mark.parametrize(
    ("parts", "names"),
    [
        ("user/alice", {"user.alice"}),
        ("user/carol/a^b", {"user.carol.a^b"}),
        ("c/user/carol/Sent", {"user.carol.Sent", "c.user.carol.Sent"}),
        ("J/user/zoe", {"user.zoe", "J.user.zoe"}),  # fulldirhash
        ("x/user/carol", {"x.user.carol"}),  # x is not carol's letter: no hashed reading
        ("domain/example.com/user/bob", {"example.com!user.bob", "domain.example.com.user.bob"}),
        (
            "domain/e/example.com/d/user/dave",
            {
                "example.com!user.dave",
                "e!example.com.d.user.dave",
                "example.com!d.user.dave",
                "domain.e.example.com.d.user.dave",
            },
        ),
        ("uuid/x/4/x4wc3csw9usap879mghge8wh", set()),  # a uuid directory names nothing
        ("uuid/x/4", {"uuid.x.4"}),
    ],
)
def test_legacy_names_reads_a_path_every_way_it_can_be_meant(parts: str, names: set[str]) -> None:
    found = legacy_names([p.encode() for p in parts.split("/")])
    assert found == {n.encode() for n in names}


def test_dir_hash_matches_cyrus() -> None:
    # Letters Cyrus 3.6.1 chose for these names (hashimapspool: yes, fulldirhash: yes/no).
    assert [dir_hash(b, False) for b in (b"carol", b"News", b"9", b"", b"^x")] == [
        b"c",
        b"n",
        b"q",
        b"q",
        b"q",
    ]
    assert [dir_hash(b, True) for b in (b"zoe", b"a^b", b"a", b"ex.org", b"eve")] == [
        b"J",
        b"F",
        b"F",
        b"A",
        b"W",
    ]

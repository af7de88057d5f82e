"""Reading a backend's own list for ``mupdate-push`` (``mupdate.tools.sources``).

``data/push_cyr_dbtool_show.txt`` and ``data/push_ctl_mboxlist_dump.json`` were captured
from one real Cyrus 3.6 backend (servername be1, partitions default and p2) after IMAP
CREATEs, a SETACL, a RENAME and a delayed DELETE: ``cyr_dbtool -C imapd.conf
.../mailboxes.db twoskip show`` and ``ctl_mboxlist -d``, same state.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mupdate.cyrusdb.dlist import KvList, acl_from_dlist, parse_dlist
from mupdate.cyrusdb.records import dbname_to_name
from mupdate.db.order import mailbox_key
from mupdate.db.sqlite import SqliteStore
from mupdate.model import EntryState, MailboxEntry
from mupdate.tools.pushplan import LocalMailbox
from mupdate.tools.sources import (
    HEADER_MAGIC,
    SourceError,
    local_from_entries,
    parse_dbtool_show,
    parse_header,
    read_cyrus_db,
    read_dump,
    read_slave_db,
    scan_partitions,
    select_local,
)

DATA = Path(__file__).parent / "data"
FULL = b"lrswipkxtecdan"


def acl(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"".join(who + b"\t" + rights + b"\t" for who, rights in pairs)


# What be1 really holds, in key order: the two "T ed" tombstones (user.carol.Drafts after
# the RENAME, user.carol.Trash after the delayed DELETE) are skipped.
EXPECTED = [
    LocalMailbox(
        b"DELETED.user.carol.Trash.6B051E5D",
        b"default",
        acl((b"carol", FULL), (b"bob", b"lrs"), (b"admin", b"xc")),
    ),
    LocalMailbox(b"shared", b"default", acl((b"anyone", b"lrs"))),
    LocalMailbox(b"shared.a", b"default", acl((b"anyone", b"lrs"))),
    LocalMailbox(b"shared.a.b", b"default", acl((b"anyone", b"lrs"))),
    LocalMailbox(b"user.carol", b"default", acl((b"carol", FULL), (b"bob", b"lrs"))),
    LocalMailbox(b"user.carol.&AOk-t&AOk-", b"default", acl((b"carol", FULL), (b"bob", b"lrs"))),
    LocalMailbox(b"user.carol.Archive", b"default", acl((b"carol", FULL), (b"bob", b"lrs"))),
    LocalMailbox(b"user.carol.Sent", b"default", acl((b"carol", FULL), (b"-anyone", b"p"))),
    LocalMailbox(b"user.carol.a^b", b"default", acl((b"carol", FULL))),
    LocalMailbox(b"user.carol.onp2", b"p2", acl((b"carol", FULL))),
    LocalMailbox(b"user.carol.with space", b"default", acl((b"carol", FULL), (b"bob", b"lrs"))),
    LocalMailbox(b"user.carol-x", b"default", acl((b"carol-x", FULL))),
    LocalMailbox(b"user.zed", b"default", acl((b"zed", FULL))),
    LocalMailbox(b"user.zed.x", b"default", acl((b"zed", FULL), (b"admin", b"xc"))),
    LocalMailbox(b"user.zed.x.y", b"default", acl((b"zed", FULL))),
]


# -- dlist ---------------------------------------------------------------------------------


def test_dlist_atoms_quoted_literal_nil_and_nesting() -> None:
    data = b'%(T e N "a \\"b\\" c" L {5+}\r\nx)y\nz E NIL A %(u lrs -v p) H (%(N n) ()))'
    value, end = parse_dlist(data)
    assert end == len(data)
    assert isinstance(value, KvList)
    assert value.get(b"T") == b"e"
    assert value.get(b"N") == b'a "b" c'
    assert value.get(b"L") == b"x)y\nz"
    assert value.get(b"E") is None
    assert value.get(b"missing") is None
    assert acl_from_dlist(value.get(b"A")) == b"u\tlrs\t-v\tp\t"
    assert value.get(b"H") == [KvList(((b"N", b"n"),)), []]


@pytest.mark.parametrize(
    "bad", [b"%(T e", b'%(N "abc)', b"%(L {9}\r\nab)", b"%(L {x}\r\nab)", b"%(K)", b""]
)
def test_dlist_errors(bad: bytes) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_dlist(bad)


def test_acl_empty_or_absent() -> None:
    assert acl_from_dlist(None) == b""
    assert acl_from_dlist(KvList(())) == b""
    with pytest.raises(ValueError, match="not a key-value list"):
        acl_from_dlist(b"atom")


# -- cyr_dbtool show -----------------------------------------------------------------------


def test_real_cyr_dbtool_show_output() -> None:
    data = (DATA / "push_cyr_dbtool_show.txt").read_bytes()
    got = select_local(parse_dbtool_show(data), "test")
    assert got.mailboxes == EXPECTED
    assert dict(got.skipped) == {"deleted": 2}
    assert got.describe() == "15 local mailboxes from test (skipped: 2 deleted)"


def test_real_dump_json_gives_the_same_list() -> None:
    text = (DATA / "push_ctl_mboxlist_dump.json").read_text()
    got = read_dump(text, "dump")
    assert got.mailboxes == EXPECTED
    assert dict(got.skipped) == {"deleted": 2}


def test_synthetic_records_skip_like_ctl_mboxlist() -> None:
    """Flags from §9.7 and Cyrus's mbtype letters: i intermediate, z reserved, r remote
    (with S), d deleted; l (legacy dirs) and m (moving) are still local mailboxes."""
    data = b"".join(
        [
            b"Nuser\x1fi\t%(T i I x V 1 M 2)\n",
            b"Nuser\x1fz\t%(T ez P default M 1 A %())\n",
            b"Nuser\x1fr\t%(T er P p2 S be2.test M 1 A %(carol lrs))\n",
            b"Nuser\x1fs\t%(T e P p S be2 M 1 A %(x y))\n",  # a server named: remote
            b"Nuser\x1fd\t%(T ed I x V 1 M 1)\n",
            b"Nuser\x1fl\t%(T el I x P default A %(lee lrs))\n",
            b"Nuser\x1fm\t%(T em I x P default A %(m lrs))\n",
            b"Nuser\x1fnopart\t%(T e I x A %(m lrs))\n",
            b'Nexample.com\x1duser\x1fa.b\x1f"q\t%(T e P "my part" A %("id with space" {3+}\r\nl\nr))\n',
            b"$RACL$carol$user\x1fa\tnot a dlist (\n",
            b"Iabcdeg\t%(T e N {6+}\r\nuser\x1fq P default)\n",
            b"Iabcdef\t%(T e N user\x1fl P default)\n",
        ]
    )
    got = select_local(parse_dbtool_show(data), "x")
    assert got.mailboxes == [
        LocalMailbox(b"user.l", b"default", b"lee\tlrs\t"),
        LocalMailbox(b"user.m", b"default", b"m\tlrs\t"),
        LocalMailbox(b'example.com!user.a^b."q', b"my part", b"id with space\tl\nr\t"),
    ]
    assert dict(got.skipped) == {
        "intermediate": 1,
        "reserved": 1,
        "remote": 2,
        "deleted": 1,
        "without partition": 1,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Nuser\x1fa %(T e)\n", "no TAB"),
        (b"Nuser\x1fa\t%(T e\n", "record 1"),
        (b"Nuser\x1fa\t%(T e) junk\n", "junk after value"),
        (b"Nuser\x1fa\t(T e)\n", "not a key-value list"),
        (b"Nuser\x1fa\t%(T e P (x))\n", "field P is not a string"),
    ],
)
def test_bad_dbtool_output(data: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        list(parse_dbtool_show(data))


def test_the_same_name_twice_is_refused() -> None:
    data = b"Nuser\x1fa\t%(T e P x)\nNuser\x1fa\t%(T e P y)\n"
    with pytest.raises(SourceError, match="twice"):
        select_local(parse_dbtool_show(data), "x")


@given(st.binary(min_size=1, max_size=30).filter(lambda b: b"\x1d" not in b and b"\x1f" not in b))
def test_dbname_to_name_inverts_mailbox_key(name: bytes) -> None:
    if b"!" in name and not name.partition(b"!")[0]:
        return  # "!x": an empty domain has no key of its own
    assert dbname_to_name(mailbox_key(name)) == name


def test_dbname_examples() -> None:
    assert dbname_to_name(b"user\x1fcarol\x1fa.b") == b"user.carol.a^b"
    assert dbname_to_name(b"x.com\x1duser\x1fk-a") == b"x.com!user.k-a"


def _fake_dbtool(tmp_path: Path, body: str) -> str:
    script = tmp_path / "cyr_dbtool"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_read_cyrus_db_runs_dbtool_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mailboxes.db").write_bytes(b"twoskip")
    (tmp_path / "imapd.conf").write_text("servername: be1\n")
    argv_file = tmp_path / "argv"
    tool = _fake_dbtool(
        tmp_path,
        f"open({str(argv_file)!r}, 'w').write(repr(sys.argv[1:]))\n"
        f"sys.stdout.buffer.write(open({str(DATA / 'push_cyr_dbtool_show.txt')!r}, 'rb').read())",
    )
    monkeypatch.chdir(tmp_path)
    got = read_cyrus_db(Path("conf/mailboxes.db"), Path("imapd.conf"), dbtool=tool, user=None)
    assert got.mailboxes == EXPECTED
    assert eval(argv_file.read_text()) == [
        "-C",
        str(tmp_path / "imapd.conf"),
        str(tmp_path / "conf" / "mailboxes.db"),
        "twoskip",
        "show",
    ]


def test_read_cyrus_db_failures(tmp_path: Path) -> None:
    conf = tmp_path / "imapd.conf"
    conf.write_text("")
    with pytest.raises(SourceError, match=r"no mailboxes\.db"):
        read_cyrus_db(tmp_path / "nope.db", conf, user=None)
    db = tmp_path / "mailboxes.db"
    db.write_bytes(b"")
    tool = _fake_dbtool(
        tmp_path, "sys.stderr.write('DBERROR: opening x: cyrusdb error\\n')\nsys.exit(1)"
    )
    with pytest.raises(SourceError, match="exited 1: DBERROR: opening x"):
        read_cyrus_db(db, conf, dbtool=tool, user=None)
    with pytest.raises(SourceError, match="cannot run"):
        read_cyrus_db(db, conf, dbtool=str(tmp_path / "missing-tool"), user=None)
    if os.geteuid() == 0:
        with pytest.raises(SourceError, match="no such user"):
            read_cyrus_db(db, conf, dbtool=tool, user="no-such-user-here")


# -- ctl_mboxlist -d JSON ------------------------------------------------------------------


def test_dump_json_skips_remote_and_keeps_acl_order() -> None:
    text = (
        '{"user.b": {"mbtype": "e", "partition": "p", "acl": {"z": "lrs", "a": "l"}},'
        ' "user.r": {"mbtype": "er", "server": "be2", "partition": "p", "acl": {}},'
        ' "user.s": {"mbtype": "e", "server": "be2", "partition": "p"},'
        ' "user.\\u00e9": {"mbtype": "e", "partition": "p"}}'
    )
    got = read_dump(text, "x")
    assert got.mailboxes == [
        LocalMailbox(b"user.b", b"p", b"z\tlrs\ta\tl\t"),
        LocalMailbox("user.é".encode(), b"p", b""),
    ]
    assert dict(got.skipped) == {"remote": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"a": 1}', "not an object"),
        ('{"a": {"acl": {"x": 1}}}', "bad acl"),
        ('{"a": {"partition": 3}}', "bad partition"),
    ],
)
def test_bad_dump(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        read_dump(text, "x")


# -- our slave's store ---------------------------------------------------------------------


def test_slave_store_gives_this_servers_active_entries(tmp_path: Path) -> None:
    entries = [
        MailboxEntry(b"user.a", EntryState.ACTIVE, b"be1!default", b"a\tlrs\t"),
        MailboxEntry(b"user.b", EntryState.ACTIVE, b"be1!", b""),
        MailboxEntry(b"user.c", EntryState.RESERVED, b"be1!default"),
        MailboxEntry(b"user.d", EntryState.ACTIVE, b"be10!default", b""),
        MailboxEntry(b"user.e", EntryState.ACTIVE, b"be1", b""),
    ]
    path = tmp_path / "mupdate-slave.sqlite3"
    store = SqliteStore(path)
    try:
        store.replace_all(entries)
    finally:
        store.close()
    got = read_slave_db(path, b"be1")
    assert sorted(got.mailboxes, key=lambda m: m.name) == [
        LocalMailbox(b"user.a", b"default", b"a\tlrs\t"),
        LocalMailbox(b"user.b", b"", b""),
    ]
    assert dict(got.skipped) == {"reserved": 1, "without partition": 1}
    assert local_from_entries([], b"be1", "x").mailboxes == []


def test_slave_store_missing_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no slave database"):
        read_slave_db(tmp_path / "none.sqlite3", b"be1")
    assert not (tmp_path / "none.sqlite3").exists()
    (tmp_path / "junk.sqlite3").write_bytes(b"not sqlite at all, just junk bytes" * 100)
    with pytest.raises(SourceError):
        read_slave_db(tmp_path / "junk.sqlite3", b"be1")


# -- partition scan ------------------------------------------------------------------------

PREAMBLE = (
    HEADER_MAGIC
    + b'"The best thing about this system was that it had lots of goals."\n'
    + b"\t--Jim Morris on Andrew\n"
)


def _header(directory: Path, fourth: bytes, rest: bytes = b"") -> None:
    directory.mkdir(parents=True)
    (directory / "cyrus.header").write_bytes(PREAMBLE + fourth + b"\n" + rest)


def test_scan_partitions_both_layouts_and_old_headers(tmp_path: Path) -> None:
    default, p2, old = tmp_path / "default", tmp_path / "p2", tmp_path / "old"
    # Cyrus 3.6, uuid layout (captured lines)
    _header(
        default / "uuid/k/h/khs4rgj6d2ysduokny1mgjup",
        b"%(T e N user.carol I khs4rgj6d2ysduokny1mgjup A %(carol lrswipkxtecdan bob lrs))",
    )
    _header(
        default / "uuid/m/o/molnq0zt8h29zua4fsk32v90",
        b'%(T e N "user.carol.with space" I molnq0zt8h29zua4fsk32v90 A %(carol lrswipkxtecdan))',
    )
    # Cyrus 3.6, legacy layout (mailbox_legacy_dirs: yes): "^" stays "^" on disk
    _header(
        p2 / "user/lee/a^b",
        b"%(T el N user.lee.a^b I j2jxrgfu679s7pijjoh9fz5n A %(lee lrswipkxtecdan))",
    )
    _header(p2 / "user/lee/gone", b"%(T ed N user.lee.gone I x A %())")
    # pre-3.6 header: quotaroot TAB uniqueid / user flags / ACL; named by its path
    _header(old / "domain/x.com/user/k/a^b", b"user.k\t0123abcd", b"\nk\tlrs\t\n")
    _header(old / "user/bad", b"%(T e I no-name)")
    (old / "user/junk").mkdir(parents=True)
    (old / "user/junk/cyrus.header").write_bytes(b"garbage")
    got = scan_partitions({b"default": default, b"p2": p2, b"old": old})
    assert sorted(got.mailboxes, key=lambda m: m.name) == [
        LocalMailbox(b"user.carol", b"default", b"carol\tlrswipkxtecdan\tbob\tlrs\t"),
        LocalMailbox(b"user.carol.with space", b"default", b"carol\tlrswipkxtecdan\t"),
        LocalMailbox(b"user.lee.a^b", b"p2", b"lee\tlrswipkxtecdan\t"),
        LocalMailbox(b"x.com!user.k.a^b", b"old", b"k\tlrs\t"),
    ]
    assert dict(got.skipped) == {"deleted": 1, "unreadable header": 2}


def test_scan_partitions_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no directory"):
        scan_partitions({b"default": tmp_path / "nope"})


def test_parse_header_refuses_foreign_files() -> None:
    with pytest.raises(ValueError, match=r"not a cyrus\.header"):
        parse_header(b"hello", Path("x"), b"p")
    with pytest.raises(ValueError, match="too short"):
        parse_header(PREAMBLE, Path("x"), b"p")

"""mailboxes.db by-name records: keys, the remote record Cyrus 3.6's slave writes, reading back (§9.7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mupdate.cyrusdb.dlist import parse_value
from mupdate.cyrusdb.records import (
    CyrusRecord,
    dbname_to_name,
    record_from_dlist,
    record_key,
    remote_value,
)
from mupdate.db.order import mailbox_key
from mupdate.model import EntryState, MailboxEntry

MTIME = 1795503549


def active(name: bytes, location: bytes, acl: bytes = b"") -> MailboxEntry:
    return MailboxEntry(name, EntryState.ACTIVE, location, acl)


def reserved(name: bytes, location: bytes) -> MailboxEntry:
    return MailboxEntry(name, EntryState.RESERVED, location)


def read(name: bytes, value: bytes) -> CyrusRecord:
    return record_from_dlist(name, parse_value(value), "test")


# Observed on a Cyrus 3.6 frontend slave (``cyr_dbtool ... twoskip show``), mtime fixed.
OBSERVED = [
    (
        active(b"example.com!user.dom", b"be1!p2", b"dom\tlrs\tan yone\tlr\t"),
        b"Nexample.com\x1duser\x1fdom",
        b'%(T er P p2 S be1 M 1795503549 A %(dom lrs "an yone" lr))',
    ),
    (
        active(b"user.8bit", b"be1!default", "dé\tlr\ta\t".encode()),
        b"Nuser\x1f8bit",
        b'%(T er P default S be1 M 1795503549 A %({3+}\r\nd\xc3\xa9 lr a ""))',
    ),
    (
        active(b"user.alice.Archive", b"be1!", b"alice\tlrswipkxtecdan\t"),
        b"Nuser\x1falice\x1fArchive",
        b'%(T er P "" S be1 M 1795503549 A %(alice lrswipkxtecdan))',
    ),
    (
        active(b"user.bare", b"be9"),
        b"Nuser\x1fbare",
        b"%(T er S be9 M 1795503549 A %())",
    ),
    (
        active(b"user.q", b"be1!default", b'a"b\tlrs\tc{d\tlr\tx(y)\tl\t'),
        b"Nuser\x1fq",
        b'%(T er P default S be1 M 1795503549 A %({3+}\r\na"b lrs "c{d" lr "x(y)" l))',
    ),
    (
        reserved(b"user.res", b"be1!default"),
        b"Nuser\x1fres",
        b"%(T erz P default S be1 M 1795503549 A %())",
    ),
]


@pytest.mark.parametrize(("entry", "key", "value"), OBSERVED, ids=lambda x: repr(x)[:30])
def test_remote_value_is_what_cyrus_writes(entry, key, value):
    assert record_key(entry.name) == key
    assert remote_value(entry, MTIME) == value


@pytest.mark.parametrize(("entry", "key", "value"), OBSERVED, ids=lambda x: repr(x)[:30])
def test_observed_records_read_back(entry, key, value):
    record = read(dbname_to_name(key[1:]), value)
    assert not record.is_local
    assert record.is_mailbox
    back = record.entry(b"own")
    # An id without rights comes back as Cyrus gives it out: id TAB TAB.
    expected = entry.acl.replace(b"\ta\t", b"\ta\t\t") if entry.name == b"user.8bit" else entry.acl
    assert back == MailboxEntry(entry.name, entry.state, entry.location, expected)


def test_remote_value_normalises_an_acl_cyrus_cannot_hold():
    entry = active(b"user.x", b"be1!p", b"a\tlrs\tdangling")
    assert remote_value(entry, MTIME) == b"%(T er P p S be1 M 1795503549 A %(a lrs))"


# -- local records, tombstones, intermediates -------------------------------------------

LOCAL = (
    b"%(A %(carol lrswipkxtecdan) I 3fwf3xpoiqxjwhmqhe4347uo P default T e"
    b" V 1795503535 M 1795503535)"
)


def test_local_record_reads_at_our_servername():
    record = read(b"user.carol", LOCAL)
    assert record.server is None
    assert record.is_local
    assert record.entry(b"be1") == active(b"user.carol", b"be1!default", b"carol\tlrswipkxtecdan\t")


def test_local_record_without_partition():
    record = read(b"user.x", b"%(T e)")
    assert record.is_local
    assert record.entry(b"be1") == active(b"user.x", b"be1!")


def test_empty_server_is_not_local():
    record = read(b"user.x", b'%(T er P p S "" M 1 A %())')
    assert record.server == b""
    assert not record.is_local
    assert record.entry(b"be1") == active(b"user.x", b"!p")


def test_remote_flag_without_server_is_not_local():
    assert not read(b"user.x", b"%(T er P p)").is_local


@pytest.mark.parametrize(
    "value",
    [
        b"%(T ed P default M 1795503535)",  # a tombstone
        b"%(T ed S be1 P p M 1)",
        b"%(T i)",  # an intermediate
        b"%(T ei P default)",
    ],
)
def test_tombstones_and_intermediates_are_no_entry(value):
    record = read(b"user.gone", value)
    assert not record.is_mailbox
    assert not record.is_local
    assert record.entry(b"be1") is None


def test_record_without_type_is_a_local_mailbox():
    record = read(b"user.old", b"%(P default A %(a lr))")
    assert record.mbtype == ""
    assert record.is_local
    assert record.entry(b"be1") == active(b"user.old", b"be1!default", b"a\tlr\t")


@pytest.mark.parametrize("value", [b"(a b)", b"plain", b"%(T (e r))", b"%(S %(a b))", b"%(P (p))"])
def test_malformed_records_are_refused(value):
    with pytest.raises(ValueError, match="test"):
        read(b"user.x", value)


def test_malformed_acl_is_refused():
    with pytest.raises(ValueError, match="key-value"):
        read(b"user.x", b"%(T er S be1 A (a b))")


# -- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        (b"user.alice", b"Nuser\x1falice"),
        (b"user.a^b", b"Nuser\x1fa.b"),
        (b"example.com!user.dom", b"Nexample.com\x1duser\x1fdom"),
        (b"x!a", b"Nx\x1da"),
        (b"shared", b"Nshared"),
        (b"", b"N"),
    ],
)
def test_record_key(name, key):
    assert record_key(name) == key
    assert dbname_to_name(key[1:]) == name


def cyrus_can_tell_apart(name: bytes) -> bool:
    """No 0x1D anywhere, no 0x1F after the domain: the key maps back to this one name."""
    domain, bang, rest = name.partition(b"!")
    return b"\x1d" not in name and b"\x1f" not in (rest if bang else domain)


names = st.binary(max_size=30).filter(cyrus_can_tell_apart)


@given(names)
def test_dbname_to_name_inverts_mailbox_key(name):
    assert dbname_to_name(mailbox_key(name)) == name


# -- the round trip -----------------------------------------------------------------------

no_tab = st.binary(max_size=10).filter(lambda b: b"\t" not in b)
canonical_acl = st.dictionaries(no_tab, no_tab, max_size=5).map(
    lambda d: b"".join(k + b"\t" + v + b"\t" for k, v in d.items())
)
locations = st.one_of(
    st.binary(min_size=0, max_size=10).filter(lambda b: b"!" not in b),
    st.tuples(st.binary(max_size=8).filter(lambda b: b"!" not in b), st.binary(max_size=8)).map(
        lambda t: t[0] + b"!" + t[1]
    ),
)
entries = st.one_of(
    st.builds(active, names, locations, canonical_acl),
    st.builds(reserved, names, locations),
)


@given(entries, st.integers(min_value=0, max_value=2**40))
def test_remote_value_parses_back_to_the_entry(entry, mtime):
    value = remote_value(entry, mtime)
    record = read(entry.name, value)
    assert not record.is_local
    assert record.entry(b"own") == entry
    assert parse_value(value).get(b"M") == b"%d" % mtime

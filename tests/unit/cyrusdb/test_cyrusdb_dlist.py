"""Cyrus dlists: astring output as Cyrus 3.6's prot_printastring, parsing, MUPDATE ACLs (§9.7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mupdate.cyrusdb.dlist import (
    MAX_QUOTED,
    KvList,
    acl_from_dlist,
    acl_pairs,
    astring,
    kvlist,
    parse_dlist,
    parse_value,
)

# -- astring: atom, quoted string or literal -------------------------------------------


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (b"lrswipkxtecdan", b"lrswipkxtecdan"),
        (b"be1", b"be1"),
        (b"user\x1falice", b"user\x1falice"),  # 0x1F may stand in an atom
        (b"a]b[c<d>e", b"a]b[c<d>e"),
        (b"", b'""'),
        (b"NIL", b'"NIL"'),
        (b"nil", b"nil"),  # only the upper-case word is quoted
        (b"an yone", b'"an yone"'),
        (b"c{d", b'"c{d"'),
        (b"x(y)", b'"x(y)"'),
        (b"a*", b'"a*"'),
        (b"tab\there", b'"tab\there"'),
        (b"dom\x1duser", b'"dom\x1duser"'),  # 0x1D is below 0x1F: no atom
        (b"del\x7f", b'"del\x7f"'),
        (b'a"b', b'{3+}\r\na"b'),
        (b"50%", b"{3+}\r\n50%"),
        (b"back\\slash", b"{10+}\r\nback\\slash"),
        ("dé".encode(), b"{3+}\r\nd\xc3\xa9"),
        (b"cr\rlf", b"{5+}\r\ncr\rlf"),
        (b"line\n", b"{5+}\r\nline\n"),
        (b"nul\x00", b"{4+}\r\nnul\x00"),
    ],
)
def test_astring_forms(value, printed):
    assert astring(value) == printed


def test_astring_1023_bytes_is_still_an_atom_or_quoted():
    assert astring(b"a" * (MAX_QUOTED - 1)) == b"a" * 1023
    assert astring(b" " * 1023) == b'"' + b" " * 1023 + b'"'


def test_astring_1024_bytes_is_a_literal():
    assert astring(b"a" * MAX_QUOTED) == b"{1024+}\r\n" + b"a" * 1024
    assert astring(b" " * 1024) == b"{1024+}\r\n" + b" " * 1024


def test_kvlist_forms():
    assert kvlist([]) == b"%()"
    assert kvlist([(b"dom", b"lrs"), (b"an yone", b"lr")]) == b'%(dom lrs "an yone" lr)'
    assert kvlist([(b"a", b"")]) == b'%(a "")'


@given(st.binary(max_size=1100))
def test_astring_parses_back(value):
    printed = astring(value)
    assert parse_dlist(printed) == (value, len(printed))


# -- parsing ----------------------------------------------------------------------------

OBSERVED = b'%(T er P default S be1 M 1795503557 A %({3+}\r\nd\xc3\xa9 lr a ""))'


def test_parse_observed_record():
    value = parse_value(OBSERVED)
    assert isinstance(value, KvList)
    assert [k for k, _ in value.items] == [b"T", b"P", b"S", b"M", b"A"]
    assert value.get(b"S") == b"be1"
    assert value.get(b"M") == b"1795503557"
    assert value.get(b"A") == KvList((("dé".encode(), b"lr"), (b"a", b"")))
    assert value.get(b"X") is None


def test_parse_nil_and_lists():
    assert parse_value(b"NIL") is None
    assert parse_value(b'"NIL"') == b"NIL"
    assert parse_value(b"(a b (c))") == [b"a", b"b", [b"c"]]
    assert parse_value(b"%(A %())") == KvList(((b"A", KvList(())),))
    assert parse_value(b"%(P NIL)").get(b"P") is None
    assert parse_value(b'"a\\"b"') == b'a"b'
    assert parse_value(b"{3}\r\nabc") == b"abc"


@pytest.mark.parametrize(
    "broken",
    [
        b"%(T er",
        b'"open',
        b"{5+}\r\nabc",
        b"{x}\r\nabc",
        b"{3}abc",
        b"%(T er) junk",
        b"%(NIL er)",
        b"%(T)",
        b"",
    ],
)
def test_parse_refuses_broken_values(broken):
    with pytest.raises(ValueError, match=r"."):
        parse_value(broken)


# -- MUPDATE ACLs <-> Cyrus's A list --------------------------------------------------


@pytest.mark.parametrize(
    ("acl", "pairs"),
    [
        (b"", []),
        (b"dom\tlrs\tan yone\tlr\t", [(b"dom", b"lrs"), (b"an yone", b"lr")]),
        ("dé\tlr\ta\t".encode(), [("dé".encode(), b"lr"), (b"a", b"")]),
        (b"a1 lrs", []),  # no TAB at all: nothing, as in Cyrus
        (b"a\tlrs", [(b"a", b"lrs")]),  # last rights without a TAB after them
        (b"a\tlrs\tb", [(b"a", b"lrs")]),  # a trailing id without a TAB is dropped
        (b"a\tlrs\tb\t", [(b"a", b"lrs"), (b"b", b"")]),
        (b"a\tl\tb\tr\ta\tlrs\t", [(b"a", b"lrs"), (b"b", b"r")]),  # first place, last rights
        (b"\tlrs\t", [(b"", b"lrs")]),
    ],
)
def test_acl_pairs(acl, pairs):
    assert acl_pairs(acl) == pairs


def test_acl_from_dlist():
    assert acl_from_dlist(None) == b""
    assert acl_from_dlist(KvList(())) == b""
    assert acl_from_dlist(KvList(((b"a", b"lr"), (b"b", b"")))) == b"a\tlr\tb\t\t"
    with pytest.raises(ValueError, match="not a key-value list"):
        acl_from_dlist(b"a")
    with pytest.raises(ValueError, match="not a string"):
        acl_from_dlist(KvList(((b"a", None),)))


ids = st.binary(max_size=12).filter(lambda b: b"\t" not in b)
canonical_acls = st.dictionaries(ids, ids, max_size=6).map(
    lambda d: b"".join(who + b"\t" + rights + b"\t" for who, rights in d.items())
)


@given(canonical_acls)
def test_canonical_acl_round_trips_through_the_a_list(acl):
    printed = kvlist(acl_pairs(acl))
    assert acl_from_dlist(parse_value(printed)) == acl


@given(st.binary(max_size=40))
def test_any_acl_normalises_once(acl):
    once = acl_from_dlist(parse_value(kvlist(acl_pairs(acl))))
    assert acl_from_dlist(parse_value(kvlist(acl_pairs(once)))) == once

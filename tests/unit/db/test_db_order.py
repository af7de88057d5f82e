"""Cyrus 3.6 mailboxes.db key order (§7.8, case 41)."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from mupdate.db.order import mailbox_key, sort_key

# §7.8, observed on Cyrus 3.6.1, already in key order.
DOC_EXAMPLE = [
    b"user.k",
    b"user.k.^",
    b"user.k.a",
    b"user.k a",
    b"user.k-a",
    b"user.k^",
    b"user.k^a",
    b"user.k/a",
    b"user.k0a",
    b"user.kBa",
    b"x",
    b"x!a",
    b"x.com!a",
    b"x.com!user.k.a",
    b"x.com!user.k-a",
]

CASE_41 = [
    b"user.k",
    b"user.k.a",
    b"user.k a",
    b"user.k-a",
    b"user.k^a",
    b"user.k/a",
    b"x.com!user.k.a",
]


def reference_key(name: bytes) -> bytes:
    """§7.8 written out step by step, byte by byte, independently of the implementation."""
    if b"!" in name:
        at = name.index(b"!")
        prefix, rest = name[:at] + b"\x1d", name[at + 1 :]
    else:
        prefix, rest = b"", name
    step1 = bytes(0x1F if byte == ord(".") else byte for byte in rest)
    step2 = bytes(ord(".") if byte == ord("^") else byte for byte in step1)
    return prefix + step2


def test_doc_example_sorts_in_observed_order() -> None:
    shuffled = DOC_EXAMPLE[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=mailbox_key) == DOC_EXAMPLE


def test_case_41_list_order() -> None:
    assert sorted(reversed(CASE_41), key=mailbox_key) == CASE_41


def test_key_order_differs_from_strcmp_order() -> None:
    names = [b"user.k.a", b"user.k a", b"user.k-a"]
    assert sorted(names) == [b"user.k a", b"user.k-a", b"user.k.a"]
    assert sorted(names, key=mailbox_key) == [b"user.k.a", b"user.k a", b"user.k-a"]


def test_children_sort_before_dash_sibling() -> None:
    # The ctl_mboxlist -m abort (§7.8 point 1): user.carol.* must precede user.carol-x.
    names = [b"user.carol-x", b"user.carol.a^b", b"user.carol"]
    assert sorted(names, key=mailbox_key) == [b"user.carol", b"user.carol.a^b", b"user.carol-x"]


def test_domain_keeps_its_dots_and_ends_with_0x1d() -> None:
    assert mailbox_key(b"example.com!user.alice") == b"example.com\x1duser\x1falice"
    assert mailbox_key(b"a!b!c.d") == b"a\x1db!c\x1fd"  # only the first "!" is the domain's


def test_caret_becomes_dot_and_dot_becomes_0x1f() -> None:
    assert mailbox_key(b"user.carol.a^b") == b"user\x1fcarol\x1fa.b"
    assert mailbox_key(b"") == b""


def test_sort_key_breaks_ties_cyrus_cannot() -> None:
    # A literal 0x1F collides with "." in Cyrus's key; sort_key still tells them apart.
    assert mailbox_key(b"a.b") == mailbox_key(b"a\x1fb")
    assert sort_key(b"a.b") != sort_key(b"a\x1fb")


names = st.binary(max_size=12) | st.lists(
    st.sampled_from([b"user", b".", b"^", b"!", b"-", b" ", b"k", b"a", b"\x1f", b"\x1d", b"\xff"]),
    max_size=8,
).map(b"".join)


@given(names)
def test_mailbox_key_matches_documented_algorithm(name: bytes) -> None:
    assert mailbox_key(name) == reference_key(name)


@given(st.lists(names, max_size=30))
def test_sorting_is_total_and_consistent_with_the_documented_key(batch: list[bytes]) -> None:
    ordered = sorted(set(batch), key=sort_key)
    for first, second in itertools.pairwise(ordered):
        assert reference_key(first) <= reference_key(second)
        assert sort_key(first) < sort_key(second)  # strict: no two names compare equal
    assert sorted(reversed(ordered), key=sort_key) == ordered  # independent of input order


@given(names, names)
def test_sort_key_is_injective_and_antisymmetric(a: bytes, b: bytes) -> None:
    assert (sort_key(a) == sort_key(b)) == (a == b)
    assert not (sort_key(a) < sort_key(b) and sort_key(b) < sort_key(a))


@given(names, st.binary(min_size=1, max_size=4))
def test_a_proper_prefix_key_sorts_first(name: bytes, tail: bytes) -> None:
    longer = name + tail
    if mailbox_key(longer).startswith(mailbox_key(name)):
        assert mailbox_key(name) < mailbox_key(longer)

"""The in-memory read index against a naive model (dict + sorted), and its filters."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mupdate.db.index import MailboxIndex
from mupdate.db.order import mailbox_key, sort_key
from mupdate.db.store import ExpireTombstones, PutEntry, RemoveEntry
from mupdate.model import EntryState, MailboxEntry, Tombstone

ACTIVE = EntryState.ACTIVE
RESERVED = EntryState.RESERVED


def active(name: bytes, location: bytes = b"be1!p", acl: bytes = b"a\tlrs\t") -> MailboxEntry:
    return MailboxEntry(name, ACTIVE, location, acl)


def test_in_order_uses_cyrus_key_order_not_strcmp() -> None:
    index = MailboxIndex([active(b"user.a-b"), active(b"user.a.b"), active(b"user.a")])
    assert [e.name for e in index.in_order()] == [b"user.a", b"user.a.b", b"user.a-b"]
    index.put(active(b"user.a b"))
    index.put(active(b"x.com!user.a"))
    index.put(active(b"user.a^b"))
    assert [e.name for e in index.in_order()] == [
        b"user.a",
        b"user.a.b",
        b"user.a b",
        b"user.a-b",
        b"user.a^b",
        b"x.com!user.a",
    ]


def test_location_prefix_is_a_plain_byte_prefix() -> None:
    index = MailboxIndex(
        [
            active(b"a", b"be1!default"),
            active(b"b", b"be10!x"),
            MailboxEntry(b"c", RESERVED, b"be1!other"),
            active(b"d", b"be2!default"),
            active(b"e", b"be1"),
        ]
    )
    assert [e.name for e in index.in_order(b"be1!")] == [b"a", b"c"]
    assert [e.name for e in index.in_order(b"be1")] == [b"a", b"b", b"c", b"e"]
    assert [e.name for e in index.in_order(b"be3")] == []
    assert [e.name for e in index.in_order(b"")] == [b"a", b"b", b"c", b"d", b"e"]


def test_for_servers_matches_whole_server_part_only() -> None:
    index = MailboxIndex(
        [
            active(b"a", b"be2!default"),
            active(b"b", b"be20!x"),
            active(b"c", b"be7"),
            active(b"d", b"be1!be2"),
            active(b"e", b"BE2!p"),
            MailboxEntry(b"f", RESERVED, b"be7!"),
        ]
    )
    assert [e.name for e in index.for_servers([b"be2", b"be7"])] == [b"a", b"c", b"f"]
    assert list(index.for_servers([])) == []


def test_get_contains_len_and_replace_keeps_position() -> None:
    index = MailboxIndex()
    index.put(active(b"user.b"))
    index.put(active(b"user.a"))
    assert [e.name for e in index.in_order()] == [b"user.a", b"user.b"]
    index.put(MailboxEntry(b"user.a", RESERVED, b"be9!p"))
    assert index.get(b"user.a") == MailboxEntry(b"user.a", RESERVED, b"be9!p")
    assert b"user.a" in index
    assert "user.a" not in index
    assert len(index) == 2
    assert [e.location for e in index.in_order()] == [b"be9!p", b"be1!p"]


def test_remove_then_readd_before_iterating() -> None:
    index = MailboxIndex([active(b"a"), active(b"b"), active(b"c")])
    index.remove(b"b")
    index.remove(b"missing")
    index.put(active(b"b", b"new!p"))
    index.put(active(b"d"))
    index.remove(b"d")
    assert [(e.name, e.location) for e in index.in_order()] == [
        (b"a", b"be1!p"),
        (b"b", b"new!p"),
        (b"c", b"be1!p"),
    ]


def test_iteration_is_safe_while_the_index_changes() -> None:
    index = MailboxIndex(active(bytes([c])) for c in b"abcdef")
    seen = []
    for entry in index.in_order():
        seen.append(entry.name)
        if entry.name == b"b":
            index.remove(b"c")  # removed later: skipped
            index.put(active(b"bb"))  # added later: not seen by this iterator
            index.put(active(b"e", b"moved!p"))  # replaced later: seen as it is now
            index.in_order()  # settles the pending changes under the running iterator
    assert seen == [b"a", b"b", b"d", b"e", b"f"]
    assert index.get(b"e") == active(b"e", b"moved!p")
    assert [e.name for e in index.in_order()] == [b"a", b"b", b"bb", b"d", b"e", b"f"]


def test_tombstones_set_expire_and_cleared_by_put() -> None:
    index = MailboxIndex(tombstones=[Tombstone(b"x", b"l", 1.0), Tombstone(b"y", b"l", 5.0)])
    assert index.tombstone(b"x") == Tombstone(b"x", b"l", 1.0)
    index.expire_tombstones(before=5.0)
    assert index.tombstone(b"x") is None
    assert index.tombstone(b"y") == Tombstone(b"y", b"l", 5.0)
    index.put(active(b"y"))
    assert index.tombstone(b"y") is None
    index.set_tombstone(Tombstone(b"z", b"l", 9.0))
    assert index.tombstones() == [Tombstone(b"z", b"l", 9.0)]


def test_apply_has_store_semantics() -> None:
    index = MailboxIndex([active(b"user.a")])
    index.apply(RemoveEntry(b"user.a", Tombstone(b"user.a", b"be1!p", 3.0)))
    assert b"user.a" not in index
    assert index.tombstone(b"user.a") == Tombstone(b"user.a", b"be1!p", 3.0)
    index.apply(PutEntry(MailboxEntry(b"user.a", RESERVED, b"be2!p")))
    assert index.tombstone(b"user.a") is None
    index.apply(RemoveEntry(b"user.a", None))
    assert index.tombstone(b"user.a") is None
    index.set_tombstone(Tombstone(b"old", b"l", 1.0))
    index.apply(ExpireTombstones(before=2.0))
    assert index.tombstone(b"old") is None


def test_constructor_drops_tombstones_of_live_entries() -> None:
    index = MailboxIndex([active(b"a")], [Tombstone(b"a", b"l", 1.0)])
    assert index.tombstone(b"a") is None


def test_large_batches_take_the_sort_path() -> None:
    names = [f"user.u{i}.x".encode() for i in range(300)]
    index = MailboxIndex(active(n) for n in names[:10])
    for name in names[10:]:
        index.put(active(name))
    for name in names[:200]:
        index.remove(name)
    assert [e.name for e in index.in_order()] == sorted(names[200:], key=mailbox_key)


def test_colliding_cyrus_keys_still_sort_totally() -> None:
    # "a.b" and "a\x1fb" share a Cyrus key; the index must still hold and order both.
    index = MailboxIndex([active(b"a.b"), active(b"a.c"), active(b"a")])
    index.put(active(b"a\x1fb"))
    index.put(active(b"a!x"))
    expected = sorted([b"a.b", b"a.c", b"a", b"a\x1fb", b"a!x"], key=sort_key)
    assert [e.name for e in index.in_order()] == expected
    index.remove(b"a\x1fb")
    index.put(active(b"a.a"))
    assert [e.name for e in index.in_order()] == [b"a", b"a!x", b"a.a", b"a.b", b"a.c"]


# Hypothesis: random operation sequences against a dict + sorted() model.

NAME_PARTS = [b"user", b".", b"a", b"b", b"-", b" ", b"^", b"!", b"x.com", b"\x1f", b"\xff"]
names = st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=4).map(b"".join)
locations = st.sampled_from([b"be1!p", b"be1!q", b"be10!p", b"be2!p", b"be2", b""])
entries = st.builds(
    lambda name, location, acl: MailboxEntry(
        name, RESERVED if acl is None else ACTIVE, location, acl or b""
    ),
    names,
    locations,
    st.none() | st.sampled_from([b"", b"a\tlrs\t"]),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), entries),
        st.tuples(st.just("remove"), names),
        st.tuples(st.just("list"), st.none() | st.sampled_from([b"be1", b"be1!", b""])),
        st.tuples(st.just("servers"), st.sets(st.sampled_from([b"be1", b"be2", b"be10"]))),
    ),
    max_size=60,
)


# A large base makes few pending changes take the bisect path, a small one the sort path.
# BASE holds no 0x1F byte, so the index sorts by plain mailbox_key until an op adds one.
BASE = [
    active(b"user.base%d%s" % (i, part))
    for i in range(40)
    for part in NAME_PARTS
    if b"\x1f" not in part
]


@settings(max_examples=300)
@given(st.lists(entries, max_size=10), st.booleans(), operations)
def test_index_matches_naive_model(
    initial: list[MailboxEntry], large: bool, ops: list[tuple[str, object]]
) -> None:
    if large:
        initial = BASE + initial
    index = MailboxIndex(initial)
    model = {e.name: e for e in initial}

    def model_order() -> list[MailboxEntry]:
        return [model[n] for n in sorted(model, key=sort_key)]

    for op, arg in ops:
        if op == "put":
            assert isinstance(arg, MailboxEntry)
            index.put(arg)
            model[arg.name] = arg
        elif op == "remove":
            assert isinstance(arg, bytes)
            index.remove(arg)
            model.pop(arg, None)
        elif op == "list":
            assert arg is None or isinstance(arg, bytes)
            expected = [e for e in model_order() if arg is None or e.location.startswith(arg)]
            assert list(index.in_order(arg)) == expected
        else:
            assert isinstance(arg, set)
            expected = [e for e in model_order() if e.location.split(b"!")[0] in arg]
            assert list(index.for_servers(arg)) == expected
        assert len(index) == len(model)
    assert list(index.in_order()) == model_order()
    assert all(index.get(name) == entry for name, entry in model.items())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"user.a", b"user.b", b"user.c", b"user.a.b"]),
            st.sampled_from([None, EntryState.ACTIVE, EntryState.RESERVED]),
        ),
        max_size=40,
    )
)
def test_count_by_state_follows_every_put_and_remove(steps):
    """The counts are kept as entries come, change state and go (status, /metrics and the
    systemd STATUS line read them without a pass over the index)."""
    index = MailboxIndex([MailboxEntry(b"user.a", EntryState.RESERVED, b"be1!p")])
    for name, state in steps:
        if state is None:
            index.remove(name)
        else:
            index.apply(PutEntry(MailboxEntry(name, state, b"be1!p", b"")))
        expected: dict[EntryState, int] = {}
        for entry in index.in_order():
            expected[entry.state] = expected.get(entry.state, 0) + 1
        assert index.count_by_state() == expected

"""The ``cyr_dbtool DB twoskip batch`` wire: commands out, ``key SP value LF`` records in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mupdate.cyrusdb import batch
from mupdate.cyrusdb.batch import BatchOutputError, OutputParser
from mupdate.cyrusdb.dlist import astring

# -- commands -------------------------------------------------------------------------------


def test_commands():
    assert batch.begin() == b"BEGIN\n"
    assert batch.commit() == b"COMMIT\n"
    assert batch.abort() == b"ABORT\n"
    assert batch.get(b"Nuser\x1fa") == b"GET {7+}\r\nNuser\x1fa\n"
    assert batch.delete(b"k") == b"DELETE {1+}\r\nk\n"
    assert batch.set_(b"k", b"%(T er)") == b"SET {1+}\r\nk {7+}\r\n%(T er)\n"
    assert batch.set_(b"", b"") == b"SET {0+}\r\n {0+}\r\n\n"
    assert batch.show(b"N") == b"SHOW {1+}\r\nN\n"
    assert batch.show(b"") == b"SHOW\n"


def test_literal_carries_any_bytes():
    value = b"a b\r\n\x00\xff"
    assert batch.literal(value) == b"{7+}\r\n" + value


# -- output ---------------------------------------------------------------------------------

# As a Cyrus 3.6 cyr_dbtool prints them (observed).
OUTPUT = (
    b"Nuser\x1fbare {32}\r\n%(T er S be9 M 1795503549 A %())\n"
    b'"Nexample.com\x1duser\x1fdom" {57}\r\n'
    b'%(T er P p2 S be1 M 1795503549 A %(dom lrs "an yone" lr))\n'
    b'"quoted \\"key\\"" "a value"\n'
    b'{3}\r\nd\xc3\xa9 ""\n'
)
RECORDS = [
    (b"Nuser\x1fbare", b"%(T er S be9 M 1795503549 A %())"),
    (
        b"Nexample.com\x1duser\x1fdom",
        b'%(T er P p2 S be1 M 1795503549 A %(dom lrs "an yone" lr))',
    ),
    (b'quoted "key"', b"a value"),
    ("dé".encode(), b""),
]


def test_output_at_once():
    parser = OutputParser()
    assert parser.feed(OUTPUT) == RECORDS
    assert parser.pending == 0


def bytewise(parser: OutputParser, data: bytes) -> list[tuple[bytes, bytes]]:
    records = []
    for i in range(len(data)):
        records += parser.feed(data[i : i + 1])
    return records


def test_output_byte_by_byte():
    parser = OutputParser()
    assert bytewise(parser, OUTPUT) == RECORDS
    assert parser.pending == 0


def test_incomplete_record_waits():
    parser = OutputParser()
    assert parser.feed(b"key {10}\r\nabc") == []
    assert parser.pending == len(b"key {10}\r\nabc")
    assert parser.feed(b"defghij") == []  # the LF is still missing
    assert parser.feed(b"\nk2") == [(b"key", b"abcdefghij")]
    assert parser.pending == 2


@pytest.mark.parametrize(
    "garbage",
    [
        b"FAILED: line 1 at cmd SET with error DB_IOERROR\n",
        b"key\n",
        b" value\n",
        b"key value junk\n",
        b'"key\nx" v\n',
        b"key {x}\r\nabc\n",
        b"key {3}abc\n",
        b"key {3}\r\nabcd\n",
        b"key {99999999999}\r\n",
        b"key {" + b"1" * 40,
        b"key {%d}\r\n" % (batch.MAX_LITERAL + 1),
    ],
)
def test_garbage_is_refused(garbage):
    with pytest.raises(BatchOutputError):
        OutputParser().feed(garbage)


@pytest.mark.parametrize(
    "garbage", [b"FAILED: line 1 at cmd SET with error DB_IOERROR\n", b"key {3}\r\nabcd\n"]
)
def test_garbage_is_refused_byte_by_byte(garbage):
    with pytest.raises(BatchOutputError):
        bytewise(OutputParser(), garbage)


record = st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=60))


def printed(key: bytes, value: bytes) -> bytes:
    """As cyr_dbtool prints: astring, but a plain ``{n}`` literal."""

    def one(s: bytes) -> bytes:
        return (
            astring(s).replace(b"+}\r\n", b"}\r\n", 1)
            if astring(s).startswith(b"{")
            else astring(s)
        )

    return one(key) + b" " + one(value) + b"\n"


@given(st.lists(record, max_size=6), st.data())
def test_any_split_gives_the_same_records(records, data):
    # Atoms with a blank cannot occur (astring quotes them); NIL stays quoted.
    stream = b"".join(printed(k, v) for k, v in records)
    cut = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = OutputParser()
    got = []
    start = 0
    for end in [*cut, len(stream)]:
        got += parser.feed(stream[start:end])
        start = end
    assert got == records
    assert parser.pending == 0

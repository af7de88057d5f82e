"""render_entry (the fast path for MAILBOX and RESERVE lines) gives exactly the bytes of the
general rule: each value through render_string, joined by blanks (§6.1)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mupdate.protocol.responses import MailboxLine, ReserveLine
from mupdate.protocol.strings import render_entry, render_response, render_string


def general(tag: bytes, word: bytes, *values: bytes) -> bytes:
    return b" ".join([tag, word, *(render_string(v) for v in values)]) + b"\r\n"


values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b'a"b', b"a\\b", b"a\r\nb", b"a\0b", b"x" * 1024, b"x" * 1025]),
)


@given(values, values, values)
def test_mailbox_line_matches_render_response(name: bytes, location: bytes, acl: bytes) -> None:
    expected = general(b"U01", b"MAILBOX", name, location, acl)
    assert render_entry(b"U01", b"MAILBOX", name, location, acl) == expected
    assert render_response(MailboxLine(b"U01", name, location, acl)) == expected


@given(values, values)
def test_reserve_line_matches_render_response(name: bytes, location: bytes) -> None:
    expected = general(b"L1", b"RESERVE", name, location)
    assert render_entry(b"L1", b"RESERVE", name, location, None) == expected
    assert render_response(ReserveLine(b"L1", name, location)) == expected


def test_long_values_together_still_quoted_one_by_one() -> None:
    name, location, acl = b"n" * 600, b"l" * 600, b"a" * 10
    expected = general(b"X", b"MAILBOX", name, location, acl)
    assert render_entry(b"X", b"MAILBOX", name, location, acl) == expected

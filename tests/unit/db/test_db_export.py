"""Export and import of the mailbox list (JSON, bytes-exact)."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mupdate.db.export import export_entries, import_entries
from mupdate.model import EntryState, MailboxEntry

ACTIVE = EntryState.ACTIVE
RESERVED = EntryState.RESERVED


def round_trip(entries: list[MailboxEntry]) -> tuple[list[MailboxEntry], str]:
    out = io.StringIO()
    assert export_entries(iter(entries), out) == len(entries)
    text = out.getvalue()
    return import_entries(io.StringIO(text)), text


def test_plain_entries_are_readable_text() -> None:
    entries = [
        MailboxEntry(b"user.alice", ACTIVE, b"be1!default", b"alice\tlrswipkxtecdan\t"),
        MailboxEntry(b"user.bob", RESERVED, b"be2!p"),
    ]
    back, text = round_trip(entries)
    assert back == entries
    document = json.loads(text)
    assert document["format"] == "mupdate-export"
    assert document["version"] == 1
    assert document["entries"][0] == {
        "name": "user.alice",
        "state": "active",
        "location": "be1!default",
        "acl": "alice\tlrswipkxtecdan\t",
    }


def test_odd_bytes_go_as_base64_and_come_back_exact() -> None:
    entries = [
        MailboxEntry(b"user.\xe9t\xe9", ACTIVE, b"\xff!\x80", b"\xfe\t"),
        MailboxEntry(b"user.n\x00ul\r\n", RESERVED, b""),
        MailboxEntry(b"user.nbsp\xc2\xa0x", ACTIVE, b"be1!", b""),
        MailboxEntry("user.été".encode(), ACTIVE, b"be1!p", b"anyone rls"),
    ]
    back, text = round_trip(entries)
    assert back == entries
    records = json.loads(text)["entries"]
    assert records[0]["name"] == {"base64": "dXNlci7pdOk="}
    assert isinstance(records[1]["name"], dict)  # NUL, CR, LF: a surprise in text
    assert isinstance(records[2]["name"], dict)  # no-break space looks like a space
    assert records[3]["name"] == "user.été"  # valid, printable UTF-8 stays text
    assert records[1]["location"] == ""


def test_empty_export_is_a_valid_document() -> None:
    back, text = round_trip([])
    assert back == []
    assert json.loads(text)["entries"] == []


CHARS = ["a", " ", "!", "\t", "\n", "\x00", "\x7f", "é", "\u00a0", "\u2028", "€", "😀"]
byte_values = st.binary(max_size=20) | st.lists(st.sampled_from(CHARS), max_size=8).map(
    lambda chars: "".join(chars).encode()
)


@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=20),
        st.tuples(st.booleans(), byte_values, byte_values),
        max_size=8,
    )
)
def test_any_bytes_round_trip(raw: dict[bytes, tuple[bool, bytes, bytes]]) -> None:
    entries = [
        MailboxEntry(name, ACTIVE if is_active else RESERVED, loc, acl if is_active else b"")
        for name, (is_active, loc, acl) in raw.items()
    ]
    assert round_trip(entries)[0] == entries


def document(*records: object, **top: object) -> io.StringIO:
    body = {"format": "mupdate-export", "version": 1, "entries": list(records)}
    body.update(top)
    return io.StringIO(json.dumps(body))


GOOD = {"name": "user.a", "state": "active", "location": "be1!p", "acl": ""}


@pytest.mark.parametrize(
    ("src", "message"),
    [
        (io.StringIO("{"), "not a JSON document"),
        (io.StringIO("[]"), "JSON object at the top level"),
        (document(format="other"), "format: expected 'mupdate-export'"),
        (document(version=2), "version: expected 1"),
        (document(version=True), "version: expected 1"),
        (document(extra=1), "top level: expected keys"),
        (document(entries={}), "entries: expected a list"),
        (document(GOOD, "x"), r"entries\[1\]: expected an object"),
        (document({**GOOD, "state": "gone"}), r"entries\[0\]\.state: expected 'active'"),
        (document({"name": "a", "state": "active"}), r"entries\[0\]: missing fields \['location'"),
        (document({**GOOD, "uid": "x"}), r"entries\[0\]: .*unknown fields \['uid'\]"),
        (document({**GOOD, "name": ""}), r"entries\[0\]\.name: empty mailbox name"),
        (document({**GOOD, "name": 5}), r"entries\[0\]\.name: expected a string"),
        (document({**GOOD, "acl": {"base64": "!!"}}), r"entries\[0\]\.acl: invalid base64"),
        (document({**GOOD, "acl": {"base64": "QQ"}}), r"entries\[0\]\.acl: invalid base64"),
        (document({**GOOD, "acl": {"b64": "QQ=="}}), r"entries\[0\]\.acl: expected a string"),
        (document({**GOOD, "location": "\ud800"}), r"entries\[0\]\.location: text is not"),
        (
            document({**GOOD, "state": "reserved", "acl": "a\tl\t"}),
            r"entries\[0\]\.acl: a reserved entry must have an empty ACL",
        ),
        (
            document(GOOD, {**GOOD, "name": {"base64": "dXNlci5h"}}),
            r"entries\[1\]\.name: b'user.a' already given at entries\[0\]",
        ),
        (io.StringIO('{"format": "mupdate-export", "format": "x"}'), "duplicate key 'format'"),
    ],
)
def test_import_rejects_bad_input_with_a_clear_message(src: io.StringIO, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        import_entries(src)

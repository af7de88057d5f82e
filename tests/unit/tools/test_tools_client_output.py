"""``mupdate-client``'s pure parts on exact inputs: text and JSON output (odd bytes, empty
ACLs, RESERVE, DELETE), the status report, raw mode's command composition, and the mapping
of failures to one line and an exit code."""

from __future__ import annotations

import json

import pytest
from twisted.internet.error import TimeoutError as TxTimeout

from mupdate.net.client import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionClosed,
    ProtocolViolation,
    ServerBye,
)
from mupdate.protocol.responses import DeleteLine, MailboxLine, ReserveLine
from mupdate.tools import client_output as fmt
from mupdate.tools.client import build_parser, explain
from mupdate.tools.client_raw import RawInputError, compose, split_words
from mupdate.tools.connect import Target, ToolError

ALICE = MailboxLine(b"X0", b"user.alice", b"be1!default", b"alice\tlrswipkxtecdan\tanyone\tlrs\t")
BOB = ReserveLine(b"X0", b"user.bob", b"be2!p")
ODD = MailboxLine(b"X0", b"user.\xe9t\xe9", b"be1!\xff", b"")
GONE = DeleteLine(b"U01", b"user.gone")


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"user.alice", "user.alice"),
        (b"user.\xe9t\xe9", "user.\\xe9t\\xe9"),  # Latin-1: not UTF-8
        ("user.été".encode(), "user.été"),  # UTF-8 printable: as is
        (b"a\\b", "a\\\\b"),
        (b"a\tb", "a\\tb"),
        (b"a\r\nb\0", "a\\x0d\\x0ab\\x00"),
        ("x\u0085y".encode(), "x\\xc2\\x85y"),  # a C1 control: its UTF-8 bytes
        (b"with space", "with space"),
        (b"", ""),
    ],
)
def test_show_escapes_exactly_what_is_not_printable_utf8(value, shown):
    assert fmt.show(value) == shown


@pytest.mark.parametrize(
    ("acl", "shown"),
    [
        (b"alice\tlrswipkxtecdan\tanyone\tlrs\t", "alice lrswipkxtecdan anyone lrs"),
        (b"alice\tlrs", "alice lrs"),
        (b"", '""'),
        (b"\t", '""'),
        (b"-bob\tr\t", "-bob r"),
        (b"\xff\tr\t", "\\xff r"),
    ],
)
def test_show_acl_turns_tabs_into_spaces(acl, shown):
    assert fmt.show_acl(acl) == shown


def test_entry_rows_for_each_kind_of_line():
    assert fmt.entry_row(ALICE) == (
        "user.alice",
        "MAILBOX",
        "be1!default",
        "alice lrswipkxtecdan anyone lrs",
    )
    assert fmt.entry_row(BOB) == ("user.bob", "RESERVE", "be2!p", "-")
    assert fmt.entry_row(ODD) == ("user.\\xe9t\\xe9", "MAILBOX", "be1!\\xff", '""')
    assert fmt.entry_row(GONE) == ("user.gone", "DELETE", "-", "-")
    assert fmt.entry_row(MailboxLine(b"X", b"", b"", b"")) == ('""', "MAILBOX", '""', '""')
    assert fmt.missing_row(b"user.none") == ("user.none", "MISSING", "-", "-")


def test_table_is_aligned_with_two_spaces_and_an_unpadded_last_column():
    lines = fmt.format_table([fmt.entry_row(e) for e in (ALICE, BOB, ODD)])
    assert lines == [
        "NAME            STATE    LOCATION     ACL",
        "user.alice      MAILBOX  be1!default  alice lrswipkxtecdan anyone lrs",
        "user.bob        RESERVE  be2!p        -",
        'user.\\xe9t\\xe9  MAILBOX  be1!\\xff     ""',
    ]


def test_table_counts_wide_characters_twice():
    wide = MailboxLine(b"X", "user.日本".encode(), b"b!p", b"")
    lines = fmt.format_table([fmt.entry_row(wide), fmt.entry_row(BOB)])
    assert lines[1] == 'user.日本  MAILBOX  b!p       ""'
    assert lines[2] == "user.bob   RESERVE  be2!p     -"


def test_empty_table_has_no_header():
    assert fmt.format_table([]) == []


# ---------------------------------------------------------------- JSON


def test_json_fields_are_text_or_base64():
    assert fmt.json_field(b"user.alice") == "user.alice"
    assert fmt.json_field(b"a\tb\t") == "a\tb\t"
    assert fmt.json_field("été".encode()) == "été"
    assert fmt.json_field(b"user.\xe9") == {"base64": "dXNlci7p"}
    assert fmt.json_field(b"a\r\nb") == {"base64": "YQ0KYg=="}
    assert fmt.json_field(b"") == ""


def test_entry_records():
    assert fmt.entry_record(ALICE) == {
        "kind": "mailbox",
        "name": "user.alice",
        "location": "be1!default",
        "acl": "alice\tlrswipkxtecdan\tanyone\tlrs\t",
    }
    assert fmt.entry_record(BOB) == {
        "kind": "reserve",
        "name": "user.bob",
        "location": "be2!p",
        "acl": None,
    }
    assert fmt.entry_record(ODD) == {
        "kind": "mailbox",
        "name": {"base64": "dXNlci7pdOk="},
        "location": {"base64": "YmUxIf8="},
        "acl": "",
    }
    assert fmt.missing_record(b"user.none") == {
        "kind": "missing",
        "name": "user.none",
        "location": None,
        "acl": None,
    }


def test_watch_records_say_whether_they_are_a_change():
    assert fmt.watch_record(BOB, change=False)["change"] is None
    assert fmt.watch_record(BOB, change=True)["change"] == "reserve"
    assert fmt.watch_record(GONE, change=True) == {
        "kind": "delete",
        "name": "user.gone",
        "location": None,
        "acl": None,
        "change": "delete",
    }


def test_json_line_is_one_line_that_reads_back():
    line = fmt.json_line(fmt.entry_record(MailboxLine(b"X", "é\n".encode(), b"b", b"a\tl\t")))
    assert "\n" not in line
    assert json.loads(line)["acl"] == "a\tl\t"
    assert json.loads(line)["name"] == {"base64": "w6kK"}


# ---------------------------------------------------------------- status


def test_parse_role():
    assert fmt.parse_role(b"(master)") == ("master", None)
    assert fmt.parse_role(b"mupdate://127.0.0.1:3905") == ("slave", b"127.0.0.1:3905")
    assert fmt.parse_role(b"elsewhere") == ("unknown", b"elsewhere")


def test_count_entries_per_server_part():
    entries = [ALICE, BOB, ODD, ReserveLine(b"X", b"user.c", b"be1!x"), BOB]
    active, reserved, servers = fmt.count_entries(entries)
    assert (active, reserved) == (2, 3)
    assert servers == (fmt.ServerCount(b"be1", 2, 1), fmt.ServerCount(b"be2", 0, 2))


def report(**kw: object) -> fmt.StatusReport:
    values: dict[str, object] = {
        "address": "127.0.0.1:3905",
        "servername": b"fe1",
        "implementation": b"Cyrus IMAP",
        "version": b"3.6.1",
        "role": "slave",
        "master": b"m1:3905",
        "capabilities": ((b"AUTH", (b"PLAIN",)), (b"PARTIAL-UPDATE", ())),
        "mechanisms": ("PLAIN",),
        "active": 2,
        "reserved": 1,
        "servers": (fmt.ServerCount(b"be1", 2, 0), fmt.ServerCount(b"\xff", 0, 1)),
        "noop_ms": 1.25,
    }
    values.update(kw)
    return fmt.StatusReport(**values)  # type: ignore[arg-type]


def test_status_lines():
    assert fmt.status_lines(report()) == [
        "server:         127.0.0.1:3905",
        "servername:     fe1",
        "implementation: Cyrus IMAP",
        "version:        3.6.1",
        "role:           slave of m1:3905",
        "capabilities:   AUTH PLAIN, PARTIAL-UPDATE",
        "mechanisms:     PLAIN",
        "entries:        3 (2 active, 1 reserved)",
        "  be1:          2 (2 active, 0 reserved)",
        "  \\xff:         1 (0 active, 1 reserved)",
        "noop:           1.2 ms",
    ]
    assert fmt.status_lines(report(role="master", master=None))[4] == "role:           master"


def test_status_record():
    record = fmt.status_record(report())
    assert record == {
        "kind": "status",
        "server": "127.0.0.1:3905",
        "servername": "fe1",
        "implementation": "Cyrus IMAP",
        "version": "3.6.1",
        "role": "slave",
        "master": "m1:3905",
        "capabilities": [
            {"name": "AUTH", "args": ["PLAIN"]},
            {"name": "PARTIAL-UPDATE", "args": []},
        ],
        "mechanisms": ["PLAIN"],
        "entries": {
            "total": 3,
            "active": 2,
            "reserved": 1,
            "servers": [
                {"server": "be1", "active": 2, "reserved": 0},
                {"server": {"base64": "/w=="}, "active": 0, "reserved": 1},
            ],
        },
        "noop_ms": 1.25,
    }
    json.dumps(record)  # serialisable as is


# ---------------------------------------------------------------- raw input


def tags():  # type: ignore[no-untyped-def]
    counter = iter(range(100))
    return lambda: b"X%d" % next(counter)


@pytest.mark.parametrize(
    ("typed", "wire"),
    [
        (b"LIST", b"X0 LIST\r\n"),
        (b"list be1", b'X0 LIST "be1"\r\n'),
        (b"FIND user.x", b'X0 FIND "user.x"\r\n'),
        (b"RESERVE user.x be1!p\r", b'X0 RESERVE "user.x" "be1!p"\r\n'),
        (b"  noop  ", b"X0 NOOP\r\n"),
        (b"a1 find user.x", b'a1 FIND "user.x"\r\n'),
        (b'FIND "user.with space"', b'X0 FIND "user.with space"\r\n'),
        (b'FIND "a\\"b\\\\c"', b'X0 FIND "a\\"b\\\\c"\r\n'),
        (b'FIND ""', b'X0 FIND ""\r\n'),
        (b'RESERVE "a\\r\\nb" x', b'X0 RESERVE {4+}\r\na\r\nb "x"\r\n'),
        (b'FIND "\\xe9t\\xE9"', b'X0 FIND "\xe9t\xe9"\r\n'),
        (b'ACTIVATE u l "a\\tlrs\\t"', b'X0 ACTIVATE "u" "l" "a\tlrs\t"\r\n'),
        (b"UPDATE be1 be2", b'X0 UPDATE "be1" "be2"\r\n'),
        (b"FOO bar", b'X0 FOO "bar"\r\n'),  # unknown: sent, the server answers
        (b"FIND " + b"x" * 1025, b"X0 FIND {1025+}\r\n" + b"x" * 1025 + b"\r\n"),
    ],
)
def test_compose_adds_tags_and_quotes_or_literals(typed, wire):
    command = compose(typed, tags())
    assert command is not None
    assert command.wire == wire


def test_compose_blank_line_is_nothing_and_logout_is_noticed():
    assert compose(b"   \r\n", tags()) is None
    command = compose(b"t1 logout", tags())
    assert command is not None
    assert command.is_logout
    assert command.tag == b"t1"


@pytest.mark.parametrize(
    "typed",
    [
        b"STARTTLS",
        b"t1 AUTHENTICATE PLAIN",
        b"compress DEFLATE",
        b'"LIST"',
        b'FIND "open',
        b'FIND "a"b',
        b'FIND "\\xZZ"',
        b'FIND "\\x4"',
        b"a(b LIST",
    ],
)
def test_compose_refuses_what_it_cannot_send_without_using_a_tag(typed):
    next_tag = tags()
    with pytest.raises(RawInputError):
        compose(typed, next_tag)
    assert next_tag() == b"X0"


def test_split_words_marks_quoted_ones():
    assert split_words(b'a "b c"\t"" d') == [
        (b"a", False),
        (b"b c", True),
        (b"", True),
        (b"d", False),
    ]


# ---------------------------------------------------------------- exit codes

TARGET = Target("127.0.0.1", 3905, "admin", "secret", timeout=5)


@pytest.mark.parametrize(
    ("exc", "line", "code"),
    [
        (ToolError("no user", 2), "no user", 2),
        (
            CommandFailed(b"NO", b"mailbox already exists", b"X0"),
            "127.0.0.1:3905 answered NO mailbox already exists",
            3,
        ),
        (
            CommandFailed(b"BAD", b"Extra arguments"),
            "127.0.0.1:3905 answered BAD Extra arguments",
            3,
        ),
        (
            ServerBye(b"idle for too long"),
            "127.0.0.1:3905 closed the connection: BYE idle for too long",
            4,
        ),
        (ConnectionClosed("gone"), "the connection to 127.0.0.1:3905 was closed (gone)", 4),
        (ProtocolViolation("junk"), "127.0.0.1:3905 broke the protocol: junk", 4),
        (TxTimeout(), "no answer from 127.0.0.1:3905 within 5 s", 4),
        (AuthenticationFailed(b"no"), "login to 127.0.0.1:3905 refused: no", 5),
        (KeyError("x"), "internal error (KeyError: 'x'); please report it", 70),
    ],
)
def test_failures_become_one_line_and_an_exit_code(exc, line, code):
    assert explain(exc, TARGET) == (line, code)


def test_json_flag_before_or_after_the_subcommand():
    parser = build_parser()
    common = ["-u", "admin"]
    assert parser.parse_args([*common, "--json", "list"]).json is True
    assert parser.parse_args([*common, "list", "--json"]).json is True
    assert parser.parse_args([*common, "list"]).json is False
    args = parser.parse_args([*common, "watch", "--count", "3", "be1", "be2"])
    assert (args.command, args.count, args.hosts, args.seconds) == (
        "watch",
        3,
        ["be1", "be2"],
        None,
    )

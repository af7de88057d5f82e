"""Conformance cases of protocol doc §14 that are about parsing, state and texts, run against
the server engine: every input also fed one byte at a time (``both_ways``)."""

from __future__ import annotations

import pytest
from protocol_helpers import PLAIN_IR, Reply, Wrote, both_ways, feed_server, make_server

from mupdate.protocol import (
    NEED_DATA,
    PAUSED,
    Activate,
    Authenticate,
    Deactivate,
    Delete,
    Find,
    List,
    Logout,
    Noop,
    ProtocolLimits,
    Reserve,
    SaslResponse,
    ServerConnection,
    ServerState,
    Starttls,
    Update,
)

NA = ServerState.NOT_AUTHENTICATED
AU = ServerState.AUTHENTICATED
ST = ServerState.STREAMING


def bad(tag: bytes, text: bytes) -> Reply:
    return Reply(tag + b' BAD "' + text + b'"\r\n', False)


GO = Wrote(b"+ go ahead\r\n")

CASES: list[tuple[str, ServerState, bytes, list[object]]] = [
    ("07 noop before auth", NA, b"T1 NOOP\r\n", [bad(b"T1", b"Please login first")]),
    ("08 find before auth", NA, b'T2 FIND "x"\r\n', [bad(b"T2", b"Please login first")]),
    ("09 AXYZ before auth", NA, b"T3 AXYZ\r\n", [bad(b"T3", b"Please login first")]),
    ("09 QXYZ before auth", NA, b"T3 QXYZ\r\n", [bad(b"T3", b"Unrecognized command")]),
    ("09 LFOO before auth", NA, b"T3 LFOO\r\n", [bad(b"T3", b"Please login first")]),
    ("09 DFOO before auth", NA, b"T3 DFOO\r\n", [bad(b"T3", b"Please login first")]),
    ("09 CFOO before auth", NA, b"T3 CFOO\r\n", [bad(b"T3", b"Unrecognized command")]),
    ("09 AXYZ after auth", AU, b"T3 AXYZ\r\n", [bad(b"T3", b"Unrecognized command")]),
    ("10 empty line", NA, b"\r\n", [bad(b"*", b"Need command")]),
    ("10 empty LF line", AU, b"\n", [bad(b"*", b"Need command")]),
    ("11 tag only", NA, b"T4\r\n", [bad(b"*", b"Need command")]),
    ("11 tab after tag", AU, b"T4\tNOOP\r\n", [bad(b"*", b"Need command")]),
    ("12 tag space", NA, b"T5 \r\n", [bad(b"T5", b"Null command")]),
    ("12 two spaces", AU, b"L4  NOOP\r\n", [bad(b"L4", b"Null command")]),
    ("13 paren in tag", NA, b"B13(x NOOP\r\n", [bad(b"*", b"Need command")]),
    ("13 NUL in tag", AU, b"B\0 NOOP\r\n", [bad(b"*", b"Need command")]),
    ("13 quote in tag", AU, b'B13"x NOOP\r\n', [bad(b"*", b"Need command")]),
    ("14 mixed case", AU, b'b14 fInD "user.e"\r\n', [Find(b"b14", b"user.e")]),
    ("15 bare LF", AU, b"L1 NOOP\n", [Noop(b"L1")]),
    (
        "16 pipelined",
        AU,
        b'P1 NOOP\r\nP2 FIND "n"\r\nP3 NOOP\r\n',
        [Noop(b"P1"), Find(b"P2", b"n"), Noop(b"P3")],
    ),
    ("17 unknown after auth", AU, b"T24 FROB\r\n", [bad(b"T24", b"Unrecognized command")]),
    ("18 noop with arg", AU, b"T8 noop x\r\n", [bad(b"T8", b"Extra arguments")]),
    (
        "18 logout with arg",
        NA,
        b"A3 LOGOUT now\r\nA4 LOGOUT\r\n",
        [bad(b"A3", b"Extra arguments"), Logout(b"A4")],
    ),
    ("19 find atom", AU, b"T10 FIND user.nobody\r\n", [bad(b"T10", b"Extra arguments")]),
    ("20 reserve atoms", AU, b"T11 RESERVE user.x host!p\r\n", [bad(b"T11", b"Missing arguments")]),
    ("20 reserve one arg", AU, b'T22 RESERVE "a"\r\n', [bad(b"T22", b"Missing arguments")]),
    ("20 find no arg", AU, b"T22 FIND\r\n", [bad(b"T22", b"Missing arguments")]),
    ("21 delete two args", AU, b'T23 DELETE "a" "b"\r\n', [bad(b"T23", b"Extra arguments")]),
    ("21 trailing space", AU, b'L3 FIND "x" \r\n', [bad(b"L3", b"Extra arguments")]),
    ("21 list space", AU, b"L2 LIST \r\n", [bad(b"L2", b"Extra arguments")]),
    ("21 list atom", AU, b"B17 LIST be1\r\n", [bad(b"B17", b"Extra arguments")]),
    ("22 unterminated quote", AU, b'B12 FIND "abc\r\n', [bad(b"B12", b"Extra arguments")]),
    ("22 bare CR in quote", AU, b'B12 FIND "a\rc"\r\n', [bad(b"B12", b"Extra arguments")]),
    ("22 bare CR after word", AU, b"B12 NOOP\rX\r\n", [bad(b"B12", b"Extra arguments")]),
    (
        "23 synchronising literal",
        AU,
        b"T25 FIND {10}\r\nuser.alice\r\n",
        [GO, Find(b"T25", b"user.alice")],
    ),
    (
        "24 NUL in literal",
        AU,
        b"B10 FIND {3+}\r\na\0b\r\nB11 NOOP\r\n",
        [bad(b"B10", b"Extra arguments"), Noop(b"B11")],
    ),
    (
        "24 NUL in first literal",
        AU,
        b'B10 RESERVE {3+}\r\na\0b "x"\r\n',
        [bad(b"B10", b"Missing arguments")],
    ),
    (
        "25 escapes",
        AU,
        b'B6 ACTIVATE "user.q\\"x\\\\y" "be1!default" ""\r\n',
        [Activate(b"B6", b'user.q"x\\y', b"be1!default", b"")],
    ),
    ("25 backslash any byte", AU, b'B7 FIND "a\\bc"\r\n', [Find(b"B7", b"abc")]),
    (
        "26 literal with CRLF",
        AU,
        b'L11 ACTIVATE {5+}\r\na\r\nbc "h!p" ""\r\n',
        [Activate(b"L11", b"a\r\nbc", b"h!p", b"")],
    ),
    (
        "26 8-bit and tab quoted",
        AU,
        b'T1 FIND "user.\xc3\xa9\tx"\r\n',
        [Find(b"T1", b"user.\xc3\xa9\tx")],
    ),
    (
        "26 empty strings",
        AU,
        b'T1 FIND ""\r\nT2 RESERVE "x" ""\r\nT3 FIND {0+}\r\n\r\n',
        [Find(b"T1", b""), Reserve(b"T2", b"x", b""), Find(b"T3", b"")],
    ),
    (
        "28 authenticate with literal IR",
        NA,
        b'A01 AUTHENTICATE "PLAIN" {20+}\r\n' + PLAIN_IR + b"\r\n",
        [Authenticate(b"A01", b"PLAIN", PLAIN_IR)],
    ),
    (
        "29 authenticate with quoted IR",
        NA,
        b'A3 AUTHENTICATE "PLAIN" "' + PLAIN_IR + b'"\r\n',
        [Authenticate(b"A3", b"PLAIN", PLAIN_IR)],
    ),
    (
        "30 cancel",
        NA,
        b'A1 AUTHENTICATE "PLAIN"\r\n*\r\n',
        [Authenticate(b"A1", b"PLAIN"), SaslResponse(b"*")],
    ),
    (
        "31 response line",
        NA,
        b'A2 AUTHENTICATE "PLAIN"\r\n' + PLAIN_IR + b"\r\n",
        [Authenticate(b"A2", b"PLAIN"), SaslResponse(PLAIN_IR)],
    ),
    (
        "34 second authenticate",
        AU,
        b'A9 AUTHENTICATE "PLAIN"\r\n',
        [bad(b"A9", b"already authenticated")],
    ),
    (
        "34 args parsed first",
        AU,
        b"A9 AUTHENTICATE\r\n",
        [bad(b"A9", b"Missing arguments")],
    ),
    (
        "35 atom mechanism (leniency)",
        NA,
        b"A1 AUTHENTICATE PLAIN\r\n",
        [Authenticate(b"A1", b"PLAIN")],
    ),
    ("35 no mechanism", NA, b"A2 AUTHENTICATE\r\n", [bad(b"A2", b"Missing arguments")]),
    ("35 atom IR", NA, b'A2 AUTHENTICATE "PLAIN" abc\r\n', [bad(b"A2", b"Extra arguments")]),
    ("55 update", AU, b"U01 UPDATE\r\n", [Update(b"U01")]),
    ("56 list while streaming", ST, b"L1 LIST\r\n", [bad(b"L1", b"not legal when streaming")]),
    ("56 find while streaming", ST, b'F1 FIND "x"\r\n', [bad(b"F1", b"not legal when streaming")]),
    (
        "56 reserve while streaming",
        ST,
        b'R1 RESERVE "x" "y"\r\n',
        [bad(b"R1", b"not legal when streaming")],
    ),
    ("56 update while streaming", ST, b"U2 UPDATE\r\n", [bad(b"U2", b"not legal when streaming")]),
    ("56 args before streaming check", ST, b"F1 FIND x\r\n", [bad(b"F1", b"Extra arguments")]),
    ("56 noop while streaming", ST, b"N1 NOOP\r\n", [Noop(b"N1")]),
    ("56 logout while streaming", ST, b"Q1 LOGOUT\r\n", [Logout(b"Q1")]),
    ("60 empty host", AU, b'U1 UPDATE ""\r\n', [bad(b"U1", b"Badly formed arguments")]),
    ("60 atom host", AU, b"B16 UPDATE be1\r\n", [bad(b"B16", b"Badly formed arguments")]),
    ("60 trailing space", AU, b'U1 UPDATE "a" \r\n', [bad(b"U1", b"Badly formed arguments")]),
    (
        "60 31 hosts",
        AU,
        b"U1 UPDATE" + b' "h"' * 31 + b"\r\n",
        [bad(b"U1", b"Extra arguments")],
    ),
    (
        "60 30 hosts",
        AU,
        b"U1 UPDATE" + b' "h"' * 29 + b" {2+}\r\nbe\r\n",
        [Update(b"U1", (b"h",) * 29 + (b"be",))],
    ),
    (
        "list prefix",
        AU,
        b'T20 LIST "be1!"\r\nT21 LIST\r\n',
        [List(b"T20", b"be1!"), List(b"T21")],
    ),
    (
        "writes",
        AU,
        b'X0 RESERVE "a" "b"\r\nX1 DEACTIVATE "a" "b"\r\nX2 DELETE "a"\r\n',
        [Reserve(b"X0", b"a", b"b"), Deactivate(b"X1", b"a", b"b"), Delete(b"X2", b"a")],
    ),
]


@pytest.mark.parametrize(
    ("state", "data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_conformance_case(state: ServerState, data: bytes, expected: list[object]) -> None:
    events, sentinel, _ = both_ways(state, data)
    assert events == expected
    assert sentinel is NEED_DATA or isinstance(expected[-1], Logout)


def test_02_54_read_only_slave_refuses_writes_after_parsing() -> None:
    data = (
        b'A ACTIVATE "x" "y" "z"\r\nB RESERVE "x" "y"\r\nC DEACTIVATE "x" "y"\r\n'
        b'D DELETE "x"\r\nE DELETE x\r\nF FIND "x"\r\nG LIST\r\n'
    )
    events, _, _ = both_ways(AU, data, read_only=True)
    assert events == [
        bad(b"A", b"read-only session"),
        bad(b"B", b"read-only session"),
        bad(b"C", b"read-only session"),
        bad(b"D", b"read-only session"),
        bad(b"E", b"Extra arguments"),
        Find(b"F", b"x"),
        List(b"G"),
    ]


def test_03_starttls_moves_to_negotiation_and_back() -> None:
    server = ServerConnection(starttls_available=True)
    events, sentinel = feed_server(server, b"S01 STARTTLS\r\n")
    assert events == [Starttls(b"S01")]
    assert sentinel is PAUSED
    assert server.state is ServerState.TLS_NEGOTIATING
    server.receive_data(b"X1 NOOP\r\n")  # arrives through TLS: kept for later
    assert server.next_event() is PAUSED
    server.tls_started()
    assert server.tls_active
    assert server.state is NA
    events, _ = feed_server(server, b"")
    assert events == [bad(b"X1", b"Please login first")]


def test_04_input_pipelined_behind_starttls_is_dropped() -> None:
    events, sentinel, server = both_ways(NA, b"S01 STARTTLS\r\nX NOOP\r\n", starttls_available=True)
    assert events == [Starttls(b"S01")]
    assert sentinel is PAUSED
    server.tls_started()
    assert feed_server(server, b"") == ([], NEED_DATA)


def test_05_starttls_under_tls_is_refused_unquoted() -> None:
    server = make_server(ServerState.TLS_NEGOTIATING)
    server.tls_started()
    events, _ = feed_server(server, b"S02 STARTTLS\r\n")
    assert events == [Reply(b"S02 BAD Already did a successful Starttls\r\n", False)]


@pytest.mark.parametrize("state", [AU, ST])
def test_06_starttls_after_auth_is_refused_unquoted(state: ServerState) -> None:
    events, _, _ = both_ways(state, b"T7 STARTTLS\r\n", starttls_available=True)
    assert events == [Reply(b"T7 BAD Can't Starttls after authentication\r\n", False)]


@pytest.mark.parametrize("state", [NA, AU])
def test_starttls_unavailable_is_unrecognized(state: ServerState) -> None:
    events, _, _ = both_ways(state, b"S01 STARTTLS\r\n")
    assert events == [bad(b"S01", b"Unrecognized command")]


def test_starttls_extra_arguments() -> None:
    events, _, _ = both_ways(NA, b"S01 STARTTLS x\r\n", starttls_available=True)
    assert events == [bad(b"S01", b"Extra arguments")]


def test_27_huge_tag_is_refused_and_closes_only_this_connection() -> None:
    server = ServerConnection()
    events, sentinel = feed_server(server, b"x" * 140_000)
    assert events == [Reply(b'* BAD "Line too long"\r\n', True)]
    assert sentinel is PAUSED
    assert server.state is ServerState.CLOSED


def test_27_huge_quoted_string_is_refused() -> None:
    server = make_server(AU)
    events, _ = feed_server(server, b'T1 FIND "' + b"a" * 140_000 + b'"\r\n')
    assert events == [Reply(b'T1 BAD "Line too long"\r\n', True)]


def test_27_overflowing_synchronising_literal_does_not_swallow_next_line() -> None:
    events, _, _ = both_ways(AU, b"T1 FIND {99999999999}\r\nT2 NOOP\r\n")
    assert events == [bad(b"T1", b"Literal too long"), Noop(b"T2")]


def test_27_overflowing_non_synchronising_literal_says_bye() -> None:
    events, sentinel, server = both_ways(AU, b"T1 FIND {99999999999+}\r\nT2 NOOP\r\n")
    assert events == [Reply(b'* BYE "Literal too long"\r\n', True)]
    assert sentinel is PAUSED
    assert server.state is ServerState.CLOSED


def test_oversized_non_synchronising_literal_is_skipped() -> None:
    limits = ProtocolLimits(max_literal=100)
    data = b"T1 FIND {150+}\r\n" + b"x" * 150 + b"\r\nT2 NOOP\r\n"
    events, _, _ = both_ways(AU, data, limits=limits)
    assert events == [bad(b"T1", b"Literal too long"), Noop(b"T2")]


def test_error_before_synchronising_literal_sends_no_go_ahead() -> None:
    events, _, _ = both_ways(NA, b"T1 FIND {5}\r\nT2 LOGOUT\r\n")
    assert events == [bad(b"T1", b"Please login first"), Logout(b"T2")]


def test_earlier_error_wins_over_literal_size() -> None:
    events, _, _ = both_ways(AU, b"T1 NOOP {999999}\r\nT2 NOOP\r\n")
    assert events == [bad(b"T1", b"Extra arguments"), Noop(b"T2")]


def test_too_many_literals() -> None:
    limits = ProtocolLimits(max_args=2)
    data = b"T1 ACTIVATE {1+}\r\na {1+}\r\nb {1+}\r\nc\r\nT2 NOOP\r\n"
    events, _, _ = both_ways(AU, data, limits=limits)
    assert events == [bad(b"T1", b"Too many arguments"), Noop(b"T2")]


def test_command_too_long() -> None:
    limits = ProtocolLimits(max_literal=10, max_command=30)
    data = b"T1 ACTIVATE {10+}\r\n" + b"a" * 10 + b" {10+}\r\n" + b"b" * 10 + b' ""\r\nT2 NOOP\r\n'
    events, _, _ = both_ways(AU, data, limits=limits)
    assert events == [bad(b"T1", b"Command too long"), Noop(b"T2")]


def test_sasl_line_over_limit_is_no_and_close() -> None:
    server = make_server(ServerState.AUTHENTICATING, limits=ProtocolLimits(max_sasl_line=10))
    events, sentinel = feed_server(server, b"A" * 20 + b"\r\n")
    assert events == [Reply(b"A01 NO Error reading client response: line too long\r\n", True)]
    assert sentinel is PAUSED


def test_sasl_lines_are_raw_and_in_order_until_glue_decides() -> None:
    data = b'A01 AUTHENTICATE "X"\r\nc1\r\n{5}\r\nA02 NOOP\n\r\n'
    events, _, server = both_ways(NA, data)
    assert events == [
        Authenticate(b"A01", b"X"),
        SaslResponse(b"c1"),
        SaslResponse(b"{5}"),
        SaslResponse(b"A02 NOOP"),
        SaslResponse(b""),
    ]
    server.authentication_failed()
    assert server.state is NA


def test_commands_pipelined_with_authenticate_run_exactly_once_in_order() -> None:
    server = ServerConnection()
    server.receive_data(
        b'A01 AUTHENTICATE "PLAIN" {20+}\r\n' + PLAIN_IR + b'\r\nX0 RESERVE {1+}\r\na "b"\r\n'
        b"X1 NOOP\r\n"
    )
    assert server.next_event() == Authenticate(b"A01", b"PLAIN", PLAIN_IR)
    server.authentication_succeeded()
    events, _ = feed_server(server, b"")
    assert events == [Reserve(b"X0", b"a", b"b"), Noop(b"X1")]


def test_logout_closes_and_ignores_the_rest() -> None:
    events, sentinel, server = both_ways(AU, b"Q01 LOGOUT\r\nX1 NOOP\r\n")
    assert events == [Logout(b"Q01")]
    assert sentinel is PAUSED
    assert server.state is ServerState.CLOSED


def test_eof_closes_after_complete_commands() -> None:
    server = make_server(AU)
    server.receive_data(b"X1 NOOP\r\nX2 NO")
    server.receive_data(b"")
    events, sentinel = feed_server(server, b"")
    assert events == [Noop(b"X1")]
    assert sentinel is PAUSED
    assert server.state is ServerState.CLOSED


def test_compress_in_every_command_state() -> None:
    for state in (NA, AU, ST):
        events, _, _ = both_ways(state, b'Z01 COMPRESS "DEFLATE"\r\n')
        assert [type(e).__name__ for e in events] == ["Compress"]
        assert events[0].algorithm == b"DEFLATE"  # type: ignore[attr-defined]


def test_section_16_backend_create_and_rename_transcript() -> None:
    """What a real 3.6.1 backend sent (protocol doc §16), parsed byte for byte."""
    acl = b"carol\tlrswipkxtecdan\tdave\tlrs\t"
    data = (
        b"X0 RESERVE {10+}\r\nuser.carol {16+}\r\nbe1.test!default\r\n"
        b"X1 ACTIVATE {10+}\r\nuser.carol {16+}\r\nbe1.test!default {21+}\r\n"
        b"carol\tlrswipkxtecdan\t\r\n"
        b"X2 DELETE {16+}\r\nuser.carol.Sent2\r\n"
        b"X3 RESERVE {16+}\r\nuser.carol.Sent3 {9+}\r\nbe1.test!\r\n"
        b"X4 ACTIVATE {16+}\r\nuser.carol.Sent3 {9+}\r\nbe1.test! {30+}\r\n" + acl + b"\r\n"
        b"Q01 LOGOUT\r\n"
    )
    events, sentinel, _ = both_ways(AU, data)
    assert events == [
        Reserve(b"X0", b"user.carol", b"be1.test!default"),
        Activate(b"X1", b"user.carol", b"be1.test!default", b"carol\tlrswipkxtecdan\t"),
        Delete(b"X2", b"user.carol.Sent2"),
        Reserve(b"X3", b"user.carol.Sent3", b"be1.test!"),
        Activate(b"X4", b"user.carol.Sent3", b"be1.test!", acl),
        Logout(b"Q01"),
    ]
    assert sentinel is PAUSED

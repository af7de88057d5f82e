"""Framing: lines, literals and limits (protocol doc §2.1, §2.6, §2.7)."""

from __future__ import annotations

import pytest

from mupdate.protocol import LocalProtocolError, ProtocolLimits
from mupdate.protocol import texts as t
from mupdate.protocol.buffer import Frame, ReceiveBuffer, SyncLiteral, literal_header

LIMITS = ProtocolLimits(max_line=20, max_literal=10, max_command=40, max_args=3)


def frames(data: bytes, *, approve: bool = False) -> list[object]:
    buffer = ReceiveBuffer(LIMITS, approve_sync=approve)
    buffer.feed(data)
    out: list[object] = []
    while (frame := buffer.next_frame()) is not None:
        out.append(frame)
        if isinstance(frame, SyncLiteral):
            buffer.accept_literal()
        if isinstance(frame, Frame) and frame.fatal:
            break
    return out


@pytest.mark.parametrize(
    ("line", "header"),
    [
        (b"T FIND {5}", (5, True)),
        (b"T FIND {5+}", (5, False)),
        (b"T FIND {0+}", (0, False)),
        (b'T FIND "{5}"', None),
        (b'T FIND "a\\"{5}', None),
        (b'T FIND "a\\\\" {5}', (5, True)),
        (b"T FIND {5} ", None),
        (b"T FIND {+}", None),
        (b"T FIND {-1}", None),
        (b"T FIND {1234567890123}", (-1, True)),
    ],
)
def test_literal_header(line: bytes, header: tuple[int, bool] | None) -> None:
    assert literal_header(line) == header


def test_lines_end_at_lf_with_optional_cr() -> None:
    assert frames(b"a\r\nb\nc\r\r\nd") == [Frame((b"a",)), Frame((b"b",)), Frame((b"c\r",))]


def test_literals_alternate_with_text() -> None:
    assert frames(b"T X {3+}\r\na\nb {2}\r\nxy\r\n") == [
        Frame((b"T X {3+}", b"a\nb", b" {2}", b"xy", b""))
    ]


def test_synchronising_literal_waits_for_approval() -> None:
    out = frames(b"T X {2}\r\nab\r\n", approve=True)
    assert out == [SyncLiteral((b"T X {2}",), 2), Frame((b"T X {2}", b"ab", b""))]


def test_undecided_literal_is_a_local_error() -> None:
    buffer = ReceiveBuffer(LIMITS, approve_sync=True)
    buffer.feed(b"T X {2}\r\nab\r\n")
    assert isinstance(buffer.next_frame(), SyncLiteral)
    with pytest.raises(LocalProtocolError):
        buffer.next_frame()


def test_refused_literal_ends_the_command_at_its_line() -> None:
    buffer = ReceiveBuffer(LIMITS, approve_sync=True)
    buffer.feed(b"T X {2}\r\nT2 NOOP\r\n")
    assert isinstance(buffer.next_frame(), SyncLiteral)
    buffer.refuse_literal()
    assert buffer.next_frame() == Frame((b"T2 NOOP",))


def test_oversized_sync_literal_ends_command_without_swallowing() -> None:
    assert frames(b"T X {11}\r\nT2 NOOP\r\n") == [
        Frame((b"T X {11}",), t.LITERAL_TOO_LONG),
        Frame((b"T2 NOOP",)),
    ]


def test_oversized_non_sync_literal_is_skipped_with_rest_of_command() -> None:
    data = b"T X {11+}\r\n" + b"z" * 11 + b" {1+}\r\nq\r\nT2 NOOP\r\n"
    assert frames(data) == [Frame((b"T X {11+}",), t.LITERAL_TOO_LONG), Frame((b"T2 NOOP",))]


def test_non_sync_literal_too_far_to_skip_is_fatal() -> None:
    (frame,) = frames(b"T X {41+}\r\n")
    assert frame == Frame((b"T X {41+}",), t.LITERAL_TOO_LONG, fatal=True)


def test_line_too_long_is_fatal_whether_or_not_lf_arrived() -> None:
    assert frames(b"T " + b"x" * 19) == []  # 21 bytes: may still be 20 + CR
    assert frames(b"T " + b"x" * 20) == [Frame((b"T " + b"x" * 19,), t.LINE_TOO_LONG, fatal=True)]
    assert frames(b"x" * 21 + b"\n") == [Frame((b"x" * 21,), t.LINE_TOO_LONG, fatal=True)]
    assert frames(b"x" * 20 + b"\r\n") == [Frame((b"x" * 20,))]


def test_memory_is_bounded_while_waiting() -> None:
    buffer = ReceiveBuffer(LIMITS, approve_sync=False)
    buffer.feed(b"T X {10+}\r\n123456789")
    assert buffer.next_frame() is None
    assert len(buffer) <= LIMITS.max_command + LIMITS.max_literal
    buffer.feed(b"0\r\n")
    assert buffer.next_frame() == Frame((b"T X {10+}", b"1234567890", b""))
    assert len(buffer) == 0


def test_clear_drops_everything() -> None:
    buffer = ReceiveBuffer(LIMITS, approve_sync=False)
    buffer.feed(b"T X {5+}\r\nab")
    assert buffer.next_frame() is None
    buffer.clear()
    buffer.feed(b"T2 NOOP\r\n")
    assert buffer.next_frame() == Frame((b"T2 NOOP",))

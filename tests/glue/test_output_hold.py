"""OutputQueue.hold/release: bytes gathered while the owner works leave in order, once."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from mupdate.net.output import HOLD_MAX, OutputQueue


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def queue(transport: StringTransport) -> OutputQueue:
    return OutputQueue(transport, limit=1 << 20, on_overflow=lambda: None)


def test_held_writes_leave_as_one_write_on_release() -> None:
    t = CountingTransport()
    q = queue(t)
    q.hold()
    q.hold()
    q.write(b"a")
    q.write(b"b")
    q.release()
    assert (t.value(), q.idle) == (b"", False)
    q.release()
    assert (t.value(), t.writes, q.idle) == (b"ab", 1, True)


def test_a_dump_keeps_its_place_behind_held_bytes() -> None:
    t = CountingTransport()
    q = queue(t)
    q.hold()
    q.write(b"1")
    q.write_lazy(iter([b"2", b"3"]))
    q.write(b"4")
    q.release()
    assert t.value() == b"1234"


def test_flush_hands_held_bytes_on_at_once() -> None:
    t = CountingTransport()
    q = queue(t)
    q.hold()
    q.write(b"x")
    q.flush()
    assert t.value() == b"x"
    q.release()
    assert t.writes == 1


def test_a_long_burst_is_not_held_past_the_cap() -> None:
    t = CountingTransport()
    q = queue(t)
    q.hold()
    q.write(b"z" * (HOLD_MAX + 1))
    assert len(t.value()) == HOLD_MAX + 1
    q.release()


def test_stop_drops_held_bytes() -> None:
    t = CountingTransport()
    q = queue(t)
    q.hold()
    q.write(b"gone")
    q.stopProducing()
    q.release()
    assert t.value() == b""

"""StreamHub batching: a few streams get each change at once, many get them together."""

from __future__ import annotations

from twisted.internet.task import Clock

from mupdate.master.streams import StreamChange, StreamHub
from mupdate.model import EntryState, MailboxEntry


class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write_raw(self, data: bytes) -> None:
        self.data.append(data)


def change(name: bytes) -> StreamChange:
    return StreamChange(name, None, MailboxEntry(name, EntryState.ACTIVE, b"be1!p", b""))


def hub_with(count: int, clock: Clock) -> tuple[StreamHub, list[Sink]]:
    hub = StreamHub(clock, per_stream=0.001, max_delay=0.05, batch_from=4)
    sinks = [Sink() for _ in range(count)]
    for sink in sinks:
        hub.subscribe(sink, b"U01")
    return hub, sinks


def test_few_streams_get_every_change_at_once() -> None:
    clock = Clock()
    hub, sinks = hub_with(3, clock)
    hub.publish([change(b"user.a")])
    hub.publish([change(b"user.b")])
    for sink in sinks:
        assert sink.data == [
            b'U01 MAILBOX "user.a" "be1!p" ""\r\n',
            b'U01 MAILBOX "user.b" "be1!p" ""\r\n',
        ]


def test_many_streams_get_changes_close_together_in_one_write() -> None:
    clock = Clock()
    hub, sinks = hub_with(10, clock)
    hub.publish([change(b"user.a")])  # the first flush leaves at once
    hub.publish([change(b"user.b")])
    hub.publish([change(b"user.c")])
    assert all(len(sink.data) == 1 for sink in sinks)
    clock.advance(0.01)  # 10 streams x 1 ms
    for sink in sinks:
        assert (
            sink.data[1]
            == b'U01 MAILBOX "user.b" "be1!p" ""\r\nU01 MAILBOX "user.c" "be1!p" ""\r\n'
        )
    assert not clock.getDelayedCalls()


def test_flush_sends_held_changes_now_and_cancels_the_timer() -> None:
    clock = Clock()
    hub, sinks = hub_with(10, clock)
    hub.publish([change(b"user.a")])
    hub.publish([change(b"user.b")])
    hub.flush()  # what a NOOP does before its OK
    assert all(sink.data[-1] == b'U01 MAILBOX "user.b" "be1!p" ""\r\n' for sink in sinks)
    assert not clock.getDelayedCalls()


def test_a_new_stream_gets_no_change_published_before_it_subscribed() -> None:
    clock = Clock()
    hub, sinks = hub_with(10, clock)
    hub.publish([change(b"user.a")])
    hub.publish([change(b"user.b")])  # held
    late = Sink()
    hub.subscribe(late, b"U02")  # its dump already holds user.b
    clock.advance(1)
    assert late.data == []
    assert all(sink.data[-1] == b'U01 MAILBOX "user.b" "be1!p" ""\r\n' for sink in sinks)

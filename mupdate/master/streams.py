"""UPDATE subscribers and what each committed change sends them (protocol doc §8).

Cyrus queues the *name* and looks the entry up every 5 s; we push each committed change at
once, in commit order, as the state that commit produced (MAILBOX, RESERVE or DELETE). Each
line is rendered once per change with a placeholder tag and then prefixed with every
stream's own UPDATE tag, so a thousand streams cost a thousand small writes, not a thousand
renderings. A PARTIAL-UPDATE stream gets a change when the server part before or after the
write is one of its hosts (§8.4). Writes go through each connection's output queue, which
closes a stream that stops reading (design.md: one slow slave never grows our memory).

With a clock and at least ``batch_from`` (16) streams, changes published close together are
sent together: a flush goes out at once when the last one is older than an interval that
grows with the number of streams (100 µs per stream, at most 100 ms), else when that interval
is over. A few streams get every change at once; a thousand get a write every 100 ms instead
of one per commit, which is what keeps writers at full speed. A NOOP on a stream flushes first, so a change acknowledged to
its writer still reaches every slave before the OK of that slave's next NOOP (§7.7, §8.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mupdate.model import EntryState, MailboxEntry
from mupdate.protocol.errors import LocalProtocolError
from mupdate.protocol.responses import (
    DeleteLine,
    MailboxLine,
    ReserveLine,
    Response,
    render_response,
)
from mupdate.protocol.strings import is_word, render_entry

ACTIVE = EntryState.ACTIVE

_PLACEHOLDER = b"*"


class StreamSink(Protocol):
    def write_raw(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamChange:
    """One committed change: the entry it produced (None when deleted) and the old server."""

    name: bytes
    old_server: bytes | None
    entry: MailboxEntry | None

    @property
    def new_server(self) -> bytes | None:
        return self.entry.server if self.entry is not None else None


def entry_line(tag: bytes, entry: MailboxEntry) -> Response:
    if entry.active:
        return MailboxLine(tag, entry.name, entry.location, entry.acl)
    return ReserveLine(tag, entry.name, entry.location)


def untagged_body(change: StreamChange) -> bytes:
    """The line without its tag: `` MAILBOX ...`` CRLF, ready for any stream's tag."""
    event = (
        entry_line(_PLACEHOLDER, change.entry)
        if change.entry is not None
        else DeleteLine(_PLACEHOLDER, change.name)
    )
    return render_response(event)[len(_PLACEHOLDER) :]


def dump_chunks(tag: bytes, entries: Iterable[MailboxEntry], chunk: int = 256) -> Iterator[bytes]:
    """LIST/UPDATE dump lines, a few hundred per chunk, rendered only when pulled."""
    if not is_word(tag):
        raise LocalProtocolError(f"invalid tag {tag!r}")
    batch: list[bytes] = []
    append = batch.append
    for entry in entries:
        if entry.state is ACTIVE:
            append(render_entry(tag, b"MAILBOX", entry.name, entry.location, entry.acl))
        else:
            append(render_entry(tag, b"RESERVE", entry.name, entry.location, None))
        if len(batch) >= chunk:
            yield b"".join(batch)
            batch.clear()
    if batch:
        yield b"".join(batch)


@dataclass(slots=True)
class Stream:
    sink: StreamSink
    tag: bytes
    hosts: frozenset[bytes] | None  # None: a full UPDATE

    def wants(self, change: StreamChange) -> bool:
        if self.hosts is None:
            return True
        return change.old_server in self.hosts or change.new_server in self.hosts


class StreamHub:
    def __init__(
        self,
        clock: IReactorTime | None = None,
        per_stream: float = 200e-6,
        max_delay: float = 0.2,
        batch_from: int = 16,
    ) -> None:
        self._streams: dict[StreamSink, Stream] = {}
        self.published = 0
        self._clock = clock
        self._per_stream = per_stream
        self._max_delay = max_delay
        self._batch_from = batch_from
        self._pending: list[tuple[StreamChange, bytes]] = []
        self._timer: IDelayedCall | None = None
        self._last_flush = float("-inf")

    def __len__(self) -> int:
        return len(self._streams)

    def streams(self) -> list[Stream]:
        return list(self._streams.values())

    def subscribe(self, sink: StreamSink, tag: bytes, hosts: Iterable[bytes] = ()) -> Stream:
        # Changes published before this stream's dump snapshot go to the older streams only.
        self.flush()
        host_set = frozenset(hosts)
        stream = Stream(sink, tag, host_set or None)
        self._streams[sink] = stream
        return stream

    def unsubscribe(self, sink: StreamSink) -> None:
        self._streams.pop(sink, None)

    def publish(self, changes: list[StreamChange]) -> None:
        if not changes or not self._streams:
            return
        self.published += len(changes)
        self._pending.extend((change, untagged_body(change)) for change in changes)
        if self._clock is None or len(self._streams) < self._batch_from:
            self.flush()
        elif self._timer is None:
            interval = min(self._max_delay, self._per_stream * len(self._streams))
            wait = self._last_flush + interval - self._clock.seconds()
            if wait <= 0:
                self.flush()
            else:
                self._timer = self._clock.callLater(wait, self.flush)

    def flush(self) -> None:
        """Send every pending change to every stream that wants it, now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        bodies, self._pending = self._pending, []
        if self._clock is not None:
            self._last_flush = self._clock.seconds()
        # Full streams with the same tag (every Cyrus slave says U01) share one payload.
        full: dict[bytes, bytes] = {}
        for stream in list(self._streams.values()):
            if stream.hosts is None:
                data = full.get(stream.tag)
                if data is None:
                    data = full[stream.tag] = b"".join([stream.tag + body for _, body in bodies])
            else:
                data = b"".join([stream.tag + body for c, body in bodies if stream.wants(c)])
            if data:
                stream.sink.write_raw(data)

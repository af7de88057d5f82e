"""UPDATE subscribers and what each committed change sends them (protocol doc §8).

Cyrus queues the *name* and looks the entry up every 5 s; we push each committed change at
once, in commit order, as the state that commit produced (MAILBOX, RESERVE or DELETE). Each
line is rendered once per change with a placeholder tag and then prefixed with every
stream's own UPDATE tag, so a thousand streams cost a thousand small writes, not a thousand
renderings. A PARTIAL-UPDATE stream gets a change when the server part before or after the
write is one of its hosts (§8.4). Writes go through each connection's output queue, which
closes a stream that stops reading (design.md: one slow slave never grows our memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from mupdate.model import MailboxEntry
from mupdate.protocol.responses import (
    DeleteLine,
    MailboxLine,
    ReserveLine,
    Response,
    render_response,
)

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
    batch: list[bytes] = []
    for entry in entries:
        batch.append(render_response(entry_line(tag, entry)))
        if len(batch) >= chunk:
            yield b"".join(batch)
            batch = []
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
    def __init__(self) -> None:
        self._streams: dict[StreamSink, Stream] = {}
        self.published = 0

    def __len__(self) -> int:
        return len(self._streams)

    def streams(self) -> list[Stream]:
        return list(self._streams.values())

    def subscribe(self, sink: StreamSink, tag: bytes, hosts: Iterable[bytes] = ()) -> Stream:
        host_set = frozenset(hosts)
        stream = Stream(sink, tag, host_set or None)
        self._streams[sink] = stream
        return stream

    def unsubscribe(self, sink: StreamSink) -> None:
        self._streams.pop(sink, None)

    def publish(self, changes: list[StreamChange]) -> None:
        if not changes or not self._streams:
            return
        bodies = [(change, untagged_body(change)) for change in changes]
        self.published += len(changes)
        for stream in list(self._streams.values()):
            lines = [stream.tag + body for change, body in bodies if stream.wants(change)]
            if lines:
                stream.sink.write_raw(b"".join(lines))

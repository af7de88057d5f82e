"""Per-connection output with back-pressure (design.md "Streaming").

Everything a connection sends goes through one queue, so order is kept (a NOOP's OK leaves
after every stream line queued before it, §8.3). While the transport is writable bytes go
straight to it; when it pauses us, bytes wait here and are counted, and past ``limit`` the
owner is told to close with ``* BYE`` instead of growing memory. Large dumps are given as an
iterator of chunks and pulled only while the transport is writable, so a LIST of a million
mailboxes never sits in memory as bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer


@implementer(IPushProducer)
class OutputQueue:
    def __init__(
        self,
        transport: ITransport,
        limit: int,
        on_overflow: Callable[[], None],
        on_resume: Callable[[], None] = lambda: None,
    ) -> None:
        self._transport = transport
        self._on_resume = on_resume
        self._limit = limit
        self._on_overflow = on_overflow
        self._items: deque[bytes | Iterator[bytes]] = deque()
        self._queued_bytes = 0
        self._paused = False
        self._stopped = False
        self._overflowed = False

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def idle(self) -> bool:
        """Nothing waiting here (the transport may still hold bytes of its own)."""
        return not self._items

    def write(self, data: bytes) -> None:
        if self._stopped or not data:
            return
        if not self._items and not self._paused:
            self._transport.write(data)
            return
        self._items.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > self._limit and not self._overflowed:
            self._overflowed = True
            self._on_overflow()

    def write_lazy(self, chunks: Iterator[bytes]) -> None:
        if self._stopped:
            return
        self._items.append(chunks)
        self._drain()

    def _drain(self) -> None:
        while self._items and not self._paused and not self._stopped:
            head = self._items[0]
            if isinstance(head, bytes):
                self._items.popleft()
                self._queued_bytes -= len(head)
                self._transport.write(head)
                continue
            chunk = next(head, None)
            if chunk is None:
                self._items.popleft()
            elif chunk:
                self._transport.write(chunk)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._drain()
        if not self._paused:
            self._on_resume()

    def stopProducing(self) -> None:
        self._stopped = True
        self._items.clear()
        self._queued_bytes = 0

"""Per-connection output with back-pressure (design.md "Streaming").

Everything a connection sends goes through one queue, so order is kept (a NOOP's OK leaves
after every stream line queued before it, §8.3). While the transport is writable bytes go
straight to it; when it pauses us, bytes wait here and are counted, and past ``limit`` the
owner is told to close with ``* BYE`` instead of growing memory. Large dumps are given as an
iterator of chunks and pulled only while the transport is writable, so a LIST of a million
mailboxes never sits in memory as bytes.

Per command, the cost that mattered was the transport's: each ``write`` makes Twisted watch
the socket for writability (an ``epoll_ctl``), wait a reactor turn, send, and stop watching
(another ``epoll_ctl``). So while the owner is working through its input (``hold`` ..
``release``) bytes gather here, and at the end they go out as one ``send`` when the TCP
transport has nothing of its own waiting; anything the kernel does not take, and every other
transport (TLS, tests), goes through ``transport.write`` as before. Bytes and order on the
wire are unchanged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.tcp import Connection
from zope.interface import implementer

#: Twisted's private TCP fields the direct send reads; a Twisted without one of them (a
#: later release may rename them) gets ``transport.write`` only, as before.
_TCP_FIELDS = (
    "TLS",
    "connected",
    "disconnecting",
    "_writeDisconnecting",
    "_writeDisconnected",
    "_tempDataBuffer",
    "offset",
    "dataBuffer",
    "socket",
)

#: Held bytes past this go to the transport at once, so its back-pressure (pauseProducing
#: past its own 64 KiB) still reaches a long pipelined burst.
HOLD_MAX = 65536


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
        self._holding = 0
        self._held: list[bytes] = []
        self._held_len = 0
        # A plain TCP transport can be sent to at once when its own buffer is empty.
        self._tcp: Connection | None = None
        if isinstance(transport, Connection) and all(hasattr(transport, f) for f in _TCP_FIELDS):
            self._tcp = transport

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def idle(self) -> bool:
        """Nothing waiting here (the transport may still hold bytes of its own)."""
        return not self._items and not self._held

    def hold(self) -> None:
        """Gather writes until the matching ``release`` (calls nest)."""
        self._holding += 1

    def release(self) -> None:
        self._holding -= 1
        if not self._holding:
            self.flush()

    def flush(self) -> None:
        """Hand held bytes on now (before a direct transport write, a close, a TLS switch)."""
        if self._held:
            data = b"".join(self._held) if len(self._held) > 1 else self._held[0]
            self._held.clear()
            self._held_len = 0
            self._emit(data)

    def _emit(self, data: bytes) -> None:
        t = self._tcp
        if (
            t is not None
            and not t.TLS
            and t.connected
            and not t.disconnecting
            and not t._writeDisconnecting
            and not t._writeDisconnected
            and not t._tempDataBuffer
            and t.offset == len(t.dataBuffer)
        ):
            try:
                sent = t.socket.send(data)
            except OSError:  # EAGAIN, EINTR, or a dead socket: Twisted's own write sees it
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._transport.write(data)

    def write(self, data: bytes) -> None:
        if self._stopped or not data:
            return
        if not self._items and not self._paused:
            if self._holding:
                self._held.append(data)
                self._held_len += len(data)
                if self._held_len > HOLD_MAX:
                    self.flush()
            else:
                self._emit(data)
            return
        self._items.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > self._limit and not self._overflowed:
            self._overflowed = True
            self._on_overflow()

    def write_lazy(self, chunks: Iterator[bytes]) -> None:
        if self._stopped:
            return
        self.flush()  # held bytes leave before the dump
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
        self._held.clear()
        self._held_len = 0
        self._queued_bytes = 0

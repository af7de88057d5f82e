"""A small controllable TCP relay on 127.0.0.1, for network-fault tests.

    with Relay(master.host, master.port) as relay:   # listens on relay.host:relay.port
        relay.freeze()                 # hold every byte, forward nothing, close nothing
        relay.passthrough()            # forward again (held bytes first, then the rest)
        relay.cut_after(up=120)        # forward 120 more client->server bytes, then cut
        relay.cut_after(down=4096)     # the same, server->client
        relay.slow(1, 0.5)             # at most 1 byte per 0.5 s, both directions
        relay.cut_all()                # close every open link now
        relay.retarget(host, port)     # later links go to host:port (a moved virtual IP)
        relay.wait_for(lambda r: r.cuts >= 1, 10, "a cut")

Each accepted connection is a *link*: the relay connects to the target and pumps bytes both
ways, "up" (client -> target) and "down" (target -> client). Every link has a mode per
direction:

- ``pass``: forward as fast as the receiver takes it;
- ``freeze``: keep reading and holding the bytes (up to ``hold_max``, then stop reading, so
  the sender's kernel buffers fill), forward nothing and propagate no close; a later mode
  forwards what was held, in order, then any close that arrived meanwhile;
- ``cut``: forward at most N more bytes (counted from the moment the mode was set), then
  close both sockets of the link (with a TCP reset if ``reset=True``); N = 0 cuts as soon as
  a byte would be forwarded;
- ``slow``: forward at most K bytes, then wait ``interval`` seconds, and so on.

Setting a mode applies it to the open links and to the links accepted later (the
``existing``/``new`` flags restrict that). A close seen on one side is forwarded as a
half-close (``shutdown(SHUT_WR)``) once the held bytes are out; a link ends when both
directions are done or it is cut.

The relay runs an asyncio loop in its own daemon thread; every public call is executed on
that loop and waited for (bounded by ``call_timeout``), so when ``freeze()`` returns the mode
is in force. Bounded: at most ``max_links`` links at a time (beyond that an accepted
connection is closed at once) and ``hold_max`` bytes held per direction. ``stop()`` closes
everything and joins the thread. Counters (``accepted``, ``cuts``, ``open_links``,
``forwarded_up``/``forwarded_down``; ``cuts`` counts only links the relay cut itself, by a
cut mode or ``cut_all``) are updated under a condition variable that
``wait_for`` waits on, so tests wait on events with a deadline instead of sleeping.
Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = ["Mode", "Relay", "RelayError"]

T = TypeVar("T")
Direction = Literal["up", "down"]


class RelayError(AssertionError):
    """The relay could not start, or a control call or a wait did not finish in time."""


@dataclass(frozen=True)
class Mode:
    """What one direction of a link does: kind is pass, freeze, cut or slow."""

    kind: Literal["pass", "freeze", "cut", "slow"] = "pass"
    limit: int = 0  # cut: bytes still forwarded before the cut; slow: bytes per interval
    interval: float = 0.0  # slow: seconds between two bursts
    reset: bool = False  # cut: close with a TCP reset (SO_LINGER 0) instead of a FIN

    def __post_init__(self) -> None:
        if self.kind not in ("pass", "freeze", "cut", "slow"):
            raise ValueError(f"unknown relay mode {self.kind!r}")
        if self.limit < 0 or self.interval < 0:
            raise ValueError("limit and interval must be >= 0")
        if self.kind == "slow" and (self.limit < 1 or not 0 < self.interval <= 60):
            raise ValueError("slow needs limit >= 1 and 0 < interval <= 60")


PASS = Mode()


class _Pipe:
    """One direction of a link: a reader task filling ``held``, a writer task draining it."""

    def __init__(
        self,
        link: _Link,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        mode: Mode,
    ) -> None:
        self.link = link
        self.direction = direction
        self.reader = reader
        self.writer = writer  # the destination
        self.held = bytearray()
        self.eof = False  # the source closed (or failed); forwarded once held is empty
        self.done = False
        self.mode = mode
        self.sent_in_mode = 0
        self.changed = asyncio.Event()  # data, eof, mode or room: something to look at

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        self.sent_in_mode = 0
        self.changed.set()

    async def _wait_change(self, timeout: float | None = None) -> None:
        self.changed.clear()
        if timeout is None:
            await self.changed.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)

    async def read_loop(self) -> None:
        relay = self.link.relay
        try:
            while True:
                while len(self.held) >= relay.hold_max:  # bounded: stop reading
                    await self._wait_change()
                data = await self.reader.read(min(65536, relay.hold_max - len(self.held)))
                if not data:
                    break
                self.held += data
                self.changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof = True
            self.changed.set()

    async def write_loop(self) -> None:
        try:
            while True:
                mode = self.mode
                if mode.kind == "freeze" or (not self.held and not self.eof):
                    await self._wait_change()
                    continue
                if not self.held:  # eof, everything held is out: half-close
                    with contextlib.suppress(OSError, RuntimeError):
                        if self.writer.can_write_eof():
                            self.writer.write_eof()
                    return
                if mode.kind == "cut":
                    room = mode.limit - self.sent_in_mode
                    if room <= 0:
                        self.link.cut(reset=mode.reset)
                        return
                    size = room
                elif mode.kind == "slow":
                    size = mode.limit
                else:
                    size = len(self.held)
                chunk = bytes(self.held[:size])
                del self.held[:size]
                self.changed.set()  # room for the reader
                self.writer.write(chunk)
                await self.writer.drain()
                if mode is self.mode:
                    self.sent_in_mode += len(chunk)
                self.link.relay._count(self.direction, len(chunk))
                if mode.kind == "cut" and mode is self.mode and self.sent_in_mode >= mode.limit:
                    self.link.cut(reset=mode.reset)
                    return
                if mode.kind == "slow" and mode is self.mode:
                    # pacing: the next burst after `interval`, sooner if the mode changes
                    deadline = asyncio.get_running_loop().time() + mode.interval
                    while mode is self.mode:
                        left = deadline - asyncio.get_running_loop().time()
                        if left <= 0:
                            break
                        await self._wait_change(left)
        except (ConnectionError, OSError):  # the destination went away: not a cut of ours
            self.link.close(reset=False, counted=False)
        finally:
            self.done = True
            self.link.pipe_done()


class _Link:
    def __init__(self, relay: Relay, number: int) -> None:
        self.relay = relay
        self.number = number
        self.pipes: dict[Direction, _Pipe] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.closed = False

    def start(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.writers = [client[1], target[1]]
        self.pipes["up"] = _Pipe(self, "up", client[0], target[1], self.relay._mode_for("up"))
        self.pipes["down"] = _Pipe(self, "down", target[0], client[1], self.relay._mode_for("down"))
        for pipe in self.pipes.values():
            self.tasks.append(asyncio.ensure_future(pipe.read_loop()))
            self.tasks.append(asyncio.ensure_future(pipe.write_loop()))

    def pipe_done(self) -> None:
        if all(p.done for p in self.pipes.values()):
            self.close(reset=False, counted=False)

    def cut(self, reset: bool) -> None:
        self.close(reset=reset, counted=True)

    def close(self, reset: bool, counted: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError, RuntimeError):
                if reset:
                    writer.transport.abort()
                else:
                    writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.relay._link_closed(self, counted)


class Relay:
    """A TCP relay from 127.0.0.1:``port`` (0: any free port) to ``target_host:target_port``."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_links: int = 256,
        hold_max: int = 1 << 20,
        call_timeout: float = 10.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.max_links = max_links
        self.hold_max = hold_max
        self.call_timeout = call_timeout
        self._modes: dict[Direction, Mode] = {"up": PASS, "down": PASS}
        self._links: set[_Link] = set()
        self._numbers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._cond = threading.Condition()
        # counters, read by tests (under _cond for wait_for)
        self.accepted = 0
        self.refused = 0  # accepted while max_links were open, or the target was down
        self.cuts = 0
        self.open_links = 0
        self.forwarded_up = 0
        self.forwarded_down = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Relay:
        if self._thread is not None:
            raise RelayError("relay already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._accept, self.host, self.port)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"relay->{self.target}", daemon=True)
        self._thread.start()
        if not ready.wait(self.call_timeout) or failure:
            raise RelayError(f"relay did not start: {failure[0] if failure else 'timeout'}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [task for link in self._links for task in link.tasks]
            for link in list(self._links):
                link.close(reset=True, counted=False)
            if tasks:
                await asyncio.wait(tasks, timeout=self.call_timeout / 2)

        with contextlib.suppress(RelayError):
            self._call(shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.call_timeout)
        self._thread = None

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control (any thread) ------------------------------------------------------------

    def set_mode(
        self,
        up: Mode | None = None,
        down: Mode | None = None,
        *,
        existing: bool = True,
        new: bool = True,
    ) -> None:
        """Set the mode of one or both directions, on open links and/or later ones."""

        async def apply() -> None:
            for direction, mode in (("up", up), ("down", down)):
                if mode is None:
                    continue
                if new:
                    self._modes[direction] = mode  # type: ignore[index]
                if existing:
                    for link in self._links:
                        link.pipes[direction].set_mode(mode)  # type: ignore[index]

        self._call(apply())

    def passthrough(self, **where: bool) -> None:
        self.set_mode(PASS, PASS, **where)

    def freeze(self, up: bool = True, down: bool = True, **where: bool) -> None:
        self.set_mode(Mode("freeze") if up else None, Mode("freeze") if down else None, **where)

    def cut_after(
        self, up: int | None = None, down: int | None = None, reset: bool = False, **where: bool
    ) -> None:
        """Cut a link once ``up`` more client->target bytes (or ``down`` more target->client
        bytes) have been forwarded on it; a direction given None keeps its mode."""
        if up is None and down is None:
            raise ValueError("cut_after needs up or down")
        self.set_mode(
            Mode("cut", up, reset=reset) if up is not None else None,
            Mode("cut", down, reset=reset) if down is not None else None,
            **where,
        )

    def slow(
        self, limit: int, interval: float, up: bool = True, down: bool = True, **where: bool
    ) -> None:
        mode = Mode("slow", limit, interval)
        self.set_mode(mode if up else None, mode if down else None, **where)

    def retarget(self, host: str, port: int, *, cut: bool = True) -> int:
        """Send the links accepted from now on to ``host:port`` (a virtual IP moving to another
        machine); with ``cut``, also close the open links, as the move would. Returns how many
        were cut."""

        async def move() -> int:
            self.target = (host, port)
            links = list(self._links) if cut else []
            for link in links:
                link.cut(reset=False)
            return len(links)

        return self._call(move())

    def cut_all(self, reset: bool = False) -> int:
        """Close every open link now; returns how many."""

        async def cut() -> int:
            links = list(self._links)
            for link in links:
                link.cut(reset=reset)
            return len(links)

        return self._call(cut())

    def wait_for(self, predicate: Callable[[Relay], object], timeout: float, what: str) -> None:
        """Wait until ``predicate(relay)`` holds, re-checked at every counter change."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RelayError(
                        f"timed out after {timeout}s waiting for {what} "
                        f"(accepted {self.accepted}, cuts {self.cuts}, open {self.open_links}, "
                        f"up {self.forwarded_up} B, down {self.forwarded_down} B)"
                    )
                self._cond.wait(left)

    # -- loop side -------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._thread is None:
            coro.close()
            raise RelayError("relay not started")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.call_timeout)
        except TimeoutError as e:
            future.cancel()
            raise RelayError(f"relay control call timed out after {self.call_timeout}s") from e

    def _mode_for(self, direction: Direction) -> Mode:
        return self._modes[direction]

    def _count(self, direction: Direction, size: int) -> None:
        with self._cond:
            if direction == "up":
                self.forwarded_up += size
            else:
                self.forwarded_down += size
            self._cond.notify_all()

    def _link_closed(self, link: _Link, counted: bool) -> None:
        self._links.discard(link)
        with self._cond:
            self.open_links = len(self._links)
            self.cuts += counted
            self._cond.notify_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._cond:
            self.accepted += 1
            self._cond.notify_all()
        if len(self._links) >= self.max_links:
            self._refuse(writer)
            return
        try:
            target = await asyncio.wait_for(
                asyncio.open_connection(*self.target), self.call_timeout
            )
        except (OSError, TimeoutError):
            self._refuse(writer)
            return
        self._numbers += 1
        link = _Link(self, self._numbers)
        self._links.add(link)
        with self._cond:
            self.open_links = len(self._links)
            self._cond.notify_all()
        link.start((reader, writer), target)

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()
        with self._cond:
            self.refused += 1
            self._cond.notify_all()

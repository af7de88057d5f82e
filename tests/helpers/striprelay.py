"""A man in the middle for STARTTLS-stripping tests (issue 4): a TCP relay on 127.0.0.1.

    with StrippingRelay(master.host, master.port) as mitm:   # listens on mitm.address
        ...  # a client connects to mitm.host:mitm.port
        mitm.wait_for(lambda r: r.closed >= 1, 10, "the client's link to close")
        assert b"AUTHENTICATE" not in mitm.upstream

Until the server's banner ends (its ``* OK``, ``* BYE`` or ``* NO`` line), every banner line
whose text (without CR LF) is in ``drop`` is deleted, so ``* STARTTLS`` never reaches the
client; after that, bytes pass through unchanged both ways. Every byte the client sends is
kept in ``upstream`` (what an attacker in the middle would read), every deleted line in
``dropped``.

Threads and blocking sockets, standard library only. Counters change under a condition
variable that ``wait_for`` waits on, so tests wait for events with a deadline, not sleeps.
``stop`` shuts every socket down and joins the threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["StrippingRelay"]

_BANNER_END = (b"* OK", b"* BYE", b"* NO", b"* BAD")


class StrippingRelay:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        drop: Iterable[bytes] = (b"* STARTTLS",),
        *,
        timeout: float = 10.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.drop = frozenset(drop)
        self.timeout = timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.accepted = 0
        self.closed = 0  # links whose both directions have ended
        self.upstream = b""  # everything any client sent, in order of arrival
        self.dropped: list[bytes] = []
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> StrippingRelay:
        listener = socket.create_server((self.host, 0))
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, "accept")
        return self

    def stop(self) -> None:
        self._stopping = True
        with self._cond:
            sockets = [s for s in (self._listener, *self._sockets) if s is not None]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() or recv()
            sock.close()
        for thread in self._threads:
            thread.join(self.timeout)

    def __enter__(self) -> StrippingRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(
        self, predicate: Callable[[StrippingRelay], object], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what} (accepted {self.accepted}, "
                        f"closed {self.closed}, upstream {self.upstream!r})"
                    )
                self._cond.wait(left)

    # -- threads ---------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=f"striprelay-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=self.timeout)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._cond:
                self.accepted += 1
                self._sockets += [client, server]
                self._cond.notify_all()
            done = threading.Barrier(2, action=self._link_closed)
            self._spawn(self._pump, "up", client, server, "up", done)
            self._spawn(self._pump, "down", server, client, "down", done)

    def _link_closed(self) -> None:
        with self._cond:
            self.closed += 1
            self._cond.notify_all()

    def _pump(
        self, source: socket.socket, sink: socket.socket, direction: str, done: threading.Barrier
    ) -> None:
        in_banner = direction == "down"
        pending = b""  # banner bytes held back: the last line may be incomplete
        try:
            while data := source.recv(65536):
                if direction == "up":
                    with self._cond:
                        self.upstream += data
                        self._cond.notify_all()
                if in_banner:
                    data, pending, in_banner = self._strip(pending + data)
                if data:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the close on
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait(self.timeout)

    def _strip(self, buffered: bytes) -> tuple[bytes, bytes, bool]:
        """Banner bytes -> (bytes to forward, bytes held back, still in the banner)."""
        out = b""
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            text = line.rstrip(b"\r")
            if text in self.drop:
                with self._cond:
                    self.dropped.append(text)
                    self._cond.notify_all()
            else:
                out += line + b"\n"
            if text.startswith(_BANNER_END):
                return out + buffered, b"", False
        return out, buffered, True

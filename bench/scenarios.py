"""The scenarios of bench/compare.py: one asyncio client, the same bytes for both servers.

Every scenario takes a port (and sizes) and returns ``{figure: value}``. The client speaks
only what both our master and Cyrus's `mupdate -m` accept: quoted strings out, and on the
way in it reads lines (Cyrus answers in ``{n+}`` literals, we in quoted strings, so only
line starts and the names inside lines are looked at). Every wait is bounded: a timeout per
command, a deadline per phase. Not a test: nothing here asserts a figure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import random
import re
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

HOST = "127.0.0.1"
TIMEOUT = 120.0
ACL_RIGHTS = b"lrswipkxtecdan"
Figures = dict[str, float]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of ``values`` (seconds) in milliseconds; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 3)


class Conn:
    """One logged-in MUPDATE connection (PLAIN admin/secret) with tagged commands."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.n = reader, writer, 0

    @classmethod
    async def open(cls, port: int, timeout: float = TIMEOUT) -> Conn:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 24)
            c = cls(reader, writer)
            try:
                while not (await reader.readline()).startswith(b"* OK"):
                    if reader.at_eof():
                        raise ConnectionError("closed before the greeting")
                ir = base64.b64encode(b"\0admin\0secret")
                writer.write(b'A01 AUTHENTICATE "PLAIN" "' + ir + b'"\r\n')
                status = await c._until(b"A01")
            except BaseException:
                writer.close()
                raise
        if not status.startswith(b"A01 OK"):
            raise ConnectionError(f"login refused: {status!r}")
        return c

    async def _until(self, tag: bytes) -> bytes:
        prefix = tag + b" "
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(prefix) and line[len(prefix) : len(prefix) + 2] in (
                b"OK",
                b"NO",
                b"BA",
            ):
                return line

    async def command(self, text: bytes, timeout: float = TIMEOUT) -> float:
        """Send one command, wait for its tagged OK; the seconds it took."""
        self.n += 1
        tag = b"X%d" % self.n
        started = time.perf_counter()
        self.writer.write(tag + b" " + text + b"\r\n")
        async with asyncio.timeout(timeout):
            status = await self._until(tag)
        if not status.startswith(tag + b" OK"):
            raise RuntimeError(f"{text[:60]!r} answered {status!r}")
        return time.perf_counter() - started

    def close(self) -> None:
        self.writer.close()


def entry_name(k: int) -> bytes:
    """The k-th mailbox of the loaded list: ten folders per user."""
    return b"user.u%06d.f%d" % (k // 10, k % 10)


def activate_line(tag: bytes, k: int) -> bytes:
    return b'%s ACTIVATE "%s" "be%d!default" "u%06d\t%s\t"\r\n' % (
        tag,
        entry_name(k),
        k % 8,
        k // 10,
        ACL_RIGHTS,
    )


# -- writes ------------------------------------------------------------------------------


async def write_cycles(
    conn: Conn, names: list[bytes], latencies: dict[str, list[float]] | None = None
) -> None:
    """RESERVE, ACTIVATE, DELETE each name, each command waiting for its OK (a backend)."""
    for name in names:
        quoted = b'"' + name + b'"'
        r = await conn.command(b"RESERVE " + quoted + b' "be1!default"')
        a = await conn.command(b"ACTIVATE " + quoted + b' "be1!default" "u\tlrs\t"')
        d = await conn.command(b"DELETE " + quoted)
        if latencies is not None:
            latencies["reserve"].append(r)
            latencies["activate"].append(a)
            latencies["delete"].append(d)


async def write_throughput(port: int, clients: int, commands: int, run: str) -> Figures:
    conns = [await Conn.open(port) for _ in range(clients)]
    cycles = max(1, commands // 3 // clients)
    latencies: dict[str, list[float]] = {"reserve": [], "activate": [], "delete": []}
    started = time.perf_counter()
    await asyncio.gather(
        *(
            write_cycles(
                c, [b"user.w%s.c%d.m%d" % (run.encode(), i, k) for k in range(cycles)], latencies
            )
            for i, c in enumerate(conns)
        )
    )
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    out: Figures = {"ops_per_s": round(cycles * clients * 3 / elapsed, 1)}
    for cmd, values in latencies.items():
        out[f"{cmd}_p50_ms"] = pct(values, 50)
        out[f"{cmd}_p99_ms"] = pct(values, 99)
    return out


# -- loading and dumps ---------------------------------------------------------------------


async def populate(port: int, start: int, stop: int, conns: int = 8, window: int = 500) -> Figures:
    """Pipelined ACTIVATEs of entries start..stop-1 over several connections."""
    opened = [await Conn.open(port) for _ in range(conns)]

    async def fill(i: int, c: Conn) -> None:
        batch: list[bytes] = []
        for k in range(start + i, stop, conns):
            c.n += 1
            batch.append(activate_line(b"P%d" % c.n, k))
            if len(batch) == window or k + conns >= stop:
                c.writer.write(b"".join(batch))
                async with asyncio.timeout(TIMEOUT):
                    status = await c._until(b"P%d" % c.n)
                if not status.startswith(b"P%d OK" % c.n):
                    raise RuntimeError(status)
                batch = []

    started = time.perf_counter()
    await asyncio.gather(*(fill(i, c) for i, c in enumerate(opened)))
    elapsed = time.perf_counter() - started
    for c in opened:
        c.close()
    return {"seconds": round(elapsed, 2), "entries_per_s": round((stop - start) / elapsed)}


class DumpReader:
    """Reads a LIST or UPDATE dump in large chunks, counting entry lines, until its OK."""

    def __init__(self, conn: Conn, tag: bytes) -> None:
        self.conn, self.tag = conn, tag
        self.count = 0

    async def run(self, timeout: float) -> str:
        """Read until the tagged OK (NO or BAD raise)."""
        entry = (b"\n" + self.tag + b" MAILBOX ", b"\n" + self.tag + b" RESERVE ")
        end = b"\n" + self.tag + b" "
        buf = b"\n"
        async with asyncio.timeout(timeout):
            while True:
                data = await self.conn.reader.read(1 << 20)
                if not data:
                    raise ConnectionError("closed during the dump")
                buf += data
                cut = buf.rfind(b"\n")
                region, buf = buf[:cut], buf[cut:]
                self.count += region.count(entry[0]) + region.count(entry[1])
                if end + b"OK" in region:
                    return "ok"
                if end + b"NO" in region or end + b"BAD" in region:
                    raise RuntimeError(f"dump ended in {region[-200:]!r}")


async def dump_time(port: int, verb: bytes, expected: int) -> Figures:
    c = await Conn.open(port)
    started = time.perf_counter()
    c.writer.write(b"L1 " + verb + b"\r\n")
    reader = DumpReader(c, b"L1")
    await reader.run(TIMEOUT * 5)
    elapsed = time.perf_counter() - started
    c.close()
    if reader.count < expected:
        raise RuntimeError(f"{verb!r} dump held {reader.count} entries, expected {expected}")
    return {
        "seconds": round(elapsed, 3),
        "records_per_s": round(reader.count / elapsed),
        "entries": reader.count,
    }


async def writes_during_dump(port: int, size: int, run: str) -> Figures:
    """A full LIST read at full speed while one backend writes; write latency meanwhile."""
    lister = await Conn.open(port)
    writer = await Conn.open(port)
    latencies: list[float] = []
    done = asyncio.Event()

    async def write() -> None:
        k = 0
        while not done.is_set():
            lat: dict[str, list[float]] = {"reserve": [], "activate": [], "delete": []}
            await write_cycles(writer, [b"user.dd%s.%d" % (run.encode(), k)], lat)
            latencies.extend(lat["reserve"] + lat["activate"] + lat["delete"])
            k += 1

    started = time.perf_counter()
    lister.writer.write(b"L1 LIST\r\n")
    task = asyncio.ensure_future(write())
    reader = DumpReader(lister, b"L1")
    try:
        await reader.run(TIMEOUT * 5)
    finally:
        done.set()
        await asyncio.wait_for(task, TIMEOUT)
    elapsed = time.perf_counter() - started
    lister.close()
    writer.close()
    return {
        "dump_seconds": round(elapsed, 3),
        "writes_during_dump": len(latencies),
        "write_p50_ms": pct(latencies, 50),
        "write_max_ms": round(max(latencies, default=0.0) * 1000, 3),
    }


async def find_throughput(port: int, size: int, clients: int, finds: int) -> Figures:
    conns = [await Conn.open(port) for _ in range(clients)]
    per_client = max(1, finds // clients)
    latencies: list[float] = []
    rng = random.Random(7)

    async def run(c: Conn) -> None:
        for _ in range(per_client):
            latencies.append(await c.command(b'FIND "' + entry_name(rng.randrange(size)) + b'"'))

    started = time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return {
        "finds_per_s": round(per_client * clients / elapsed, 1),
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
    }


# -- streams -------------------------------------------------------------------------------


class Stream:
    """An UPDATE stream read in chunks as it arrives; notes when each watched name came."""

    def __init__(self, conn: Conn, pattern: re.Pattern[bytes] | None = None) -> None:
        self.conn = conn
        self.pattern = pattern
        self.arrivals: dict[bytes, float] = {}
        self.marker: bytes | None = None
        self.marker_at: float | None = None
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def attach(
        cls, port: int, timeout: float, pattern: re.Pattern[bytes] | None = None
    ) -> Stream:
        async with asyncio.timeout(timeout):
            conn = await Conn.open(port, timeout)
            try:
                conn.writer.write(b"U01 UPDATE\r\n")
                await DumpReader(conn, b"U01").run(timeout)
            except BaseException:
                conn.close()
                raise
        s = cls(conn, pattern)
        s.task = asyncio.ensure_future(s._read())
        return s

    async def _read(self) -> None:
        tail = b""
        while True:
            try:
                data = await self.conn.reader.read(1 << 16)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.closed = True
                return
            now = time.perf_counter()
            buf = tail + data
            cut = buf.rfind(b"\n") + 1
            region, tail = buf[:cut], buf[cut:]
            if self.pattern is not None:
                for name in self.pattern.findall(region):
                    self.arrivals.setdefault(name, now)
            if self.marker is not None and self.marker_at is None and self.marker in region:
                self.marker_at = now

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.conn.close()


async def propagation(port: int, writes: int, interval: float, noop: float, run: str) -> Figures:
    """Paced ACTIVATEs on one connection; the delay from each OK to its line on a stream.

    With ``noop`` > 0 the stream sends ``N<n> NOOP`` that often, as a Cyrus slave does every
    mupdate_retry_delay; with 0 it only reads, as an idle slave between NOOPs sees it."""
    prefix = b"user.prop%s.x" % run.encode()
    stream = await Stream.attach(port, 30, re.compile(re.escape(prefix) + rb"\d{6}"))
    writer = await Conn.open(port)
    acknowledged: dict[bytes, float] = {}

    async def noops() -> None:
        n = 0
        while True:
            await asyncio.sleep(noop)
            n += 1
            stream.conn.writer.write(b"N%d NOOP\r\n" % n)

    noop_task = asyncio.ensure_future(noops()) if noop > 0 else None
    try:
        for i in range(writes):
            name = prefix + b"%06d" % i
            await writer.command(b'ACTIVATE "' + name + b'" "be9!default" "u\tlrs\t"')
            acknowledged[name] = time.perf_counter()
            await asyncio.sleep(interval)
        deadline = time.monotonic() + 15 + 2 * noop
        while len(stream.arrivals) < writes and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        if noop_task is not None:
            noop_task.cancel()
        stream.close()
        writer.close()
    # A line that arrived before its OK was read (we publish before answering, §7.7) is 0.
    delays = [
        max(0.0, stream.arrivals[n] - t) for n, t in acknowledged.items() if n in stream.arrivals
    ]
    return {
        "p50_ms": pct(delays, 50),
        "p99_ms": pct(delays, 99),
        "max_ms": round(max(delays, default=0.0) * 1000, 3),
        "received": len(delays),
    }


def _fanout_child(
    port: int, count: int, attach_timeout: float, marker: bytes, pipe: Connection
) -> None:
    """In a process of its own: attach ``count`` streams, read them, report on request."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        streams: list[Stream] = []
        failures: list[str] = []
        gate = asyncio.Semaphore(32)
        started = time.perf_counter()
        deadline = time.monotonic() + attach_timeout

        async def one() -> None:
            async with gate:
                left = deadline - time.monotonic()
                if left <= 0:
                    failures.append("deadline")
                    return
                try:
                    stream = await Stream.attach(port, min(left, 10.0))
                    stream.marker = marker
                    streams.append(stream)
                except (OSError, TimeoutError, RuntimeError) as e:
                    failures.append(type(e).__name__)

        await asyncio.gather(*(one() for _ in range(count)))
        pipe.send(
            {
                "attached": len(streams),
                "failed": len(failures),
                "why": sorted(set(failures)),
                "seconds": time.perf_counter() - started,
            }
        )
        while True:
            request: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
            if request["op"] == "close":
                break
            wait = request["wait"]
            t0 = time.monotonic()
            while time.monotonic() - t0 < wait and any(
                s.marker_at is None and not s.closed for s in streams
            ):
                await asyncio.sleep(0.02)
            pipe.send(
                {
                    "complete": sum(1 for s in streams if s.marker_at is not None),
                    "closed": sum(1 for s in streams if s.closed),
                }
            )
        for s in streams:
            s.close()
        await asyncio.sleep(0)

    asyncio.run(main())
    pipe.close()


async def fanout(
    port: int, streams: int, writers: int, commands: int, attach_timeout: float, run: str
) -> Figures:
    """Write rate with ``streams`` UPDATE streams attached and read (by another process);
    then whether every stream got the last change."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    marker = b"user.fanmark%s" % run.encode()
    child = ctx.Process(target=_fanout_child, args=(port, streams, attach_timeout, marker, there))
    child.start()
    loop = asyncio.get_running_loop()
    conns: list[Conn] = []
    try:
        attach = await _recv(loop, here, attach_timeout + 30)
        out: Figures = {
            "streams_attached": attach["attached"],
            "attach_seconds": round(attach["seconds"], 2),
        }
        try:
            conns = [await Conn.open(port, 10) for _ in range(writers)]
        except (OSError, TimeoutError, ConnectionError):
            out.update(ops_per_s=0.0, streams_complete=0, writer_connected=0)
            return out
        cycles = max(1, commands // 3 // writers)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                write_cycles(
                    c, [b"user.fan%s.c%d.m%d" % (run.encode(), i, k) for k in range(cycles)]
                )
                for i, c in enumerate(conns)
            )
        )
        elapsed = time.perf_counter() - started
        await conns[0].command(b'ACTIVATE "' + marker + b'" "be1!default" "u\tlrs\t"')
        here.send({"op": "wait", "wait": 20.0})
        done = await _recv(loop, here, 60)
        out.update(
            ops_per_s=round(cycles * writers * 3 / elapsed, 1),
            streams_complete=done["complete"],
            writer_connected=1,
        )
        return out
    finally:
        for c in conns:
            c.close()
        with contextlib.suppress(OSError):
            here.send({"op": "close"})
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join(10)


async def _recv(loop: asyncio.AbstractEventLoop, pipe: Connection, timeout: float) -> Any:
    if not await loop.run_in_executor(None, pipe.poll, timeout):
        raise TimeoutError("the stream process did not answer")
    return pipe.recv()


async def responsive(port: int, timeout: float) -> bool:
    """Whether a new connection is greeted, logged in and answers NOOP within ``timeout``."""
    try:
        c = await Conn.open(port, timeout)
        await c.command(b"NOOP", timeout)
        c.close()
        return True
    except (OSError, TimeoutError, ConnectionError, RuntimeError):
        return False


Scenario = Callable[..., Any]

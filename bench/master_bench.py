#!/usr/bin/env python3
"""Benchmark our master as a real `twistd mupdate-master` process on 127.0.0.1.

Prints: write throughput (RESERVE+ACTIVATE pairs, each client waiting for every OK as a
Cyrus backend does) with 1 and 32 concurrent clients, per-command p50/p99; the time to
LIST 100,000 mailboxes (and to get an UPDATE dump of them). Results as a table and as
JSON lines (``--json``). Everything is bounded: fixed operation counts and a timeout on
every read. Not a test: it asserts nothing.

    python bench/master_bench.py [--ops 2000] [--list-size 100000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # bench/ is not a package

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def bench_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def twistd_argv(plugin: str, conf: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        plugin,
        "--config",
        str(conf),
        "--port",
        f"tcp:{port}:interface={HOST}",
    ]


def start_master(workdir: Path, port: int, fresh: bool = True) -> subprocess.Popen[bytes]:
    creds = workdir / "credentials"
    conf = workdir / "master.conf"
    if fresh:
        subprocess.run(
            [sys.executable, "-m", "mupdate.tools.passwd", "--file", str(creds), "add", "admin"],
            input=b"secret\n",
            env=bench_env(),
            check=True,
            timeout=60,
        )
        conf.write_text(
            f"servername: bench\nconfigdirectory: {workdir / 'db'}\nadmins: admin\n"
            f"mupdate_credentials: {creds}\nmupdate_connections_max: 1000\n"
        )
    log = open(workdir / "twistd.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        twistd_argv("mupdate-master", conf, port),
        cwd=REPO,
        env=bench_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(
                    f"port {port} never opened:\n{log.read_text(errors='replace')[-3000:]}"
                ) from None
            time.sleep(0.1)  # noqa: TID251 - a benchmark waiting for its server, bounded


class NotMupdate(RuntimeError):
    """Another program answered on the port (a free port taken between our check and bind)."""


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.n = reader, writer, 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, limit=1 << 24), TIMEOUT
        )
        c = cls(reader, writer)
        while not (greeting := await c.line()).startswith(b"* OK"):
            pass
        if not greeting.startswith(b"* OK MUPDATE"):
            writer.close()
            raise NotMupdate(f"port {port} is not a MUPDATE server: {greeting[:80]!r}")
        ir = base64.b64encode(b"\0admin\0secret")
        c.writer.write(b'A01 AUTHENTICATE "PLAIN" "' + ir + b'"\r\n')
        status = await c.until(b"A01")
        assert status.startswith(b"A01 OK"), status
        return c

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), TIMEOUT)

    async def until(self, tag: bytes) -> bytes:
        prefix = tag + b" "
        while True:
            line = await self.line()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(prefix) and line[len(prefix) : len(prefix) + 2] in (
                b"OK",
                b"NO",
                b"BA",
            ):
                return line

    async def command(self, text: bytes) -> float:
        self.n += 1
        tag = b"X%d" % self.n
        started = time.perf_counter()
        self.writer.write(tag + b" " + text + b"\r\n")
        status = await self.until(tag)
        assert status.startswith(tag + b" OK"), status
        return time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def write_load(port: int, clients: int, ops: int, prefix: str) -> dict[str, object]:
    conns = [await Client.connect(port) for _ in range(clients)]
    per_client = max(1, ops // clients)
    latencies: dict[str, list[float]] = {"RESERVE": [], "ACTIVATE": []}

    async def run(i: int, c: Client) -> None:
        for k in range(per_client):
            name = f'"user.{prefix}.c{i}.m{k}"'.encode()
            latencies["RESERVE"].append(await c.command(b"RESERVE " + name + b' "be1!default"'))
            latencies["ACTIVATE"].append(
                await c.command(b"ACTIVATE " + name + b' "be1!default" "u\tlrs\t"')
            )

    started = time.perf_counter()
    await asyncio.gather(*(run(i, c) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.writer.close()
    total = per_client * clients * 2
    return {
        "figure": "write_throughput",
        "clients": clients,
        "commands": total,
        "ops_per_s": round(total / elapsed, 1),
        **{f"{cmd.lower()}_p50_ms": round(pct(v, 50), 2) for cmd, v in latencies.items()},
        **{f"{cmd.lower()}_p99_ms": round(pct(v, 99), 2) for cmd, v in latencies.items()},
    }


async def populate(port: int, size: int) -> None:
    """Pipelined ACTIVATEs from 8 connections, windows of 500."""
    conns = [await Client.connect(port) for _ in range(8)]

    async def fill(i: int, c: Client) -> None:
        names = range(i, size, len(conns))
        batch: list[bytes] = []
        for k in names:
            c.n += 1
            batch.append(
                b'P%d ACTIVATE "user.list%07d" "be%d!default" "u\tlrs\t"\r\n' % (c.n, k, k % 4)
            )
            if len(batch) == 500:
                c.writer.write(b"".join(batch))
                await c.until(b"P%d" % c.n)
                batch = []
        if batch:
            c.writer.write(b"".join(batch))
            await c.until(b"P%d" % c.n)

    await asyncio.gather(*(fill(i, c) for i, c in enumerate(conns)))
    for c in conns:
        c.writer.close()


async def dump_time(port: int, verb: bytes, expected: int) -> dict[str, object]:
    """The dump read in large chunks (scenarios.dump_time): a line-by-line asyncio reader
    here measured the client's parsing, about ten times slower than the server."""
    figures = await scenarios.dump_time(port, verb, expected)
    return {"figure": f"{verb.decode().lower()}_dump", **figures}


async def main_async(args: argparse.Namespace, port: int) -> list[dict[str, object]]:
    results = []
    for clients in (1, 32):
        results.append(await write_load(port, clients, args.ops, f"w{clients}"))
    await populate(port, args.list_size)
    results.append(await dump_time(port, b"LIST", args.list_size))
    results.append(await dump_time(port, b"UPDATE", args.list_size))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ops", type=int, default=2000, help="write commands per scenario (pairs x2)"
    )
    parser.add_argument("--list-size", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="JSON lines only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mupdate-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "db").mkdir()
        port = free_port()
        proc = start_master(workdir, port)
        try:
            wait_port(port, proc, workdir / "twistd.log")
            results = asyncio.run(main_async(args, port))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print("  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

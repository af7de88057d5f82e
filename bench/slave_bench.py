#!/usr/bin/env python3
"""Benchmark our slave following our master, both real twistd processes on 127.0.0.1.

Prints: the first full resync of N mailboxes (default 100,000) from process start until the
slave answers, and as logged by the slave ("resync applied: ... in N ms"); a second resync of
the same list after the master restarts; and the delay from a write's OK on the master to
its arrival in the slave's store, seen on an UPDATE stream served by the slave (it
publishes a change only after its store commit), p50/p99/max over sequential writes.
Bounded: fixed counts, a timeout on every read. Not a test: it asserts nothing.

    python bench/slave_bench.py [--size 100000] [--writes 500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from master_bench import (
    HOST,
    REPO,
    Client,
    bench_env,
    free_port,
    pct,
    populate,
    start_master,
    twistd_argv,
    wait_port,
)


def start_slave(workdir: Path, port: int, master_port: int) -> subprocess.Popen[bytes]:
    (workdir / "slave-db").mkdir(exist_ok=True)
    conf = workdir / "slave.conf"
    conf.write_text(
        f"servername: fe-bench\nconfigdirectory: {workdir / 'slave-db'}\nadmins: admin\n"
        f"mupdate_credentials: {workdir / 'credentials'}\nmupdate_server: {HOST}:{master_port}\n"
        "mupdate_authname: admin\nmupdate_password: secret\nmupdate_retry_delay: 1\nmupdate_retry_max: 2\n"
    )
    log = open(workdir / "slave.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        twistd_argv("mupdate-slave", conf, port),
        cwd=REPO,
        env=bench_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def logged_resyncs(log: Path) -> list[int]:
    return [
        int(m)
        for m in re.findall(r"resync applied: [^\n]*? in (\d+) ms", log.read_text(errors="replace"))
    ]


async def first_answer(port: int, deadline: float) -> float:
    """Seconds until a FIND is answered: an empty slave holds readers until its first sync."""
    started = time.perf_counter()
    while True:
        try:
            c = await Client.connect(port)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    await c.command(b'FIND "user.none"')
    c.writer.close()
    return time.perf_counter() - started


async def propagation(master_port: int, slave_port: int, writes: int) -> dict[str, object]:
    watcher = await Client.connect(slave_port)
    watcher.writer.write(b"U01 UPDATE\r\n")
    await watcher.until(b"U01")
    writer = await Client.connect(master_port)
    delays: list[float] = []
    for i in range(writes):
        name = b"user.prop%05d" % i
        await writer.command(b'ACTIVATE "' + name + b'" "be9!default" ""')
        acknowledged = time.perf_counter()
        while True:
            line = await watcher.line()
            if name in line:
                break
        delays.append(time.perf_counter() - acknowledged)
    return {
        "figure": "propagation_ok_to_slave_store",
        "writes": writes,
        "p50_ms": round(pct(delays, 50), 3),
        "p99_ms": round(pct(delays, 99), 3),
        "max_ms": round(max(delays) * 1000, 3),
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="mupdate-slave-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "db").mkdir()
        mport, sport = free_port(), free_port()
        master = start_master(workdir, mport)
        slave = None
        try:
            wait_port(mport, master, workdir / "twistd.log")
            asyncio.run(populate(mport, args.size))
            started = time.perf_counter()
            slave = start_slave(workdir, sport, mport)
            wait_port(sport, slave, workdir / "slave.log")
            answered = asyncio.run(first_answer(sport, time.monotonic() + 600))
            total = time.perf_counter() - started
            results.append(
                {
                    "figure": "first_resync",
                    "entries": args.size,
                    "seconds_from_process_start": round(total, 3),
                    "seconds_until_answered_after_port_open": round(answered, 3),
                    "logged_resync_ms": logged_resyncs(workdir / "slave.log")[-1],
                }
            )
            stop(master)
            master = start_master(workdir, mport, fresh=False)
            wait_port(mport, master, workdir / "twistd.log")
            deadline = time.monotonic() + 600
            while len(logged_resyncs(workdir / "slave.log")) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)  # noqa: TID251 - a benchmark polling its own log, bounded
            resyncs = logged_resyncs(workdir / "slave.log")
            if len(resyncs) < 2:
                raise SystemExit("slave_bench: the slave did not resync after the master restart")
            results.append(
                {
                    "figure": "resync_after_master_restart",
                    "entries": args.size,
                    "logged_resync_ms": resyncs[-1],
                }
            )
            results.append(asyncio.run(propagation(mport, sport, args.writes)))
        finally:
            if slave is not None:
                stop(slave)
            stop(master)
    for r in results:
        print(json.dumps(r) if args.json else "  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Our master and slave side by side with Cyrus 3.6's `mupdate -m` and frontend slave.

Starts our master (a real ``twistd mupdate-master``) and a real Cyrus master through
``../shared/interop/cyrus-murder`` (needs root and the Debian Cyrus packages), runs the same
scenarios against both, one server after the other, scenario by scenario (which goes first
alternates), and prints every figure for both and the ratio, oriented so that a ratio above
1 means ours is better (ours/cyrus for rates, cyrus/ours for times, latencies and memory).

Scenarios: write throughput (RESERVE+ACTIVATE+DELETE, each command waiting for its OK, with
1, 8 and 32 clients; p50/p99 per command); change propagation from a write's OK to its line
on an UPDATE stream that sends no NOOP, and one that sends NOOP every 2 s as a Cyrus slave
does; fan-out (write rate with 1, 100 and 1,000 streams attached and read by another
process; how many attached and got the last change); loading 100k then 1M mailboxes by
pipelined ACTIVATEs over 8 connections; resident memory before and after; LIST and UPDATE
dump time at 100k and 1M; FIND throughput and latency at 1M; write latency while a 1M LIST
is being read; full resync of 1M by our slave and by a Cyrus frontend slave, each
following our master and then Cyrus's.

    python bench/compare.py [--quick] [--json FILE | --json-stdout] [--profile FILE]

Everything is bounded (timeouts on every read, deadlines on every phase) and every Cyrus
node started is stopped on exit. Not a test: it asserts nothing about the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc
from master_bench import (
    REPO,
    NotMupdate,
    bench_env,
    free_port,
    start_master,
    twistd_argv,
    wait_port,
)
from slave_bench import first_answer, start_slave

CYRUS_MURDER = Path(
    os.environ.get("CYRUS_MURDER", REPO.parent / "shared" / "interop" / "cyrus-murder")
)
HIGHER = ("_per_s", "streams_attached", "streams_complete", "writer_connected", "received")
HIGHER_NAMES = ("writes_during_dump",)
INFO = ("entries", "rss_before_mb", "rss_after_mb")


def better(figure: str) -> str:
    if figure in INFO:
        return "info"
    if figure.endswith(HIGHER) or figure in HIGHER_NAMES:
        return "higher"
    return "lower"


def ratio(figure: str, ours: float, cyrus: float) -> float | None:
    """Above 1: ours is better."""
    way = better(figure)
    if way == "info":
        return None
    num, den = (ours, cyrus) if way == "higher" else (cyrus, ours)
    if den == 0:
        return None  # the table says "inf" when ours is ahead and the other is at 0
    return round(num / den, 2)


# -- the two servers -----------------------------------------------------------------------


class Ours:
    kind = "ours"

    def __init__(self, workdir: Path, profile: str | None) -> None:
        self.workdir, self.port, self.profile = workdir, free_port(), profile
        (workdir / "db").mkdir(parents=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mupdate.tools.passwd",
                "--file",
                str(workdir / "credentials"),
                "add",
                "admin",
            ],
            input=b"secret\n",
            env=bench_env(),
            check=True,
            timeout=60,
        )
        (workdir / "master.conf").write_text(
            f"servername: bench\nconfigdirectory: {workdir / 'db'}\nadmins: admin\n"
            f"mupdate_credentials: {workdir / 'credentials'}\nmupdate_connections_max: 1200\n"
        )
        self.start()

    def start(self) -> None:
        """`twistd mupdate-master`; with a profile file, under cProfile (bench/run_twistd.py)."""
        if self.profile:
            argv = [sys.executable, str(REPO / "bench" / "run_twistd.py")]
            argv += twistd_argv("mupdate-master", self.workdir / "master.conf", self.port)[3:]
            log = open(self.workdir / "twistd.log", "ab")  # noqa: SIM115 - lives with it
            env = dict(bench_env(), MUPDATE_PROFILE=self.profile)
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        else:
            self.proc = start_master(self.workdir, self.port, fresh=False)
        wait_port(self.port, self.proc, self.workdir / "twistd.log")

    def restart(self) -> None:
        self.stop()
        self.start()

    def rss_kb(self) -> int:
        return rss_kb([self.proc.pid])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=120)


class Cyrus:
    kind = "cyrus"

    def __init__(self, base: Path) -> None:
        self.dir, self.port = base / "cyrus-master", free_port()
        murder("master", str(self.dir), "--port", str(self.port), "--mechs", "PLAIN", "--no-debug")

    def pids(self) -> list[int]:
        conf = f"{self.dir}/imapd.conf".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argv[0].endswith(b"/mupdate") and conf in argv and b"-m" in argv:
                    found.append(int(entry.name))
        return found

    def rss_kb(self) -> int:
        return rss_kb(self.pids())

    def restart(self) -> None:
        murder("stop", str(self.dir))
        murder("start", str(self.dir))

    def stop(self) -> None:
        murder("stop", str(self.dir))


Server = Ours | Cyrus


def murder(*args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [str(CYRUS_MURDER), *args], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"cyrus-murder {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


# -- slaves ----------------------------------------------------------------------------------


def our_slave_resync(workdir: Path, master_port: int) -> float:
    """Seconds from starting `twistd mupdate-slave` until it answers FIND (after its sync)."""
    workdir.mkdir(parents=True)
    shutil.copy(workdir.parent / "ours" / "credentials", workdir / "credentials")
    for attempt in range(3):
        port = free_port()
        started = time.perf_counter()
        proc = start_slave(workdir, port, master_port)
        try:
            wait_port(port, proc, workdir / "slave.log", timeout=600)
            asyncio.run(first_answer(port, time.monotonic() + 1200))
            return time.perf_counter() - started
        except NotMupdate:
            # Another process (a test's Cyrus node, say) took the port first: our slave
            # could not listen there. Start it again on another port.
            if attempt == 2:
                raise
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    raise AssertionError("unreachable")


def cyrus_slave_resync(node: Path, master_port: int) -> float:
    """Seconds from starting a Cyrus frontend slave until it logs its sync complete."""
    log = node / "log" / "syslog.log"
    started = time.perf_counter()
    try:
        murder(
            "frontend", str(node), "--port", str(free_port()), "--no-debug",
            "--mupdate", f"127.0.0.1:{master_port}", "--client-mechs", "PLAIN", "--wait", "5",
        )  # fmt: skip
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            if log.exists() and "synchronization complete" in log.read_text(errors="replace"):
                return time.perf_counter() - started
            time.sleep(0.1)  # noqa: TID251 - polling a log file, bounded by the deadline
        raise TimeoutError(f"{node}: no 'synchronization complete' within 1200 s")
    finally:
        murder("stop", str(node))


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Sizes:
    write_ops: int = 3000
    write_clients: tuple[int, ...] = (1, 8, 32)
    prop_writes: int = 200
    prop_interval: float = 0.02
    fanout_streams: tuple[int, ...] = (1, 100, 1000)
    fanout_writers: int = 8
    fanout_ops: int = 3000
    attach_timeout: float = 60.0
    small: int = 100_000
    big: int = 1_000_000
    finds: int = 20_000
    find_clients: int = 8

    @classmethod
    def quick(cls) -> Sizes:
        return cls(60, (1, 8, 32), 20, 0.02, (1, 3), 2, 30, 20.0, 100, 200, 200, 4)


@dataclass
class Run:
    servers: list[Server]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _flip: bool = False

    def order(self) -> list[Server]:
        self._flip = not self._flip
        return self.servers if self._flip else self.servers[::-1]

    def add(self, scenario: str, params: str, figures: dict[str, dict[str, float]]) -> None:
        for figure in figures["ours"]:
            ours, cyrus = figures["ours"][figure], figures["cyrus"][figure]
            row = {
                "scenario": scenario,
                "params": params,
                "figure": figure,
                "ours": ours,
                "cyrus": cyrus,
                "better": better(figure),
                "ratio": ratio(figure, ours, cyrus),
            }
            self.rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    async def both(self, scenario: str, params: str, fn: Any) -> dict[str, dict[str, float]]:
        figures = {}
        for server in self.order():
            figures[server.kind] = await fn(server)
        self.add(scenario, params, figures)
        return figures


async def scenarios(run: Run, sizes: Sizes) -> None:
    for n in sizes.write_clients:
        await run.both(
            "write", f"clients={n}", lambda s, n=n: sc.write_throughput(s.port, n, sizes.write_ops, f"{s.kind[0]}{n}")
        )  # fmt: skip
    for noop in (0.0, 2.0):
        await run.both(
            "propagation", f"noop={'none' if not noop else f'{noop:g}s'}",
            lambda s, noop=noop: sc.propagation(s.port, sizes.prop_writes, sizes.prop_interval, noop, f"{s.kind[0]}{int(noop)}"),
        )  # fmt: skip
    for count in sizes.fanout_streams:
        await run.both("fanout", f"streams={count}", lambda s, c=count: fanout(run, s, c, sizes))
    await load_and_read(run, sizes)


async def fanout(run: Run, server: Server, count: int, sizes: Sizes) -> dict[str, float]:
    figures = await sc.fanout(
        server.port, count, sizes.fanout_writers, sizes.fanout_ops, sizes.attach_timeout,
        f"{server.kind[0]}{count}",
    )  # fmt: skip
    if not await sc.responsive(server.port, 60):
        run.notes.append(f"{server.kind} answered no new connection 60 s after {count} streams")
        if isinstance(server, Cyrus):
            server.restart()
            run.notes.append("cyrus master restarted (cyrus-murder stop/start)")
    return figures


async def load_and_read(run: Run, sizes: Sizes) -> None:
    # Memory is measured from a fresh process: the fan-out leaves Cyrus with a thread (and
    # its stack) per stream it took, which would hide the growth of its list.
    for server in run.servers:
        server.restart()
        if not await sc.responsive(server.port, 60):
            raise RuntimeError(f"{server.kind} does not answer after its restart")
    before = {s.kind: s.rss_kb() for s in run.servers}
    await run.both("load", f"0..{sizes.small}", lambda s: sc.populate(s.port, 0, sizes.small))
    for verb in (b"LIST", b"UPDATE"):
        await run.both(
            f"dump_{verb.decode().lower()}", f"entries={sizes.small}",
            lambda s, v=verb: sc.dump_time(s.port, v, sizes.small),
        )  # fmt: skip
    await run.both(
        "load", f"{sizes.small}..{sizes.big}", lambda s: sc.populate(s.port, sizes.small, sizes.big)
    )
    mem: dict[str, dict[str, float]] = {}
    for s in run.servers:
        after = s.rss_kb()
        mem[s.kind] = {
            "rss_before_mb": round(before[s.kind] / 1024, 1),
            "rss_after_mb": round(after / 1024, 1),
            "mb_per_million": round((after - before[s.kind]) / 1024 * 1_000_000 / sizes.big, 1),
        }
    run.add("memory", f"entries={sizes.big}", mem)
    for verb in (b"LIST", b"UPDATE"):
        await run.both(
            f"dump_{verb.decode().lower()}", f"entries={sizes.big}",
            lambda s, v=verb: sc.dump_time(s.port, v, sizes.big),
        )  # fmt: skip
    await run.both(
        "find", f"entries={sizes.big} clients={sizes.find_clients}",
        lambda s: sc.find_throughput(s.port, sizes.big, sizes.find_clients, sizes.finds),
    )  # fmt: skip
    await run.both(
        "write_during_dump", f"entries={sizes.big}",
        lambda s: sc.writes_during_dump(s.port, sizes.big, s.kind),
    )  # fmt: skip


def slave_resyncs(run: Run, base: Path, sizes: Sizes) -> None:
    for master in run.servers:
        figures: dict[str, dict[str, float]] = {}
        first = run.order()
        for slave in first:
            where = base / f"slave-{slave.kind}-of-{master.kind}"
            if slave.kind == "ours":
                seconds = our_slave_resync(where, master.port)
            else:
                seconds = cyrus_slave_resync(where, master.port)
            figures[slave.kind] = {"seconds": round(seconds, 2)}
        run.add("slave_resync", f"entries={sizes.big} master={master.kind}", figures)


# -- output ----------------------------------------------------------------------------------


def ratio_text(row: dict[str, Any]) -> str:
    if row["ratio"] is not None:
        return f"{row['ratio']:g}"
    if row["better"] == "info" or row["ours"] == row["cyrus"]:
        return "-"
    ahead = row["ours"] > row["cyrus"] if row["better"] == "higher" else row["ours"] < row["cyrus"]
    return "inf" if ahead else "0"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("scenario", "params", "figure", "ours", "cyrus", "ratio")
    body = [
        (
            r["scenario"],
            r["params"],
            r["figure"],
            f"{r['ours']:g}",
            f"{r['cyrus']:g}",
            ratio_text(r),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the tool works")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON lines")
    parser.add_argument("--json-stdout", action="store_true", help="JSON lines on stdout only")
    parser.add_argument("--big", type=int, help="the large list (default 1,000,000)")
    parser.add_argument("--small", type=int, help="the smaller list (default 100,000)")
    parser.add_argument("--profile", metavar="FILE", help="run our master under cProfile")
    parser.add_argument("--skip-slaves", action="store_true", help="no slave resync")
    args = parser.parse_args()
    if os.geteuid() != 0 or not CYRUS_MURDER.is_file():
        print(f"compare.py: needs root and {CYRUS_MURDER}", file=sys.stderr)
        return 2
    sizes = Sizes.quick() if args.quick else Sizes()
    sizes.big = args.big or sizes.big
    sizes.small = min(args.small or sizes.small, sizes.big)
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="mupdate-compare-", dir="/tmp"))
    base.chmod(0o755)
    servers: list[Server] = []
    clean = True
    try:
        servers.append(Ours(base / "ours", args.profile))
        servers.append(Cyrus(base))
        run = Run(servers)
        asyncio.run(scenarios(run, sizes))
        if not args.skip_slaves:
            slave_resyncs(run, base, sizes)
    finally:
        for server in reversed(servers):
            try:
                server.stop()
            except (RuntimeError, subprocess.SubprocessError) as e:
                clean = False
                print(f"compare.py: stopping {server.kind}: {e}; kept {base}", file=sys.stderr)
        if clean:
            shutil.rmtree(base, ignore_errors=True)
    lines = [json.dumps(r) for r in run.rows] + [json.dumps({"note": n}) for n in run.notes]
    if args.json:
        Path(args.json).write_text("\n".join(lines) + "\n")
    if args.json_stdout:
        print("\n".join(lines))
    else:
        print(table(run.rows))
        for note in run.notes:
            print(f"note: {note}")
        print(f"ratio > 1: ours better. Total {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

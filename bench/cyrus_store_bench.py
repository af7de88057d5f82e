#!/usr/bin/env python3
"""Full resync of N mailboxes into a Cyrus frontend's mailboxes.db: our slave against
Cyrus's own, same master, same machine, same run (issue 3). Run as root (Cyrus daemons).

Our master is loaded with N entries; then, in turn:
* Cyrus: a Cyrus frontend whose own ``mupdate`` slave syncs from our master; its syslog's
  ``scarfing mailbox list`` -> ``mailbox list synchronization complete`` is the resync;
* ours: a Cyrus frontend whose slave is switched off and our slave (``mupdate_slave_store:
  cyrus``) keeping its mailboxes.db; its log's ``resync applied ... in N ms`` (from sending
  UPDATE to the commit) is the resync.
Each then restarts once more against the unchanged master (a resync that changes nothing).
Figures as a table and JSON lines; not a test, asserts nothing; every wait is bounded.

    python bench/cyrus_store_bench.py [--entries 100000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scenarios import populate  # noqa: E402 - bench/ is this script's directory

from tests.helpers.cyrus import CyrusMurder, Node  # noqa: E402
from tests.helpers.cyrusstore import db_records, our_slave_on, switch_off_cyrus_slave  # noqa: E402
from tests.helpers.ourmaster import OurMaster  # noqa: E402

TIMEOUT = 1800.0
_APPLIED = re.compile(r"resync applied: (\d+) changes .* in (\d+) ms")


def _stamp(line: str) -> float:
    return datetime.fromisoformat(line.split()[0]).timestamp()


def cyrus_resync_seconds(murder: CyrusMurder, node: Node, since: int) -> float:
    """From the last ``scarfing`` to the next ``synchronization complete`` in its syslog."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        lines = (node.dir / "log" / "syslog.log").read_text(errors="replace").splitlines()[since:]
        start = [x for x in lines if "scarfing mailbox list" in x]
        done = [x for x in lines if "mailbox list synchronization complete" in x]
        if start and done:
            return _stamp(done[-1]) - _stamp(start[-1])
        time.sleep(0.2)  # noqa: TID251 - polling a log file, bounded by the deadline
    raise TimeoutError("Cyrus's slave did not log its sync")


def log_length(node: Node) -> int:
    path = node.dir / "log" / "syslog.log"
    return len(path.read_text(errors="replace").splitlines()) if path.exists() else 0


def our_resync_seconds(log: Path, count: int) -> tuple[float, int]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = _APPLIED.findall(log.read_text(errors="replace"))
        if len(found) >= count:
            changes, ms = found[count - 1]
            return int(ms) / 1000, int(changes)
        time.sleep(0.2)  # noqa: TID251 - polling a log file, bounded by the deadline
    raise TimeoutError(f"our slave did not log resync number {count}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write JSON lines here")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mupdate-bench-cyrus-store-", dir="/tmp"))
    murder = CyrusMurder(base, timeout=300)
    master = OurMaster(base / "our-master")
    rows: list[dict[str, object]] = []
    try:
        master.start()
        started = time.perf_counter()
        asyncio.run(populate(master.port, 0, args.entries))
        rows.append({"figure": "load_master", "seconds": round(time.perf_counter() - started, 2)})
        # Cyrus's own slave
        fc = murder.frontend("fc", mupdate=master.address, extra=["--no-debug", "--wait", "1"])
        first = cyrus_resync_seconds(murder, fc, 0)
        mark = log_length(fc)
        murder.stop(fc)
        murder.start(fc)
        again = cyrus_resync_seconds(murder, fc, mark)
        cyrus_count = len(db_records(fc))
        murder.stop(fc)
        # ours, on a frontend whose own slave is off
        fe = murder.frontend("fe", mupdate="127.0.0.1:1", extra=["--no-debug", "--wait", "1"])
        switch_off_cyrus_slave(murder, fe)
        slave = our_slave_on(fe, base / "our-slave", master_address=master.address, servername="fe")
        slave.start(timeout=TIMEOUT)
        ours_first, changes = our_resync_seconds(slave.log_path, 1)
        slave.stop()
        slave.start(timeout=TIMEOUT)
        ours_again, changes_again = our_resync_seconds(slave.log_path, 2)
        ours_count = len(db_records(fe))
        slave.stop()
        for label, cyrus, ours in (
            ("first_resync", first, ours_first),
            ("resync_unchanged", again, ours_again),
        ):
            rows.append(
                {
                    "figure": label,
                    "entries": args.entries,
                    "cyrus_seconds": round(cyrus, 2),
                    "ours_seconds": round(ours, 2),
                    "speedup": round(cyrus / ours, 2) if ours else None,
                }
            )
        rows.append({"figure": "records", "cyrus": cyrus_count, "ours": ours_count,
                     "ours_changes": [changes, changes_again]})  # fmt: skip
    finally:
        murder.stop_all()
        master.stop()
        shutil.rmtree(base, ignore_errors=True)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

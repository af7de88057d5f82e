"""bench/compare.py --quick runs against our master and a real Cyrus master, and reports.

Only the exit status and the shape of its JSON lines are checked: every scenario is there
and every figure has a number for both servers. No figure is compared with anything: the
benchmark's values are for people (bench/RESULTS.md), not for a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cyrus import cyrus_available

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {
    "write",
    "propagation",
    "fanout",
    "load",
    "memory",
    "dump_list",
    "dump_update",
    "find",
    "write_during_dump",
    "slave_resync",
}

pytestmark = pytest.mark.interop


def test_compare_quick_reports_every_figure_for_both_servers(tmp_path: Path) -> None:
    reason = cyrus_available()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "figures.jsonl"
    done = subprocess.run(
        [sys.executable, "bench/compare.py", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a bound on a hung run, not a figure
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    figures = [row for row in rows if "figure" in row]
    assert {row["scenario"] for row in figures} == SCENARIOS
    for row in figures:
        for server in ("ours", "cyrus"):
            assert isinstance(row[server], int | float), row
        assert row["better"] in ("higher", "lower", "info"), row
    write_clients = {row["params"] for row in figures if row["scenario"] == "write"}
    assert write_clients == {"clients=1", "clients=8", "clients=32"}
    assert "ratio > 1: ours better" in done.stdout  # --json also prints the table


@pytest.mark.parametrize(
    ("script", "args", "figures"),
    [
        (
            "bench/master_bench.py",
            ["--ops", "200", "--list-size", "300"],
            {"write_throughput", "list_dump", "update_dump"},
        ),
        (
            "bench/slave_bench.py",
            ["--size", "300", "--writes", "20"],
            {"first_resync", "resync_after_master_restart", "propagation_ok_to_slave_store"},
        ),
    ],
)
def test_our_own_benchmarks_run_small_and_report_every_figure(script, args, figures):
    """The issue notes quote these two scripts; a change to a log line or a reader must not
    leave them broken unnoticed (slave_bench's resync regex once was). Shape only."""
    done = subprocess.run(
        [sys.executable, script, *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a bound on a hung run, not a figure
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {row["figure"] for row in rows} == figures, done.stdout
    for row in rows:
        numbers = [v for k, v in row.items() if k != "figure"]
        assert numbers, row
        assert all(isinstance(v, int | float) and v >= 0 for v in numbers), row

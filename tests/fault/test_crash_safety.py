"""Crash safety (issue 7, item 1): SIGKILL our master and our slave at random moments.

The harness and the exact rules are in crashkill.py (also a script for a large N:
``python tests/fault/crashkill.py --kills 50``). CI runs a small N; MUPDATE_CRASH_KILLS and
MUPDATE_CRASH_SEED change it. Every wait is bounded; a failure message carries the run's
figures and every problem found (name, state found, state acknowledged, the write in flight).
"""

from __future__ import annotations

import os

from tests.fault.crashkill import MasterCrashRun, SlaveCrashRun

KILLS = int(os.environ.get("MUPDATE_CRASH_KILLS", "5"))
SEED = int(os.environ.get("MUPDATE_CRASH_SEED", "7"))
ENTRIES = 20_000  # the master's list for the slave runs: a resync long enough to land in


def test_master_sigkilled_under_concurrent_writes_keeps_every_acknowledged_write(tmp_path):
    report = MasterCrashRun(tmp_path, kills=KILLS, seed=SEED, writers=4, names_per_writer=20).run()
    figures = "\n".join(report.lines())
    assert not report.problems, figures
    assert report.kills == KILLS, figures
    # the load was real: every writer was answered in every round, RESERVED entries and
    # writes cut off by the kill were among what the restarts were checked against
    assert report.figures.ok >= 4 * KILLS, figures
    assert report.reserved_checked > 0, figures
    assert report.figures.in_flight_at_kill > 0, figures
    assert report.names_checked == KILLS * 4 * 20, figures


def test_slave_sigkilled_mid_resync_and_mid_stream_converges_to_the_master(tmp_path):
    report = SlaveCrashRun(
        tmp_path, seed=SEED, entries=ENTRIES, resync_kills=2, stream_kills=2
    ).run()
    figures = "\n".join(report.lines())
    assert not report.problems, figures
    assert (report.resync_kills, report.stream_kills) == (2, 2), figures
    assert report.phases["after 'resync applied'"] < report.resync_kills, figures
    assert len(report.converge_seconds) == 4, figures


def test_unified_slave_keeps_its_local_mailboxes_through_sigkills(tmp_path):
    report = SlaveCrashRun(
        tmp_path, seed=SEED + 1, entries=ENTRIES, resync_kills=2, stream_kills=2, unified=True
    ).run()
    figures = "\n".join(report.lines())
    assert not report.problems, figures  # includes "local mailboxes not kept"
    assert (report.resync_kills, report.stream_kills) == (2, 2), figures
    # the master deleted three local mailboxes and moved one; every resync after that
    # (and the streamed changes themselves) had to be refused by the guard
    assert report.guard_kept >= 4, figures

"""Suite-wide: with MUPDATE_TESTS_NO_SKIP=1 a skipped test fails instead.

`./run-tests` sets it when it could install everything (root, cyrus-murder present), so a
CI run can never pass with the Cyrus interop tests quietly skipped. A skip that is right
on such a machine too (a test that only means something for a non-root user, a test that
only applies when the Cyrus master is the one under test) says so by a reason listed here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

import pytest

# Reasons that are right even where everything is installed (substrings of the reason).
EXPECTED_SKIPS: Final = (
    "root reads any directory",  # permission tests that only a non-root user can run
    "root reads any file",
    "cannot speak TLS 1.0/1.1 at all",  # an OpenSSL built without them: nothing to refuse
    "the Cyrus master under test offers",  # MUPDATE_INTEROP_MASTER=cyrus: our list only
    "runs our master against Cyrus nodes",  # MUPDATE_INTEROP_MASTER=cyrus
)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("MUPDATE_TESTS_NO_SKIP") != "1" or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if any(expected in reason for expected in EXPECTED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped, but MUPDATE_TESTS_NO_SKIP=1 (./run-tests installed everything): {reason}"
    )

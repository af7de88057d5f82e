"""Fixtures for interop tests against real Cyrus 3.6 daemons (shared/interop/cyrus-murder).

Which master is under test: env MUPDATE_INTEROP_MASTER = `ours` (default),
`cyrus` (Cyrus's own `mupdate -m`, to validate the tests themselves) or
`both` (every module runs once per master). Module-scoped fixtures give one
topology per test module; teardown stops every node and our master.

Env MUPDATE_INTEROP_KEEP=1 keeps the node directories (under /tmp) after the
run; they are always kept when a test of the module failed, and the path is
printed in the failure report.

Skips (environment, not product): not root, Cyrus packages or cyrus-murder
missing. Our master missing is an error, not a skip.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.helpers.cyrus import (  # noqa: E402 - needs the path above
    CyrusMasterUnderTest,
    CyrusMurder,
    cyrus_available,
)
from tests.helpers.ourmaster import OurMaster, our_master_available  # noqa: E402
from tests.helpers.rawmupdate import MupdateClient  # noqa: E402

_MURDER_KEY = pytest.StashKey["CyrusMurder"]()
_MASTER_KEY = pytest.StashKey["OurMaster | CyrusMasterUnderTest"]()
_FAILED_KEY = pytest.StashKey[bool]()


def _selected_masters() -> list[str]:
    value = os.environ.get("MUPDATE_INTEROP_MASTER", "ours").strip().lower()
    if value == "both":
        return ["ours", "cyrus"]
    if value not in ("ours", "cyrus"):
        raise pytest.UsageError(
            f"MUPDATE_INTEROP_MASTER must be ours, cyrus or both, not {value!r}"
        )
    return [value]


@pytest.fixture(scope="session")
def cyrus_ready() -> None:
    reason = cyrus_available()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module", params=_selected_masters())
def master_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def murder(
    request: pytest.FixtureRequest, cyrus_ready: None, master_kind: str
) -> Iterator[CyrusMurder]:
    """One CyrusMurder per test module and master kind, under /tmp/mupdate-interop-<module>-<kind>-*.

    Teardown stops every node and tap it started; the directory is removed unless a test
    of the module failed or MUPDATE_INTEROP_KEEP=1."""
    modname = re.sub(r"[^A-Za-z0-9_-]", "_", request.module.__name__.rsplit(".", 1)[-1])
    base = Path(tempfile.mkdtemp(prefix=f"mupdate-interop-{modname}-{master_kind}-", dir="/tmp"))
    m = CyrusMurder(base)
    request.node.stash[_MURDER_KEY] = m
    request.node.stash[_FAILED_KEY] = False
    try:
        yield m
    finally:
        m.stop_all()
        failed = request.node.stash.get(_FAILED_KEY, False)
        if os.environ.get("MUPDATE_INTEROP_KEEP") != "1" and not failed:
            m.cleanup()


@pytest.fixture(scope="module")
def master_under_test(
    request: pytest.FixtureRequest, murder: CyrusMurder, master_kind: str
) -> Iterator[OurMaster | CyrusMasterUnderTest]:
    """The MUPDATE master the Cyrus nodes of this module talk to; started and stopped here."""
    master: OurMaster | CyrusMasterUnderTest
    if master_kind == "ours":
        reason = our_master_available()
        if reason:
            pytest.fail(f"cannot test our master: {reason}", pytrace=False)
        master = OurMaster(murder.base_dir / "our-master", port=murder.free_port())
    else:
        master = CyrusMasterUnderTest(murder)
    request.node.stash[_MASTER_KEY] = master
    try:
        master.start()
        yield master
    finally:
        master.stop()


@pytest.fixture
def mupdate_session(
    master_under_test: OurMaster | CyrusMasterUnderTest,
) -> Iterator[Callable[[], MupdateClient]]:
    """Factory of authenticated raw MUPDATE sessions to the master under test."""
    opened: list[MupdateClient] = []

    def connect() -> MupdateClient:
        c = MupdateClient.connect(master_under_test.host, master_under_test.port, timeout=15.0)
        opened.append(c)
        c.authenticate_plain(master_under_test.admin, master_under_test.password)
        return c

    yield connect
    for c in opened:
        c.logout()
        c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """On failure, attach the tap logs and the master's log tail to the report."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    module = item.getparent(pytest.Module)
    if module is None:
        return
    module.stash[_FAILED_KEY] = True
    m = module.stash.get(_MURDER_KEY, None)
    if m is not None:
        rep.sections.append(("interop node directories (kept)", str(m.base_dir)))
        for name, tap in m.taps.items():
            rep.sections.append(
                (f"tap {name} {tap.addr} -> {tap.to} (last lines)", tap.excerpt(last=120))
            )
    master = module.stash.get(_MASTER_KEY, None)
    if master is not None:
        rep.sections.append((f"{master.describe()} (log tail)", master.log_tail(80)))

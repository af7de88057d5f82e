"""Interop: ``mupdate-push`` from real Cyrus 3.6 backends (issue 5, protocol doc §10.3).

Topology (one per module; the master under test is chosen in conftest.py):

    be1 (Cyrus imapd, servername be1, partitions default + p2) --> master under test
    be2 (Cyrus imapd, servername be2)                          --> master under test
    be3 (Cyrus imapd, servername be3)  --> cyrus-m (a Cyrus ``mupdate -m`` of its own)

Mailboxes are made by IMAP CREATE (``unixhierarchysep: no``: IMAP names are the internal
names MUPDATE carries). The tool reads be1's mailboxes.db through ``cyr_dbtool`` with be1's
own imapd.conf, which also names the master and the credentials, exactly what
``ctl_mboxlist -C be1/imapd.conf -m`` uses. be3 and its private Cyrus master are where our
push and Cyrus's own ``ctl_mboxlist -m`` are run from the same start state and compared.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cyrus import CyrusMasterUnderTest, CyrusMurder, Node, repo_root
from tests.helpers.ourmaster import OurMaster
from tests.helpers.rawmupdate import Entry, MupdateClient

pytestmark = pytest.mark.interop

Master = OurMaster | CyrusMasterUnderTest
FULL = "lrswipkxtecdan"
ACTION_RX = re.compile(r"^(Force Activate|Remove from MUPDATE|Remove Local Mailbox): (.*)$")
SUMMARY_RX = re.compile(
    r"^mupdate-push: activated (\d+), deleted (\d+), conflicts (\d+), unchanged (\d+), "
    r"refused (\d+), skipped (\d+) in ([0-9.]+) s"
)
PROGRESS_RX = re.compile(r"^mupdate-push: [a-z -]+ \d+/\d+$")
EXTRA = 60  # mailboxes made in bulk, so the push has a list worth timing


# --------------------------------------------------------------- helpers


def acl(*pairs: tuple[str, str]) -> bytes:
    return "".join(f"{who}\t{rights}\t" for who, rights in pairs).encode()


def show(entries: Sequence[Entry]) -> str:
    return "\n".join(f"  {e.kind!r} {e.name!r} {e.location!r} {e.acl!r}" for e in entries)


def session(host: str, port: int) -> MupdateClient:
    c = MupdateClient.connect(host, port, timeout=15.0)
    c.authenticate_plain("admin", "secret")
    return c


def listing(host: str, port: int, prefix: str | None = None) -> list[Entry]:
    c = session(host, port)
    try:
        return c.list(prefix)
    finally:
        c.logout()
        c.close()


def write(host: str, port: int, *commands: tuple[str, ...]) -> None:
    c = session(host, port)
    try:
        for verb, *args in commands:
            r = c.command(verb, *args)
            assert r.ok, r.raw
    finally:
        c.logout()
        c.close()


def expected_entries(murder: CyrusMurder, node: Node) -> list[Entry]:
    """What `ctl_mboxlist -m` pushes for `node`: its real local mailboxes, in key order."""
    out = []
    for rec in murder.dump(node):
        mbtype = str(rec.get("mbtype", ""))
        if any(flag in mbtype for flag in "dirz") or "partition" not in rec:
            continue
        rights = rec.get("acl") or {}
        assert isinstance(rights, dict)
        out.append(
            Entry(
                b"MAILBOX",
                str(rec["name"]).encode(),
                f"{node.servername}!{rec['partition']}".encode(),
                acl(*((str(k), str(v)) for k, v in rights.items())),
            )
        )
    return out


def actions(stdout: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in map(ACTION_RX.match, stdout.splitlines()) if m]


def cyrus_actions(stdout: str) -> list[tuple[str, str]]:
    """`ctl_mboxlist -m -w` lines with its removals in key order: Cyrus queues them on a
    list head and prints them in reverse LIST order; ours come in LIST (key) order."""
    got = actions(stdout)
    removals = [a for a in got if a[0] == "Remove from MUPDATE"]
    return removals[::-1] + [a for a in got if a[0] != "Remove from MUPDATE"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def summary(self) -> dict[str, float]:
        for line in self.stdout.splitlines():
            m = SUMMARY_RX.match(line)
            if m:
                keys = ("activated", "deleted", "conflicts", "unchanged", "refused", "skipped")
                return {
                    **{k: int(v) for k, v in zip(keys, m.groups()[:6], strict=True)},
                    "seconds": float(m.group(7)),
                }
        raise AssertionError(f"no summary line:\n{self}")

    def __str__(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def run_push(node: Node, *args: str, timeout: float = 120.0) -> Run:
    """`mupdate-push --config <node>/imapd.conf --from-cyrus-db ARGS` as a subprocess."""
    return run_tool(
        "--config", str(node.dir / "imapd.conf"), "--from-cyrus-db", *args, timeout=timeout
    )


def run_tool(*args: str, timeout: float = 120.0, stdin: str = "") -> Run:
    root = repo_root()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PUSH_TEST_PW"] = "secret"
    argv = [sys.executable, "-m", "mupdate.tools.push", *args]
    started = time.monotonic()
    p = subprocess.run(
        argv,
        cwd=root,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - started)


def assert_ctl_clean(result: subprocess.CompletedProcess[str], what: str) -> None:
    out = result.stdout
    assert "fatal" not in out.lower(), f"{what}:\n{out}"
    assert "temporary failure" not in out, f"{what}:\n{out}"
    assert result.returncode == 0, f"{what}: exit {result.returncode}:\n{out}"


# --------------------------------------------------------------- topology


@dataclass
class Topology:
    murder: CyrusMurder
    master: Master
    be1: Node
    be2: Node

    def wipe_master(self) -> None:
        """The master loses its whole database: stop, delete the store, start."""
        m = self.master
        m.stop()
        if isinstance(m, OurMaster):
            shutil.rmtree(m.store_dir)  # start() makes it again
        else:
            assert m.node is not None
            self.murder.wipe_db(m.node)
        m.start()
        assert listing(m.host, m.port) == []

    def list(self, prefix: str | None = None) -> list[Entry]:
        return listing(self.master.host, self.master.port, prefix)

    def write(self, *commands: tuple[str, ...]) -> None:
        write(self.master.host, self.master.port, *commands)


def _make_mailboxes(murder: CyrusMurder, node: Node) -> None:
    murder.imap(
        node,
        ["create", "user.carol"],
        ["create", "user.carol.Sent"],
        ["create", "user.carol.a^b"],  # key order differs from byte order (§7.8)
        ["create", "user.carol-x"],
        ["create", "user.carol.onp2", "p2"],
        ["create", "user.carol.with space"],
        ["setacl", "user.carol", "bob", "lrs"],
        ["setacl", "user.carol.Sent", "-anyone", "p"],
        ["create", "user.carol.Drafts"],
        ["rename", "user.carol.Drafts", "user.carol.Archive"],  # master: `be1!` (§10.2)
        ["create", "user.carol.Trash"],
        ["xdelete", "user.carol.Trash"],  # delayed delete: DELETED.user.carol.Trash.<hex>
        ["create", "shared.news"],
    )
    murder.imap(node, *(["create", f"user.bulk{i:03d}"] for i in range(EXTRA)))


@pytest.fixture(scope="module")
def topo(murder: CyrusMurder, master_under_test: Master) -> Topology:
    p2 = murder.base_dir / "be1" / "spool" / "p2"  # made by cyrus-murder, owned by cyrus
    be1 = murder.backend(
        "be1",
        servername="be1",
        mupdate=master_under_test.address,
        extra=["--partition", f"p2={p2}"],
    )
    be2 = murder.backend("be2", servername="be2", mupdate=master_under_test.address)
    _make_mailboxes(murder, be1)
    # every node is stopped by the `murder` fixture (stop_all), the master by its fixture
    return Topology(murder, master_under_test, be1, be2)


# --------------------------------------------------------------- tests


def test_push_after_wipe_restores_exactly_be1(topo: Topology) -> None:
    expected = expected_entries(topo.murder, topo.be1)
    names = [e.name for e in expected]
    assert b"user.carol.Archive" in names
    assert any(n.startswith(b"DELETED.user.carol.Trash.") for n in names)
    assert len(expected) == EXTRA + 10  # 9 made above, and "shared" made as a parent
    # before: Cyrus registered the renamed/deleted ones at `be1!` (rename bug, §10.2)
    assert topo.list("be1!") != expected

    topo.wipe_master()
    run = run_push(topo.be1)
    assert run.returncode == 0, run
    assert topo.list("be1!") == expected, show(topo.list("be1!"))
    assert topo.list() == expected  # nothing else appeared
    counts = run.summary()
    assert counts["activated"] == len(expected)
    assert (counts["deleted"], counts["conflicts"], counts["unchanged"]) == (0, 0, 0)
    assert [a for a in actions(run.stdout) if a[0] != "Force Activate"] == []
    assert f"{len(expected)} local mailboxes from" in run.stderr
    print(
        f"\npush of {len(expected)} mailboxes after a wipe: {counts['seconds']:.2f} s "
        f"(process {run.seconds:.2f} s)"
    )

    # Cyrus agrees: its own dry run finds nothing to do
    dry = topo.murder.ctl(topo.be1, "-m", "-w")
    assert_ctl_clean(dry, "ctl_mboxlist -m -w")
    assert actions(dry.stdout) == [], dry.stdout
    # a second push changes nothing
    again = run_push(topo.be1)
    assert again.returncode == 0, again
    assert again.summary()["unchanged"] == len(expected)
    assert again.summary()["activated"] == 0

    # and Cyrus's own ctl_mboxlist -m from the same wiped start gives the same LIST
    topo.wipe_master()
    assert_ctl_clean(topo.murder.ctl(topo.be1, "-m"), "ctl_mboxlist -m")
    assert topo.list() == expected, show(topo.list())


def test_dry_run_changes_nothing_and_prints_what_cyrus_would(topo: Topology) -> None:
    agree = run_push(topo.be1)  # start in agreement
    assert agree.returncode == 0, agree
    topo.write(
        ("DELETE", "user.carol"),
        ("DELETE", "user.bulk007"),
        ("ACTIVATE", "user.carol-x", "be1!default", "carol-x\tlr\t"),  # ACL differs
        ("ACTIVATE", "user.carol.onp2", "be1!default", acl(("carol", FULL)).decode()),  # part
        ("ACTIVATE", "user.ghost", "be1!default", "ghost\tlrs\t"),  # be1 lacks it
        ("RESERVE", "user.ghost2", "be1!default"),
    )
    before = topo.list()
    run = run_push(topo.be1, "--dry-run")
    assert run.returncode == 0, run
    assert topo.list() == before
    expected = [
        ("Remove from MUPDATE", "user.ghost"),
        ("Remove from MUPDATE", "user.ghost2"),
        ("Force Activate", "user.bulk007"),
        ("Force Activate", "user.carol"),
        ("Force Activate", "user.carol.onp2"),
        ("Force Activate", "user.carol-x"),
    ]
    assert actions(run.stdout) == expected, run
    assert "(dry run, nothing changed)" in run.stdout
    # Cyrus's own dry run proposes exactly the same steps
    cyrus = topo.murder.ctl(topo.be1, "-m", "-w")
    assert_ctl_clean(cyrus, "ctl_mboxlist -m -w")
    assert cyrus_actions(cyrus.stdout) == expected, cyrus.stdout

    # JSON: one object per step, the summary last
    js = run_push(topo.be1, "--dry-run", "--json")
    assert js.returncode == 0, js
    import json

    records = [json.loads(line) for line in js.stdout.splitlines()]
    assert [(r["action"], r["name"]) for r in records[:-1]] == [
        ("delete" if a.startswith("Remove") else "activate", n) for a, n in expected
    ]
    assert records[3]["reason"] == "missing"
    assert records[4]["reason"] == "location"
    assert records[5]["reason"] == "acl"
    assert records[-1]["summary"]["dry_run"] is True
    assert topo.list() == before

    real = run_push(topo.be1)
    assert real.returncode == 0, real
    assert (real.summary()["activated"], real.summary()["deleted"]) == (4, 2)
    assert topo.list() == expected_entries(topo.murder, topo.be1)


def test_conflict_with_be2_is_reported_then_taken(topo: Topology) -> None:
    topo.murder.imap(topo.be1, ["create", "user.dup"], ["setacl", "user.dup", "bob", "lr"])
    topo.write(("DELETE", "user.dup"))  # the master forgets it; be2 may now create it
    topo.murder.imap(topo.be2, ["create", "user.dup"])
    at_be2 = Entry(b"MAILBOX", b"user.dup", b"be2!default", acl(("dup", FULL)))
    assert listing(topo.master.host, topo.master.port, "be2!") == [at_be2]

    run = run_push(topo.be1)
    assert run.returncode == 7, run
    assert "Conflict: user.dup is at be2!default" in run.stdout.splitlines(), run
    assert run.summary()["conflicts"] == 1
    c = session(topo.master.host, topo.master.port)
    try:
        assert c.find("user.dup") == at_be2  # not overwritten
    finally:
        c.logout()
        c.close()

    taken = run_push(topo.be1, "--take", "user.dup")
    assert taken.returncode == 0, taken
    lines = taken.stdout.splitlines()
    assert lines[:2] == ["Take: user.dup from be2!default", "Force Activate: user.dup"], taken
    mine = Entry(b"MAILBOX", b"user.dup", b"be1!default", acl(("dup", FULL), ("bob", "lr")))
    assert [e for e in topo.list() if e.name == b"user.dup"] == [mine]
    # clean up: be1 deletes its copy (DELETE, then DELETED.user.dup.<hex> at be1!), and the
    # master gets be2's entry back, so neither backend's push sees a conflict any more
    topo.murder.imap(topo.be1, ["xdelete", "user.dup"])
    topo.write(("ACTIVATE", "user.dup", "be2!default", acl(("dup", FULL)).decode()))


def test_mass_delete_brake_stops_before_changing_anything(topo: Topology) -> None:
    agree = run_push(topo.be1)
    assert agree.returncode == 0, agree
    ghosts = [f"user.ghost{i:03d}" for i in range(EXTRA + 20)]
    topo.write(*(("ACTIVATE", g, "be1!default", "x\tlrs\t") for g in ghosts))
    topo.write(("DELETE", "user.carol"))  # one activation that must not happen either
    before = topo.list()
    dry = run_push(topo.be1, "--dry-run")
    assert dry.returncode == 6, dry
    assert "a real run would stop" in dry.stderr, dry
    run = run_push(topo.be1)
    assert run.returncode == 6, run
    assert "--force" in run.stderr, run
    assert topo.list() == before
    assert sum(1 for a in actions(run.stdout) if a[0] == "Remove from MUPDATE") == len(ghosts)
    forced = run_push(topo.be1, "--force")
    assert forced.returncode == 0, forced
    assert forced.summary()["deleted"] == len(ghosts)
    assert topo.list("be1!") == expected_entries(topo.murder, topo.be1)


def progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if PROGRESS_RX.match(line)]


def test_progress_on_stderr_and_the_summary_line(topo: Topology) -> None:
    """--progress (stderr is a pipe here, not a terminal) every --progress-every steps and at
    the last one, per phase; without --progress a pipe gets no progress lines."""
    expected = expected_entries(topo.murder, topo.be1)
    total = len(expected)
    assert total > 50  # the bulk mailboxes: several progress lines per phase
    topo.wipe_master()

    quiet = run_push(topo.be1, "--dry-run", "--progress-every", "1")
    assert quiet.returncode == 0, quiet
    assert progress_lines(quiet.stderr) == []  # 1 line per FIND if it were on
    assert quiet.summary()["activated"] == total

    dry = run_push(topo.be1, "--dry-run", "--progress", "--progress-every", "25")
    assert dry.returncode == 0, dry
    steps = [*range(25, total, 25), total]
    assert progress_lines(dry.stderr) == [f"mupdate-push: finding {n}/{total}" for n in steps]
    assert dry.stdout.splitlines()[-1].startswith(
        f"mupdate-push: activated {total}, deleted 0, conflicts 0, unchanged 0, refused 0, "
        "skipped 0 in "
    )
    assert dry.stdout.splitlines()[-1].endswith(" s (dry run, nothing changed)")
    assert topo.list() == []

    real = run_push(topo.be1, "--progress", "--progress-every", "30")
    assert real.returncode == 0, real
    steps = [*range(30, total, 30), total]
    assert progress_lines(real.stderr) == [
        *(f"mupdate-push: finding {n}/{total}" for n in steps),
        *(f"mupdate-push: activating {n}/{total}" for n in steps),
    ]
    # the rest of stderr: the source line, nothing else
    others = [line for line in real.stderr.splitlines() if not PROGRESS_RX.match(line)]
    assert len(others) == 1, real
    assert others[0].startswith(f"mupdate-push: {total} local mailboxes from "), real
    summary = real.stdout.splitlines()[-1]
    assert SUMMARY_RX.match(summary), real
    assert summary.startswith(
        f"mupdate-push: activated {total}, deleted 0, conflicts 0, unchanged 0, refused 0, "
        "skipped 0 in "
    )
    assert "(dry run" not in summary
    assert real.summary()["seconds"] <= real.seconds
    assert topo.list() == expected


# ------------------------------------------- same end state as Cyrus's own ctl_mboxlist -m


@dataclass
class CyrusSide:
    master: Node
    be3: Node


@pytest.fixture(scope="module")
def cyrus_side(topo: Topology) -> CyrusSide:
    m = topo.murder.master("cyrus-m", servername="cyrus-m")
    be3 = topo.murder.backend("be3", servername="be3", mupdate=m.mupdate_addr)
    topo.murder.imap(
        be3,
        ["create", "user.dora"],
        ["create", "user.dora.a^b"],
        ["create", "user.dora-x"],
        ["create", "user.dora.Sent"],
        ["create", "user.dora.Drafts"],
        ["rename", "user.dora.Drafts", "user.dora.Old"],
        ["create", "user.dora.elsewhere"],
        ["setacl", "user.dora", "eve", "lr"],
    )
    return CyrusSide(m, be3)  # stopped with everything else by the murder fixture


def _perturbed(topo: Topology, side: CyrusSide) -> list[Entry]:
    """Wipe the Cyrus master, push be3 with Cyrus's tool, then make the master disagree."""
    host, port = "127.0.0.1", side.master.mupdate_port
    topo.murder.stop(side.master)
    topo.murder.wipe_db(side.master)
    topo.murder.start(side.master)
    assert_ctl_clean(topo.murder.ctl(side.be3, "-m"), "ctl_mboxlist -m on be3")
    write(
        host,
        port,
        ("DELETE", "user.dora"),
        ("ACTIVATE", "user.dora-x", "be3!default", "dora-x\tl\t"),
        ("RESERVE", "user.dora.Sent", "be3!default"),  # Cyrus demotes it (§7.1)
        ("ACTIVATE", "user.ghost", "be3!default", "g\tlrs\t"),
        ("ACTIVATE", "user.dora.elsewhere", "be9!default", "z\tl\t"),  # a conflict
    )
    return listing(host, port)


def test_same_end_state_as_cyrus_ctl_mboxlist_m_a_against_a_cyrus_master(
    topo: Topology, cyrus_side: CyrusSide
) -> None:
    host, port = "127.0.0.1", cyrus_side.master.mupdate_port
    start = _perturbed(topo, cyrus_side)
    assert_ctl_clean(topo.murder.ctl(cyrus_side.be3, "-m", "-a"), "ctl_mboxlist -m -a")
    cyrus_end = listing(host, port)
    assert cyrus_end != start

    assert _perturbed(topo, cyrus_side) == start
    run = run_push(cyrus_side.be3, "--authoritative")
    assert run.returncode == 0, run
    assert listing(host, port) == cyrus_end, (
        f"ours:\n{show(listing(host, port))}\nCyrus:\n{show(cyrus_end)}\n{run}"
    )
    assert cyrus_end == expected_entries(topo.murder, cyrus_side.be3)


def test_same_end_state_as_cyrus_ctl_mboxlist_m_without_conflicts(
    topo: Topology, cyrus_side: CyrusSide
) -> None:
    """Default mode: equal to Cyrus's `-m` where Cyrus would not delete a local mailbox;
    the conflicting name is left at be9 (Cyrus -m would delete it on be3 instead)."""
    host, port = "127.0.0.1", cyrus_side.master.mupdate_port
    _perturbed(topo, cyrus_side)
    run = run_push(cyrus_side.be3)
    assert run.returncode == 7, run
    assert "Conflict: user.dora.elsewhere is at be9!default" in run.stdout
    ours = listing(host, port)
    conflict = Entry(b"MAILBOX", b"user.dora.elsewhere", b"be9!default", b"z\tl\t")
    expected = [
        conflict if e.name == b"user.dora.elsewhere" else e
        for e in expected_entries(topo.murder, cyrus_side.be3)
    ]
    assert ours == expected, show(ours)
    # Cyrus's own -m from here would only remove the local copy of the conflicting name
    dry = topo.murder.ctl(cyrus_side.be3, "-m", "-w")
    assert_ctl_clean(dry, "ctl_mboxlist -m -w")
    assert actions(dry.stdout) == [("Remove Local Mailbox", "user.dora.elsewhere")], dry.stdout
    assert Path(cyrus_side.be3.dir).is_dir()


# ------------------------------------------------------------- errors: one line, exit code


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--from-dump", "-"], 2, "no servername"),
        (["--servername", "be1", "--from-dump", "/nonexistent.json"], 2, "no dump file"),
        (["--servername", "be1", "--from-partitions", "bad"], 2, "NAME=PATH"),
        (["--servername", "be1", "--from-cyrus-db"], 2, "needs the backend's imapd.conf"),
        (["--servername", "b!x", "--from-dump", "-"], 2, "servername"),
        (["--servername", "be1", "--from-dump", "-", "--server", "127.0.0.1:1"], 4, "cannot reach"),
    ],
)
def test_errors_are_one_clear_line(args: list[str], code: int, message: str) -> None:
    run = run_tool("--user", "admin", "--password-env", "PUSH_TEST_PW", *args, timeout=60)
    assert run.returncode == code, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("mupdate-push: "), run
    assert message in lines[0], run
    assert "Traceback" not in run.stderr


def test_dump_from_stdin_and_refused_login(topo: Topology) -> None:
    """`ctl_mboxlist -d` JSON on stdin; a wrong password is exit 5."""
    import json

    dump = json.dumps({rec.pop("name"): rec for rec in topo.murder.dump(topo.be1)})
    ok = run_tool(
        "--server",
        topo.master.address,
        "--user",
        "admin",
        "--password-env",
        "PUSH_TEST_PW",
        "--servername",
        "be1",
        "--from-dump",
        "-",
        "--dry-run",
        stdin=dump,
    )
    assert ok.returncode == 0, ok
    assert "local mailboxes from stdin" in ok.stderr
    bad = run_tool(
        "--server",
        topo.master.address,
        "--user",
        "admin",
        "--password-env",
        "HOME",
        "--servername",
        "be1",
        "--from-dump",
        "-",
        stdin=dump,
    )
    assert bad.returncode == 5, bad
    assert len(bad.stderr.strip().splitlines()) == 1, bad

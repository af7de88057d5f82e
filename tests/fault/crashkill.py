"""Crash safety: SIGKILL our master under concurrent writes, our slave mid-resync and mid-stream.

Issue 7, item 1; what is promised is design.md "Master / Durability" and "Slave". Usable as a
module (tests/fault/test_crash_safety.py runs a small N) and as a script printing figures:

    python tests/fault/crashkill.py --kills 50 --seed 1

Master (``MasterCrashRun``). Our master runs as a real ``twistd mupdate-master`` on 127.0.0.1.
Several writer threads, each with its own connection and its OWN set of mailbox names, send
RESERVE / ACTIVATE / DEACTIVATE / DELETE with varying locations and ACLs (ACLs carry a
sequence number, so a stale state cannot pass for the current one). Each writer waits for
the answer before its next command, so per name it knows the last acknowledged state
exactly. At a random moment (seeded; a bounded ``Event.wait(random timeout)`` on the harness
side) the master gets SIGKILL; it is restarted and checked, N times. The rule, per name:

* the state the name must show after the restart is the one produced by the writes
  acknowledged before the kill: an OK applies the write as the master's rules do
  (rules.py: RESERVE at the same location is unchanged, DEACTIVATE of an ACTIVE entry makes
  it RESERVED at the given location without ACL, ...), a NO changes nothing;
* a name whose last acknowledged write was DELETE must be absent;
* the one exception is the write that was in flight when the kill came (sent, no answer):
  each writer has at most one, on one name. That name may show either the acknowledged
  state or the state that write would have produced on top of it, nothing else (a DELETE
  followed by an unanswered RESERVE may thus show the RESERVE; an acknowledged ACTIVATE
  followed by an unanswered DELETE may show the entry or nothing). The check sees which one
  happened and the model adopts it;
* no other name exists (nobody else writes); RESERVED entries are compared like any other;
* tombstones: a DELETE of an absent name is predicted OK only if the model deleted it
  before (24 h window), so the next round's answers check that tombstones survived too;
* every answer during the load must be the one the model predicts (OK or NO);
* ``mupdate-admin verify`` exits 0 on the crash image (a copy of the database files exactly
  as SIGKILL left them, so the tool cannot checkpoint the WAL before the master recovers it)
  and on the live database after the restart.

Slave (``SlaveCrashRun``). Our master holds a large list (20,000 entries by default, imported
with ``mupdate-admin import``); our slave follows it. Kills:

* mid-resync: the master's list is changed wholesale (a new ACL on every entry, some names
  gone, some new) while the slave is down; the slave is started, and once the master logs
  ``streaming N entries`` for it, it is killed after a random delay aimed at one part of
  the resync, counted from the log line that starts it and drawn within the shortest time
  that part has taken so far (measured first on a throw-away slave, then on every restart):
  the dump arriving (from the master's ``streaming``), planning (from the slave's
  ``reconciling``) or the one store transaction (from ``applying N resync changes``).
  Where the kill landed is read back from the slave's log: during the dump / while
  planning / in the store transaction / after ``resync applied``. The first cycle kills a
  fresh (empty) slave in its first resync;
* mid-stream: writer threads (as above) write to the master while the slave follows; the
  slave is killed at a random moment, the writes go on, the slave is restarted, then the
  writes stop.

After each restart: ``resync applied`` appears in the slave's log (time to recover is
SIGKILL to that line), its LIST converges to the master's LIST (bounded polling), and the
slave's database (a copy of the crash image) passes ``mupdate-admin verify``. In unified mode
(servername ``be1``, a partition with ``cyrus.header`` files, healing off so the master keeps
lacking what it lost) the master first deletes some local mailboxes and relocates one to
another server; the guard must keep all of them, exactly as they were, through every kill:
the expected slave list is the master's list with the local entries laid over it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root must be importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers.cyrus import repo_root
from tests.helpers.ourmaster import OurMaster, _env, _twistd
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import Entry, MupdateClient, MupdateError

MAILBOX, RESERVE = b"MAILBOX", b"RESERVE"
_NEVER = threading.Event()  # never set: ``_pause`` is a bounded wait, not a sleep on the SUT


def _pause(seconds: float) -> None:
    _NEVER.wait(max(0.0, seconds))


def login(node: OurMaster, timeout: float = 60.0) -> MupdateClient:
    c = MupdateClient.connect(node.host, node.port, timeout=timeout)
    c.authenticate_plain(node.admin, node.password)
    return c


def listed(node: OurMaster) -> dict[bytes, Entry]:
    with login(node) as c:
        return {e.name: e for e in c.list()}


# ------------------------------------------------------------------ the model of one name


@dataclass(frozen=True)
class Write:
    verb: bytes
    name: bytes
    location: bytes = b""
    acl: bytes = b""

    def args(self) -> tuple[bytes, ...]:
        if self.verb == b"DELETE":
            return (self.name,)
        if self.verb == b"ACTIVATE":
            return (self.name, self.location, self.acl)
        return (self.name, self.location)

    def __str__(self) -> str:
        return " ".join(repr(a)[1:] for a in (self.verb, *self.args()))


def predict(entry: Entry | None, tomb: bool, w: Write) -> tuple[bool, Entry | None, bool]:
    """(answered OK?, entry after, tombstone after): the master's rules (rules.py, design.md)."""
    if w.verb == b"RESERVE":
        if entry is None:
            return True, Entry(RESERVE, w.name, w.location, None), False
        return (entry.location == w.location), entry, tomb
    if w.verb == b"ACTIVATE":
        return True, Entry(MAILBOX, w.name, w.location, w.acl), False
    if w.verb == b"DEACTIVATE":
        if entry is None:
            return False, None, tomb
        if entry.kind == MAILBOX:
            return True, Entry(RESERVE, w.name, w.location, None), False
        return (entry.location == w.location), entry, tomb
    if w.verb == b"DELETE":
        if entry is not None:
            return True, None, True
        return tomb, None, tomb
    raise ValueError(f"not a write: {w}")


def show(entry: Entry | None) -> str:
    if entry is None:
        return "absent"
    acl = "" if entry.acl is None else f" {entry.acl!r}"
    return f"{entry.kind.decode()} {entry.location!r}{acl}"


@dataclass
class Mailbox:
    name: bytes
    entry: Entry | None = None
    tomb: bool = False
    last_ack: str = "none yet"
    unknown: bool = False  # an answer contradicted the model: the next check adopts the truth


# ------------------------------------------------------------------ writers


@dataclass
class Figures:
    ok: int = 0  # writes answered OK (acknowledged and applied)
    no: int = 0  # writes answered NO, as predicted (acknowledged, nothing changed)
    in_flight_at_kill: int = 0
    in_flight_committed: int = 0
    in_flight_lost: int = 0  # allowed: never acknowledged
    in_flight_indistinct: int = 0  # the write changed nothing either way


class Writer:
    """One client thread's names and model; ``run`` is one connection's life (one round)."""

    def __init__(self, ident: str, seed: int, names: int, servers: tuple[str, ...]) -> None:
        self.ident = ident
        self.rng = random.Random(seed)
        self.servers = servers
        self.boxes = {n: Mailbox(n) for n in self._names(names)}
        self.pending: Write | None = None
        self.seq = 0
        self.figures = Figures()
        self.failures: list[str] = []
        self.round_answers = 0
        self.answered = threading.Event()  # at least one answer this round

    def _names(self, count: int) -> Iterator[bytes]:
        w = self.ident
        forms = (
            "user.{w}.n{i}",
            "example.com!user.{w}n{i}",
            "user.{w}.Sent Items{i}",
            "user.{w}.d^o^t{i}",
            "shared.{w}.\u00e4\u00f6{i}",
        )
        for i in range(count):
            yield forms[i % len(forms)].format(w=w, i=i).encode()

    def _location(self, same: Entry | None, move: bool) -> bytes:
        if same is not None and not move:
            return same.location
        server = self.rng.choice(self.servers)
        return f"{server}!{self.rng.choice(('default', 'p1', 'part-2'))}".encode()

    def _acl(self) -> bytes:
        self.seq += 1
        owner = f"{self.ident}o{self.seq}"
        return self.rng.choice(
            (
                f"{owner}\tlrswipkxtecdan\t",
                f"{owner}\tlrs\tanyone\tr\t",
                f"anyone rls {self.seq}",  # not tab-separated pairs: stored byte for byte
                f"{owner}\tlrs\t\u00e9t\u00e9\tlr\t",
            )
        ).encode()

    def pick(self) -> Write:
        box = self.boxes[self.rng.choice(list(self.boxes))]
        e, r, name = box.entry, self.rng.random(), box.name
        if e is None:
            if r < 0.5:
                return Write(b"RESERVE", name, self._location(None, True))
            if r < 0.9:
                return Write(b"ACTIVATE", name, self._location(None, True), self._acl())
            return Write(b"DELETE", name)  # OK when the tombstone is there, else NO
        if e.kind == RESERVE:
            table = (
                (0.45, lambda: Write(b"ACTIVATE", name, e.location, self._acl())),
                (0.55, lambda: Write(b"ACTIVATE", name, self._location(e, True), self._acl())),
                (0.65, lambda: Write(b"RESERVE", name, e.location)),  # unchanged
                (0.70, lambda: Write(b"RESERVE", name, self._location(e, True))),
                (0.75, lambda: Write(b"DEACTIVATE", name, e.location)),  # unchanged
                (0.78, lambda: Write(b"DEACTIVATE", name, self._location(e, True))),
            )
        else:
            table = (
                (0.30, lambda: Write(b"ACTIVATE", name, e.location, self._acl())),
                (0.40, lambda: Write(b"ACTIVATE", name, self._location(e, True), self._acl())),
                (0.50, lambda: Write(b"DEACTIVATE", name, e.location)),
                (0.60, lambda: Write(b"DEACTIVATE", name, self._location(e, True))),
                (0.68, lambda: Write(b"RESERVE", name, e.location)),  # unchanged, stays ACTIVE
                (0.72, lambda: Write(b"RESERVE", name, self._location(e, True))),
            )
        for bound, make in table:
            if r < bound:
                return make()
        return Write(b"DELETE", name)

    def run(self, node: OurMaster, stop: threading.Event) -> None:
        """Write until ``stop`` or until the connection dies (the kill)."""
        self.round_answers = 0
        self.answered.clear()
        try:
            c = login(node, timeout=30.0)
        except (OSError, MupdateError):
            return  # killed before this writer got in: the harness waits for answers
        with c:
            while not stop.is_set():
                w = self.pick()
                self.pending = w
                try:
                    result = c.command(w.verb, *w.args())
                except (OSError, MupdateError):
                    return  # in flight at the kill: ``pending`` stays for the check
                self.pending = None
                self._answered(w, result.status.kind if result.status else b"?", result.raw)

    def _answered(self, w: Write, kind: bytes, raw: bytes) -> None:
        box = self.boxes[w.name]
        ok, entry, tomb = predict(box.entry, box.tomb, w)
        self.round_answers += 1
        self.answered.set()
        if box.unknown:
            return  # waiting for the next check to tell the truth
        if kind not in (b"OK", b"NO") or (kind == b"OK") != ok:
            self.failures.append(
                f"{w} answered {raw!r}, expected {'OK' if ok else 'NO'} "
                f"(model: {show(box.entry)}, tombstone {box.tomb}; last acknowledged: "
                f"{box.last_ack})"
            )
            box.unknown = True
            return
        if ok:
            self.figures.ok += 1
            box.entry, box.tomb = entry, tomb
            box.last_ack = f"{w} -> OK"
        else:
            self.figures.no += 1

    def check(self, stored: dict[bytes, Entry], when: str) -> tuple[int, int, list[str]]:
        """Compare the restarted master's LIST with the model; (names, reserved, problems).

        Takes this writer's names out of ``stored``; resolves the in-flight write."""
        problems: list[str] = []
        checked = reserved = 0
        pending, self.pending = self.pending, None
        if pending is not None:
            self.figures.in_flight_at_kill += 1
        for name, box in self.boxes.items():
            got = stored.pop(name, None)
            checked += 1
            if box.unknown:
                box.entry, box.tomb, box.unknown = got, got is None and box.tomb, False
                continue
            allowed = [(box.entry, box.tomb, "acknowledged")]
            if pending is not None and pending.name == name:
                ok, entry, tomb = predict(box.entry, box.tomb, pending)
                if ok and entry != box.entry:
                    allowed.append((entry, tomb, "in flight"))
                else:
                    self.figures.in_flight_indistinct += 1
            match = [a for a in allowed if a[0] == got]
            if not match:
                flight = f"; in flight: {pending}" if pending and pending.name == name else ""
                problems.append(
                    f"{when}: {name!r} is {show(got)}, acknowledged state {show(box.entry)} "
                    f"(last acknowledged write: {box.last_ack}{flight})"
                )
                box.entry, box.tomb = got, box.tomb and got is None
                continue
            entry, tomb, why = match[0]
            if pending is not None and pending.name == name and len(allowed) == 2:
                if why == "in flight":
                    self.figures.in_flight_committed += 1
                    box.last_ack = f"{pending} (in flight at a kill, found committed)"
                else:
                    self.figures.in_flight_lost += 1
            box.entry, box.tomb = entry, tomb
            reserved += got is not None and got.kind == RESERVE
        return checked, reserved, problems


class Load:
    """Writer threads for one round: ``start``, ``wait_flowing``, then a kill or ``stop``."""

    def __init__(self, writers: list[Writer], node: OurMaster) -> None:
        self.writers = writers
        self.node = node
        self.stop_event = threading.Event()
        self.threads = [
            threading.Thread(target=w.run, args=(node, self.stop_event), name=w.ident, daemon=True)
            for w in writers
        ]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def wait_flowing(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for w in self.writers:
            if not w.answered.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"writer {w.ident} got no answer within {timeout} s")

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop (or collect after a kill); the names of threads that did not end."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


# ------------------------------------------------------------------ processes and tools


def sigkill(node: OurMaster) -> float:
    """SIGKILL the node's twistd (only the process we started); returns the kill time."""
    proc = node.proc
    if proc is None or proc.poll() is not None:
        raise AssertionError(f"{node.describe()} is not running")
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(timeout=30)
    node.proc = None
    return killed


def spawn(node: OurMaster) -> int:
    """Start the node's twistd without waiting for its greeting (``OurMaster.start``'s
    command line); returns the log offset where this run's lines begin."""
    assert node.proc is None or node.proc.poll() is not None
    node.configure()
    argv = [
        *_twistd(),
        "-n",
        "--pidfile=",
        node.plugin,
        "--config",
        str(node.config_path),
        "--port",
        f"tcp:{node.port}:interface={node.host}",
    ]
    offset = node.log_path.stat().st_size if node.log_path.exists() else 0
    with open(node.log_path, "ab") as log:
        log.write(f"---- start {' '.join(argv)}\n".encode())
        log.flush()
        node.proc = subprocess.Popen(
            argv,
            cwd=node.root,
            env=_env(node.root),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return offset


def wait_ready(node: OurMaster, timeout: float = 60.0) -> None:
    node._wait_ready(timeout)


def log_since(node: OurMaster, offset: int) -> str:
    with open(node.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def wait_log(node: OurMaster, offset: int, pattern: str, timeout: float) -> re.Match[str]:
    """Bounded polling of the node's log (after ``offset``) for ``pattern``."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        found = regex.search(log_since(node, offset))
        if found:
            return found
        if node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"{node.describe()} exited while waiting for {pattern!r}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no {pattern!r} in {node.describe()} within {timeout} s:\n" + node.log_tail()
            )
        _pause(0.002)


def admin(config: Path, *args: str, data_dir: Path | None = None, stdin: str | None = None):
    argv = [sys.executable, "-m", "mupdate.tools.admin", "--config", str(config)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    return subprocess.run(
        [*argv, *args],
        cwd=repo_root(),
        env=_env(repo_root()),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_crash_image(database: Path, scratch: Path) -> Path:
    """Copy the database files exactly as the kill left them (``verify`` on the original
    would checkpoint the WAL before the restarted process recovers it)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for suffix in ("", "-wal", "-shm"):
        src = database.with_name(database.name + suffix)
        if src.exists():
            shutil.copy2(src, scratch / ("mupdate.sqlite3" + suffix))
    return scratch


def verify_copy(scratch: Path) -> str | None:
    """``mupdate-admin verify`` on a crash image copy; None when it exits 0."""
    config = scratch / "verify.conf"
    config.write_text(f"configdirectory: {scratch}\nadmins: admin\n")
    done = admin(config, "verify")
    if done.returncode != 0:
        return f"verify exited {done.returncode}: {done.stdout}{done.stderr}".strip()
    return None


def verify_live(node: OurMaster) -> str | None:
    done = admin(node.config_path, "verify")
    if done.returncode != 0:
        return f"verify exited {done.returncode}: {done.stdout}{done.stderr}".strip()
    return None


_ERROR_LINE = re.compile(r"Traceback|Unhandled|#critical\]")


def log_errors(node: OurMaster) -> list[str]:
    """Tracebacks and critical lines in the node's log (a finding, whatever the checks say)."""
    try:
        lines = node.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if _ERROR_LINE.search(line)]


# ------------------------------------------------------------------ the master under kills


@dataclass
class MasterReport:
    seed: int
    kills: int = 0
    writers: int = 0
    names: int = 0
    figures: Figures = field(default_factory=Figures)
    names_checked: int = 0
    reserved_checked: int = 0
    recover_seconds: list[float] = field(default_factory=list)
    kill_delays: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        f = self.figures
        rec = self.recover_seconds or [0.0]
        return [
            f"master: {self.kills} SIGKILLs (seed {self.seed}), {self.writers} writer threads, "
            f"{self.names} names",
            f"  acknowledged writes checked: {f.ok + f.no} ({f.ok} OK, {f.no} NO as predicted)",
            f"  name states compared after restarts: {self.names_checked} "
            f"({self.reserved_checked} RESERVED)",
            f"  writes in flight at a kill: {f.in_flight_at_kill} ({f.in_flight_committed} found "
            f"committed, {f.in_flight_lost} not, {f.in_flight_indistinct} changed nothing "
            "either way)",
            f"  restart to first LIST: max {max(rec):.3f} s, mean {sum(rec) / len(rec):.3f} s",
            f"  problems: {len(self.problems)}",
            *(f"    {p}" for p in self.problems[:40]),
        ]


class MasterCrashRun:
    def __init__(
        self,
        workdir: Path,
        *,
        kills: int,
        seed: int,
        writers: int = 4,
        names_per_writer: int = 20,
        max_delay: float = 0.5,
        say: Callable[[str], None] = lambda s: None,
    ) -> None:
        self.workdir = workdir
        self.kills = kills
        self.seed = seed
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.say = say
        self.master = OurMaster(workdir / "master", servername="crash-master")
        self.writers = [
            Writer(f"w{i}", seed * 1000 + i, names_per_writer, (f"be{i}", f"be{i}x"))
            for i in range(writers)
        ]
        self.report = MasterReport(seed, writers=writers, names=writers * names_per_writer)

    def run(self) -> MasterReport:
        self.master.start(timeout=60)
        try:
            for k in range(1, self.kills + 1):
                self._round(k)
            self.master.stop()
            problem = verify_live(self.master)
            if problem:
                self.report.problems.append(f"after the last clean stop: {problem}")
        finally:
            self.master.stop()
        self.report.problems += [f"master log: {line}" for line in log_errors(self.master)]
        return self.report

    def _round(self, k: int) -> None:
        load = Load(self.writers, self.master).start()
        try:
            load.wait_flowing()
            delay = self.rng.uniform(0.0, self.max_delay)
            self.report.kill_delays.append(delay)
            _pause(delay)
        finally:
            sigkill(self.master)
        self.report.kills += 1
        hung = load.stop()
        if hung:
            raise AssertionError(f"kill {k}: writer threads {hung} did not end after the kill")
        image = copy_crash_image(
            self.master.store_dir / "mupdate.sqlite3", self.workdir / "crash-image"
        )
        started = time.monotonic()
        self.master.start(timeout=60)
        stored = listed(self.master)
        self.report.recover_seconds.append(time.monotonic() - started)
        when = f"kill {k}"
        problem = verify_copy(image)
        if problem:
            self.report.problems.append(f"{when}: crash image: {problem}")
        for w in self.writers:
            checked, reserved, problems = w.check(stored, when)
            self.report.names_checked += checked
            self.report.reserved_checked += reserved
            self.report.problems += problems
            self.report.problems += [f"{when}: {p}" for p in w.failures]
            w.failures.clear()
        self.report.problems += [
            f"{when}: unexpected entry {show(e)} {n!r}" for n, e in stored.items()
        ]
        problem = verify_live(self.master)
        if problem:
            self.report.problems.append(f"{when}: live database: {problem}")
        total = Figures()
        for w in self.writers:
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(w.figures, name))
        self.report.figures = total
        self.say(
            f"kill {k}: after {delay:.3f} s, {sum(w.round_answers for w in self.writers)} answers "
            f"this round, back in {self.report.recover_seconds[-1]:.3f} s, "
            f"{len(self.report.problems)} problem(s) so far"
        )


# ------------------------------------------------------------------ the slave under kills


def bulk_entries(count: int, version: int) -> list[dict[str, str]]:
    """The master's big list, version ``version``: every ACL carries the version; each version
    drops a different 3 % of the names and adds 3 % new ones (well under the brake)."""
    out = []
    for i in range(count):
        if (i + version) % 33 == 0 and version:
            continue
        out.append(
            {
                "name": f"user.bulk{i:06d}",
                "state": "reserved" if i % 11 == 0 else "active",
                "location": f"be{2 + i % 5}!default",
                "acl": "" if i % 11 == 0 else f"u{i}\tlrswipkxtecdan\tv{version}\tlr\t",
            }
        )
    for j in range(count // 33):
        out.append(
            {
                "name": f"user.new{version}.{j:05d}",
                "state": "active",
                "location": f"be{2 + j % 5}!p1",
                "acl": f"n{j}\tlrs\t",
            }
        )
    return out


def export_document(entries: list[dict[str, str]]) -> str:
    return json.dumps({"format": "mupdate-export", "version": 1, "entries": entries})


LOCAL_ACL = "o\tlrswipkxtecdan\t"


@dataclass
class SlaveReport:
    mode: str
    entries: int
    seed: int
    resync_kills: int = 0
    stream_kills: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    recover_seconds: list[float] = field(default_factory=list)
    converge_seconds: list[float] = field(default_factory=list)
    figures: Figures = field(default_factory=Figures)
    guard_kept: int = 0
    problems: list[str] = field(default_factory=list)
    # how long each part of a full resync took, each time one was watched (seconds):
    # "dump" master 'streaming' to slave 'reconciling', "plan" to 'applying N resync
    # changes', "store" to 'resync applied' (the one transaction)
    durations: dict[str, list[float]] = field(
        default_factory=lambda: {"dump": [], "plan": [], "store": []}
    )

    def window(self, part: str) -> float:
        """The shortest time ``part`` took: a delay within it lands inside it."""
        return min(self.durations[part])

    def lines(self) -> list[str]:
        rec = self.recover_seconds or [0.0]
        conv = self.converge_seconds or [0.0]
        phases = ", ".join(f"{n} {p}" for p, n in sorted(self.phases.items())) or "-"
        return [
            f"slave ({self.mode}, {self.entries} entries, seed {self.seed}): "
            f"{self.resync_kills} SIGKILLs mid-resync, {self.stream_kills} mid-stream",
            f"  where the resync kills landed: {phases}",
            "  resync parts, shortest/longest seen: "
            + ", ".join(
                f"{part} {min(d):.3f}/{max(d):.3f} s" for part, d in self.durations.items() if d
            ),
            f"  SIGKILL to 'resync applied' after restart: max {max(rec):.3f} s, "
            f"mean {sum(rec) / len(rec):.3f} s",
            f"  SIGKILL to LIST equal to the master's: max {max(conv):.3f} s",
            f"  writes acknowledged by the master meanwhile: {self.figures.ok + self.figures.no}",
            *(
                [f"  guard refusals logged (local mailboxes kept): {self.guard_kept}"]
                if self.mode == "unified"
                else []
            ),
            f"  problems: {len(self.problems)}",
            *(f"    {p}" for p in self.problems[:40]),
        ]


class SlaveCrashRun:
    """Our slave (standard or unified) following our master with a large list, killed
    ``resync_kills`` times mid-resync and ``stream_kills`` times mid-stream, alternating."""

    def __init__(
        self,
        workdir: Path,
        *,
        seed: int,
        entries: int = 20_000,
        resync_kills: int = 2,
        stream_kills: int = 2,
        unified: bool = False,
        writers: int = 3,
        say: Callable[[str], None] = lambda s: None,
    ) -> None:
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.entries = entries
        self.resync_kills = resync_kills
        self.stream_kills = stream_kills
        self.unified = unified
        self.say = say
        self.version = 0
        self.master = OurMaster(workdir / "master", servername="crash-master")
        self.locals: dict[bytes, Entry] = {}
        partitions: dict[str, Path] = {}
        extra = {"mupdate_retry_max": "2"}
        if unified:
            spool = workdir / "be1-spool"
            for i in range(5):
                name = f"user.local{i}"
                directory = spool.joinpath(*name.split("."))
                directory.mkdir(parents=True)
                (directory / "cyrus.header").write_bytes(b"\xa1\x02\x8b\x0dCyrus mailbox header\n")
                self.locals[name.encode()] = Entry(
                    MAILBOX, name.encode(), b"be1!default", LOCAL_ACL.encode()
                )
            partitions["default"] = spool
            extra["mupdate_heal"] = "no"  # the master keeps lacking them: the guard is seen
        self.slave = OurSlave(
            workdir / "slave",
            master_address=self.master.address,
            servername="be1" if unified else "fe1",
            retry_delay=1,
            mode="unified" if unified else "standard",
            partitions=partitions,
            extra_config=extra,
        )
        self.writers = [
            Writer(f"s{i}", seed * 1000 + 500 + i, 12, (f"wb{i}", f"wb{i}y"))
            for i in range(writers)
        ]
        self.kept: dict[bytes, Entry] = {}  # local entries the guard must keep on the slave
        self.report = SlaveReport("unified" if unified else "standard", entries, seed)

    # -- the master's list ----------------------------------------------------------------

    def _master_list(self) -> list[dict[str, str]]:
        entries = bulk_entries(self.entries, self.version)
        for name, entry in self.locals.items():
            if name in self.kept:
                if entry.name.endswith(b"3"):  # relocated by the master: the guard keeps it
                    entries.append(
                        {
                            "name": name.decode(),
                            "state": "active",
                            "location": "be3!default",
                            "acl": "moved\tlr\t",
                        }
                    )
                continue  # deleted on the master: the guard keeps it
            entries.append(
                {
                    "name": name.decode(),
                    "state": "active",
                    "location": "be1!default",
                    "acl": LOCAL_ACL,
                }
            )
        return entries

    def _writers_entries(self) -> list[dict[str, str]]:
        """What the writers have made so far (stopped: exact), kept through the import."""
        out = []
        for w in self.writers:
            for box in w.boxes.values():
                e = box.entry
                if e is not None:
                    out.append(
                        {
                            "name": e.name.decode(),
                            "state": "active" if e.kind == MAILBOX else "reserved",
                            "location": e.location.decode(),
                            "acl": (e.acl or b"").decode(),
                        }
                    )
        return out

    def _import(self) -> None:
        entries = self._master_list() + self._writers_entries()
        done = admin(self.master.config_path, "import", stdin=export_document(entries))
        if done.returncode != 0:
            raise AssertionError(f"mupdate-admin import failed: {done.stderr}")

    def expected(self, master: dict[bytes, Entry]) -> dict[bytes, Entry]:
        out = dict(master)
        out.update(self.kept)
        return out

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> SlaveReport:
        self.master.configure()
        self._import()  # offline: the master is not running yet
        self.master.start(timeout=60)
        try:
            self._calibrate()
            # the first kill is always mid-resync (of an empty slave), then they alternate
            order: list[str] = []
            for i in range(max(self.resync_kills, self.stream_kills)):
                order += ["resync"] * (i < self.resync_kills) + ["stream"] * (i < self.stream_kills)
            for n, kind in enumerate(order, 1):
                if kind == "resync":
                    self._resync_kill(n)
                else:
                    self._stream_kill(n)
                if n == 1 and self.unified:
                    self._take_local_mailboxes_away()
        finally:
            self.slave.stop()
            self.master.stop()
        for node in (self.master, self.slave):
            self.report.problems += [f"{node.process_name} log: {e}" for e in log_errors(node)]
        if self.unified:
            text = self.slave.log_path.read_text(errors="replace")
            self.report.guard_kept = text.count("guard kept local mailbox")
        total = Figures()
        for w in self.writers:
            self.report.problems += w.failures
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(w.figures, name))
        self.report.figures = total
        return self.report

    def _calibrate(self) -> None:
        """How long the two halves of a full resync of this list take here, with a
        throw-away slave of the same kind; later resyncs can only lengthen them."""
        probe = OurSlave(
            self.workdir / "probe",
            master_address=self.master.address,
            servername=self.slave.servername,
            retry_delay=1,
            mode=self.slave.mode,
            partitions=self.slave.partitions,
            extra_config=self.slave.extra_config,
        )
        master_offset = self.master.log_path.stat().st_size
        offset = spawn(probe)
        try:
            self._timed_resync(probe, master_offset, offset)
        finally:
            probe.stop()

    def _wait_streaming(self, master_offset: int) -> None:
        wait_log(self.master, master_offset, r"streaming \d{4,} entries", 60)

    def _timed_resync(self, node: OurSlave, master_offset: int, offset: int) -> None:
        """Wait for a whole resync (UPDATE seen by the master, dump received, planned,
        applied), noting how long each part took."""
        self._wait_streaming(master_offset)
        began = time.monotonic()
        wait_log(node, offset, r"; reconciling", 120)
        dumped = time.monotonic()
        seen = wait_log(node, offset, r"applying \d+ resync changes|resync applied", 120)
        durations = self.report.durations
        durations["dump"].append(dumped - began)
        if seen.group(0) != "resync applied":  # a large plan: its transaction is watched
            planned = time.monotonic()
            wait_log(node, offset, r"resync applied", 120)
            durations["plan"].append(planned - dumped)
            durations["store"].append(time.monotonic() - planned)

    def _take_local_mailboxes_away(self) -> None:
        """The master deletes three local mailboxes and relocates one (streamed; refused)."""
        self.kept = {n: e for n, e in self.locals.items() if n[-1:] in b"0123"}
        with login(self.master) as c:
            for name in self.kept:
                if name.endswith(b"3"):
                    r = c.command(b"ACTIVATE", name, b"be3!default", b"moved\tlr\t")
                else:
                    r = c.command(b"DELETE", name)
                if not r.ok:
                    raise AssertionError(f"master refused {name!r}: {r.raw!r}")

    def _resync_kill(self, n: int) -> None:
        if self.slave.running:
            sigkill(self.slave)  # an idle kill, to get a slave that is down
        self.version += 1
        self._import()  # while the slave is down: the next resync has every entry to change
        master_offset = self.master.log_path.stat().st_size
        offset = spawn(self.slave)
        self._wait_streaming(master_offset)
        # aim at one part of the resync, from the log line that starts it, with a delay
        # within the shortest time that part has taken
        aim = self.rng.choice(("dump", "plan", "store"))
        if aim in ("plan", "store"):
            wait_log(self.slave, offset, r"; reconciling", 120)
        if aim == "store":
            wait_log(self.slave, offset, r"applying \d+ resync changes", 120)
        delay = self.rng.uniform(0.0, self.report.window(aim))
        _pause(delay)
        killed = sigkill(self.slave)
        text = log_since(self.slave, offset)
        if "resync applied" in text:
            phase = "after 'resync applied'"
        elif re.search(r"applying \d+ resync changes", text):
            phase = "in the store transaction"
        elif "reconciling" in text:
            phase = "while planning"
        else:
            phase = "during the dump"
        self.report.phases[phase] += 1
        self.report.resync_kills += 1
        image = self._copy_image()
        master_offset = self.master.log_path.stat().st_size
        offset = spawn(self.slave)
        self._timed_resync(self.slave, master_offset, offset)
        self.report.recover_seconds.append(time.monotonic() - killed)
        self._check_after(f"kill {n} (mid-resync aimed at {aim}: {phase}, {delay:.3f} s)", killed)
        self._verify_image(image, f"kill {n}")

    def _copy_image(self) -> Path:
        return copy_crash_image(
            self.slave.store_dir / "mupdate-slave.sqlite3", self.workdir / "crash-image"
        )

    def _verify_image(self, image: Path, when: str) -> None:
        problem = verify_copy(image)
        if problem:
            self.report.problems.append(f"{when}: slave crash image: {problem}")

    def _stream_kill(self, n: int) -> None:
        if not self.slave.running:
            offset = spawn(self.slave)
            wait_log(self.slave, offset, r"resync applied", 120)
        load = Load(self.writers, self.master).start()
        try:
            load.wait_flowing()
            delay = self.rng.uniform(0.0, 1.0)
            _pause(delay)
            killed = sigkill(self.slave)
            image = self._copy_image()
            _pause(self.rng.uniform(0.0, 0.5))  # the writes go on while the slave is down
            master_offset = self.master.log_path.stat().st_size
            offset = spawn(self.slave)
            self._timed_resync(self.slave, master_offset, offset)
            self.report.recover_seconds.append(time.monotonic() - killed)
            _pause(self.rng.uniform(0.0, 0.5))  # ... and while it streams again
        finally:
            hung = load.stop()
        if hung:
            raise AssertionError(f"writer threads {hung} did not stop")
        self.report.stream_kills += 1
        self._check_after(f"kill {n} (mid-stream, after {delay:.3f} s)", killed)
        self._verify_image(image, f"kill {n}")

    def _check_after(self, when: str, killed: float) -> None:
        """After the restart and its resync: the slave converges to the master's list."""
        wait_ready(self.slave, 60)
        converged = self._wait_converged(when, 120)
        self.report.converge_seconds.append(converged - killed)
        for w in self.writers:  # the master was never killed: every answer was exact
            w.pending = None
        self.say(
            f"{when}: resync applied {self.report.recover_seconds[-1]:.3f} s after the kill, "
            f"converged after {converged - killed:.3f} s"
        )

    def _wait_converged(self, when: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            master = listed(self.master)
            slave = listed(self.slave)
            expected = self.expected(master)
            if slave == expected:
                return time.monotonic()
            if time.monotonic() > deadline:
                missing = sorted(set(expected) - set(slave))
                extra = sorted(set(slave) - set(expected))
                differ = sorted(n for n in set(slave) & set(expected) if slave[n] != expected[n])
                lost = [n for n in self.kept if slave.get(n) != self.kept[n]]
                self.report.problems.append(
                    f"{when}: slave did not converge in {timeout} s: {len(missing)} missing "
                    f"{missing[:5]}, {len(extra)} extra {extra[:5]}, {len(differ)} differ "
                    f"{[(n, show(slave[n]), show(expected[n])) for n in differ[:3]]}; "
                    f"local mailboxes not kept: {lost}"
                )
                return time.monotonic()
            _pause(0.2)


# ------------------------------------------------------------------ script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of the master")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--writers", type=int, default=6)
    parser.add_argument("--names", type=int, default=25, help="names per writer")
    parser.add_argument(
        "--slave-kills",
        type=int,
        default=None,
        help="per slave run, mid-resync and mid-stream each (default: kills // 5, at least 2)",
    )
    parser.add_argument("--entries", type=int, default=20_000, help="the master's list (slave)")
    parser.add_argument("--no-slave", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    slave_kills = args.slave_kills if args.slave_kills is not None else max(2, args.kills // 5)
    workdir = Path(tempfile.mkdtemp(prefix="crashkill-"))
    reports: list[list[str]] = []
    started = time.monotonic()
    failed = False
    try:
        run = MasterCrashRun(
            workdir / "m",
            kills=args.kills,
            seed=args.seed,
            writers=args.writers,
            names_per_writer=args.names,
            say=print,
        )
        report = run.run()
        failed |= bool(report.problems)
        reports.append(report.lines())
        if not args.no_slave:
            for unified in (False, True):
                srun = SlaveCrashRun(
                    workdir / ("su" if unified else "ss"),
                    seed=args.seed,
                    entries=args.entries,
                    resync_kills=slave_kills,
                    stream_kills=slave_kills,
                    unified=unified,
                    say=print,
                )
                sreport = srun.run()
                failed |= bool(sreport.problems)
                reports.append(sreport.lines())
    finally:
        print()
        for lines in reports:
            print("\n".join(lines))
        print(f"total {time.monotonic() - started:.1f} s; work directory {workdir}")
        if not args.keep and not failed:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

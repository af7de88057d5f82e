"""Interop, seed 000: a replicated Cyrus 3.6 backend pair fails over with no restart.

Topology (built twice, once per master: ours, then Cyrus's own ``mupdate -m`` to record what
it does with the same run; one CyrusMurder each):

    IMAP clients --> VIP (a TCP relay, tests/helpers/relay.py) --> primary imapd
                                                                   (failover: replica imapd)
    primary  (servername 127.0.0.1:VIP) --tap-primary--> master under test
       | sync_client -R -1 (rolling log, one pass, after every step)
       v
    replica  (servername 127.0.0.1:VIP, sync_server) --tap-replica--> master under test
    frontend (Cyrus mupdate slave + proxying imapd)  --tap-frontend--> master under test

Both backends present the same servername, ``127.0.0.1:VIP``: a Cyrus frontend proxies to a
backend by connecting to its servername as host:port, so the VIP relay is the pair's
"virtual IP". Failover moves the relay to the replica's imapd: no backend is restarted or
reconfigured (their pids and config files are checked).

Replication is Cyrus's own: the Debian package ``cyrus-replication`` (sync_client,
sync_server). The replica's sync_server runs as a cyrus.conf service added to the running
node (SIGHUP to its cyrmaster, ``CyrusMurder.add_service``); the primary logs its changes
(``sync_log: 1``) and the test runs one pass of rolling replication (``sync_client -R -1``)
after every step, so every write the replica repeats towards the master happens at a known
point. The replica's sync_server repeats each write with the normal mailbox API: RESERVE +
ACTIVATE for creates and renames, ACTIVATE for ACL changes, DELETE for deletes.

Against our master every repeat must be answered OK (no NO, BAD or ``* BYE`` to either
backend), the master must stay the same process, and its LIST must equal what the pair
holds. Against Cyrus's master the same run is only observed; the observations (NO replies,
demotions, crashes, with tap excerpts) go to ``observations-<kind>.txt`` in the run's node
directory and to stdout (``pytest -s``); docs/replication-pair-seed000.md summarises them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.cyrus import (
    HOST,
    CyrusMasterUnderTest,
    CyrusMurder,
    Node,
    Tap,
    cyrus_available,
    wait_until,
)
from tests.helpers.ourmaster import OurMaster, our_master_available
from tests.helpers.rawmupdate import Entry, MupdateClient
from tests.helpers.relay import Relay

pytestmark = pytest.mark.interop

SYNC_CLIENT = Path("/usr/lib/cyrus/bin/sync_client")
SYNC_SERVER = Path("/usr/lib/cyrus/bin/sync_server")
WRITE_VERBS = ("RESERVE", "ACTIVATE", "DEACTIVATE", "DELETE")
KINDS = ["ours", "cyrus"]
Master = OurMaster | CyrusMasterUnderTest


# --------------------------------------------------------------- the wire, read from taps


@dataclass(frozen=True)
class Write:
    """One MUPDATE write seen on a tap, and the master's answer (None: none came)."""

    tap: str
    conn: int
    tag: str
    verb: str
    name: str
    location: str
    reply: str | None
    lines: tuple[str, ...]

    @property
    def status(self) -> str:
        if self.reply is None:
            return "NO REPLY"
        return self.reply.split(" ", 2)[1] if " " in self.reply else self.reply

    def show(self) -> str:
        return "\n".join(self.lines)


def _unliteral(text: str) -> str:
    return re.sub(r" ?\{\d+\+?\}$", "", text)


def writes_on(name: str, tap: Tap, since: int = 0) -> list[Write]:
    """Every RESERVE/ACTIVATE/DEACTIVATE/DELETE sent through `tap` on connections after
    `since`, with its reply. Cyrus clients send each argument as a `{n+}` literal, so the
    command line is followed by one line per argument (name, location, ACL)."""
    out: list[Write] = []
    for conn, lines in sorted(tap.new_connections(since).items()):
        wire = [(x.direction, x.text) for x in lines if x.direction != "--"]
        i = 0
        while i < len(wire):
            direction, text = wire[i]
            m = re.match(r"^(\S+) (RESERVE|ACTIVATE|DEACTIVATE|DELETE) \{\d+\+?\}$", text)
            if direction != "C>" or not m:
                i += 1
                continue
            tag, verb = m.group(1), m.group(2)
            args: list[str] = []
            shown = [f"C: {text}"]
            j = i + 1
            reply = None
            while j < len(wire):
                d, t = wire[j]
                if d == "<S" and t.startswith(tag + " "):
                    reply = t
                    shown.append(f"S: {t}")
                    j += 1
                    break
                if d == "C>" and re.match(r"^\S+ [A-Z]+( |$)", t) and len(args) >= 2:
                    break  # the next command: this one got no answer
                if d == "C>" and t != "<closed>":
                    args.append(_unliteral(t))
                    shown.append(f"C: {t}")
                elif t == "<closed>":
                    shown.append(f"{'C' if d == 'C>' else 'S'}: <closed>")
                j += 1
            out.append(
                Write(
                    name,
                    conn,
                    tag,
                    verb,
                    args[0] if args else "",
                    args[1] if len(args) > 1 and verb != "DELETE" else "",
                    reply,
                    tuple(shown),
                )
            )
            i = j
    return out


def bad_server_lines(tap: Tap, since: int = 0) -> list[str]:
    """Server lines that refuse or end a session: a tagged NO or BAD, or `* BYE`."""
    out = []
    for conn, lines in sorted(tap.new_connections(since).items()):
        for x in lines:
            if x.direction == "<S" and (
                re.match(r"^\S+ (NO|BAD)\b", x.text) or x.text.startswith("* BYE")
            ):
                out.append(f"#{conn} S: {x.text}")
    return out


def settle(tap: Tap, since: int, timeout: float = 20.0) -> None:
    """Wait until every connection opened on `tap` after `since` is closed on both sides."""

    def closed() -> bool:
        conns = tap.new_connections(since)
        return all(sum(1 for x in v if x.text == "<closed>") >= 2 for v in conns.values())

    wait_until(closed, timeout, f"connections on {tap.addr} after #{since} to close")


# --------------------------------------------------------------- the pair


def live_mailboxes(murder: CyrusMurder, node: Node) -> dict[str, tuple[str, str]]:
    """A backend's real mailboxes: name -> (partition, ACL string), from `ctl_mboxlist -d`."""
    out: dict[str, tuple[str, str]] = {}
    for rec in murder.dump(node):
        mbtype = str(rec.get("mbtype", ""))
        if any(flag in mbtype for flag in "dirz") or "partition" not in rec:
            continue  # tombstones of deleted/renamed names, intermediates, reservations
        rights = rec.get("acl") or {}
        assert isinstance(rights, dict)
        acl = "".join(f"{k}\t{v}\t" for k, v in rights.items())
        out[str(rec["name"])] = (str(rec["partition"]), acl)
    return out


def file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class Pair:
    kind: str
    murder: CyrusMurder
    master: Master
    vip: Relay
    servername: str
    primary: Node
    replica: Node
    frontend: Node
    taps: dict[str, Tap]
    master_pid: int | None
    backend_state: dict[str, tuple[int, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sync_failures: list[str] = field(default_factory=list)
    imap_failures: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    step_errors: list[str] = field(default_factory=list)

    @property
    def strict(self) -> bool:
        """Our master must pass; Cyrus's is observed only."""
        return self.kind == "ours"

    @property
    def vip_addr(self) -> str:
        return self.servername

    def node_state(self, node: Node) -> tuple[int, str]:
        return (
            self.murder.cyrmaster_pid(node),
            file_hash(node.dir / "imapd.conf", node.dir / "cyrus.conf"),
        )

    def note(self, text: str) -> None:
        self.notes.append(text)

    def imap(self, where: str, *commands: list[str]) -> list[tuple[str, str, str]]:
        """IMAP commands at `where` (an address); records failures, raises only if strict."""
        res = self.murder.imap(where, *commands, check=False)
        self.note(f"IMAP {where}:\n" + "\n".join(f"  {line}" for line in res.output.splitlines()))
        if not res.ok:
            self.imap_failures.append(res.output)
            if self.strict:
                raise AssertionError(f"IMAP at {where} failed:\n{res.output}")
        return res.statuses

    def sync(self, what: str) -> None:
        """One pass of rolling replication; then the replica holds what the primary holds."""
        marks = {k: t.mark() for k, t in self.taps.items()}
        r = self.murder.ctl(self.primary, "sync_client", "-R", "-1", "-o", "-v", timeout=60)
        errors = self.murder.logs(
            self.primary, grep=r"sync_client\[\d+\]: .*(failed|bailing|denied|IOERROR)"
        )
        known = sum(1 for f in self.sync_failures if f.startswith("log:"))
        fresh = errors.splitlines()[known:] if errors else []
        for t in ("primary", "replica"):
            with observing(self, f"sync after {what}: {t} connections"):
                settle(self.taps[t], marks[t], timeout=20 if self.strict else 5)
        if r.returncode != 0 or fresh:
            self.sync_failures.append(f"log: sync after {what}: exit {r.returncode}")
            self.sync_failures.extend(f"log: {line}" for line in fresh)
            self.note(f"sync_client after {what}: exit {r.returncode}\n" + "\n".join(fresh))
        p, q = live_mailboxes(self.murder, self.primary), live_mailboxes(self.murder, self.replica)
        if p != q:
            self.note(f"after {what} the replica differs from the primary:\n  {p}\n  {q}")
            if self.strict:
                raise AssertionError(
                    f"sync after {what}: exit {r.returncode}\n{r.stdout}\n{fresh}\n"
                    f"primary {p}\nreplica {q}"
                )

    def session(self) -> MupdateClient:
        c = MupdateClient.connect(self.master.host, self.master.port, timeout=15.0)
        c.authenticate_plain(self.master.admin, self.master.password)
        return c

    def master_list(self) -> list[Entry]:
        c = self.session()
        try:
            return c.list()
        finally:
            c.logout()
            c.close()

    def writes(self, tap: str, since: int = 0) -> list[Write]:
        return writes_on(tap, self.taps[tap], since)


def _cleanup_dir(murder: CyrusMurder, failed: bool) -> None:
    if os.environ.get("MUPDATE_INTEROP_KEEP") != "1" and not failed:
        shutil.rmtree(murder.base_dir, ignore_errors=True)


@pytest.fixture(scope="module", params=KINDS)
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """The whole topology for one master kind, started once; everything stopped after."""
    reason = cyrus_available()
    if reason:
        pytest.skip(reason)
    if not (SYNC_CLIENT.exists() and SYNC_SERVER.exists()):
        pytest.skip("Cyrus replication is not installed (Debian package cyrus-replication)")
    kind = str(request.param)
    if kind == "ours":
        why = our_master_available()
        if why:
            pytest.fail(f"cannot test our master: {why}", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix=f"mupdate-interop-replpair-{kind}-", dir="/tmp"))
    murder = CyrusMurder(base)
    master: Master = (
        OurMaster(base / "our-master", port=murder.free_port())
        if kind == "ours"
        else CyrusMasterUnderTest(murder)
    )
    vip = Relay(HOST, 9)  # target set below, once the primary's port is known
    failures_before = request.session.testsfailed
    failed = True
    try:
        master.start()
        master_pid = master.proc.pid if isinstance(master, OurMaster) and master.proc else None
        vip.start()
        servername = f"{HOST}:{vip.port}"
        primary_imap, replica_imap, sync_port = (murder.free_port() for _ in range(3))
        vip.retarget(HOST, primary_imap)
        taps = {t: murder.tap(f"tap-{t}", to=master.address) for t in ("primary", "replica")}
        taps["frontend"] = murder.tap("tap-frontend", to=master.address)
        primary = murder.backend(
            "primary",
            servername=servername,
            mupdate=taps["primary"].addr,
            imap_port=primary_imap,
            extra=[
                *("--set", "sync_log=1"),
                *("--set", f"sync_host={HOST}"),
                *("--set", f"sync_port={sync_port}"),
                *("--set", "sync_authname=admin"),
                *("--set", "sync_password=secret"),
                *("--set", "sync_try_imap=no"),  # else a 10 s IMAP attempt before csync
            ],
        )
        replica = murder.backend(
            "replica", servername=servername, mupdate=taps["replica"].addr, imap_port=replica_imap
        )
        murder.add_service(
            replica,
            "syncserver",
            [str(SYNC_SERVER), "-C", str(replica.dir / "imapd.conf")],
            sync_port,
        )
        frontend = murder.frontend(
            "frontend", mupdate=taps["frontend"].addr, imap_port=murder.free_port()
        )
        p = Pair(
            kind, murder, master, vip, servername, primary, replica, frontend, taps, master_pid
        )
        yield p
        failed = request.session.testsfailed > failures_before
    finally:
        vip.stop()
        master.stop()
        murder.stop_all()
        _cleanup_dir(murder, failed)


# --------------------------------------------------------------- the run


@contextlib.contextmanager
def observing(pair: Pair, what: str) -> Iterator[None]:
    """Against Cyrus's master a step may fail (its master crashes); record that and go on.
    Against ours every failure fails the test."""
    try:
        yield
    except Exception as e:
        if pair.strict:
            raise
        pair.note(f"{what}: {type(e).__name__}: {str(e).strip()[:2000]}")
        pair.step_errors.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


def run_steps(pair: Pair, steps: list[tuple[str, list[list[str]]]]) -> None:
    for what, commands in steps:
        with observing(pair, what):
            pair.imap(pair.vip_addr, *commands)
            pair.sync(what)


def check_repeats(pair: Pair, since: int, verbs: set[str]) -> None:
    repeats = pair.writes("replica", since)
    pair.note(f"replica sent {len(repeats)} writes: {sorted({w.verb for w in repeats})}")
    # the observation was made, whatever the master: the replica repeated them on the wire
    assert verbs <= {w.verb for w in repeats}, pair.taps["replica"].excerpt(since)
    if pair.strict:
        bad = [w for w in repeats if w.status != "OK"]
        assert not bad, "\n\n".join(w.show() for w in bad)
        assert not pair.sync_failures, pair.sync_failures


def test_1_creates_and_acl_changes_repeated_by_replica(pair: Pair) -> None:
    """Creates and ACL changes on the primary, sync_client after each step: the replica's
    sync_server repeats RESERVE + ACTIVATE, and ACTIVATE with the new ACL."""
    mark = pair.taps["replica"].mark()
    run_steps(
        pair,
        [
            (
                "creates",
                [
                    ["create", "user.pat"],
                    ["create", "user.pat.Sent"],
                    ["create", "user.pat.Drafts"],
                    ["create", "user.pat.Trash"],
                    ["create", "user.quinn"],
                ],
            ),
            (
                "ACL changes",
                [
                    ["setacl", "user.pat", "bob", "lrs"],
                    ["setacl", "user.pat", "admin", "lrswipkxtecda"],
                    ["setacl", "user.pat.Sent", "carol", "lr"],
                ],
            ),
        ],
    )
    check_repeats(pair, mark, {"RESERVE", "ACTIVATE"})


def test_2_replica_reserve_repeat_does_not_demote(pair: Pair) -> None:
    """The replica's RESERVE at the primary's location, replayed on a name the master holds
    ACTIVE, then FIND: ours keeps it ACTIVE with its ACL; Cyrus's demotes it (recorded)."""
    c = pair.session()
    try:
        before = c.find("user.pat.Sent")
        assert before is not None
        assert before.kind == b"MAILBOX", before
        r = c.command(b"RESERVE", b"user.pat.Sent", before.location, tag=b"X0")
        after = c.find("user.pat.Sent")
        line = (
            f"replayed RESERVE user.pat.Sent {before.location.decode()} -> "
            f"{r.status_line.decode().strip()}; FIND before: {before}; after: {after}"
        )
        pair.probes.append(line)
        pair.note(line)
        if after != before:  # put it back as the replica's ACTIVATE would
            assert before.acl is not None
            c.command(b"ACTIVATE", b"user.pat.Sent", before.location, before.acl, tag=b"X1")
    finally:
        c.logout()
        c.close()
    if pair.strict:
        assert r.status_line == b'X0 OK "done"\r\n', r.raw
        assert after == before


def test_3_renames_and_deletes_repeated_by_replica(pair: Pair) -> None:
    """A rename, a delayed delete (a rename to DELETED.*), an ACL removal, a batch of changes
    in one pass and a user delete on the primary: the replica repeats each DELETE after the
    master has already removed the name, and its RESERVEs of the new names."""
    mark = pair.taps["replica"].mark()
    run_steps(
        pair,
        [
            ("rename", [["rename", "user.pat.Drafts", "user.pat.Archive"]]),
            ("delayed delete", [["xdelete", "user.pat.Trash"]]),
            ("ACL removal", [["deleteacl", "user.pat", "bob"]]),
            # several changes in one pass, as rolling replication merges them: the replica
            # never had user.pat.Tmp, so it creates user.pat.Notes (RESERVE at
            # `server!default`) where the primary's RENAME registered `server!` (§10.2). (A
            # SETACL of user.pat.Notes on the primary would have re-registered it at
            # `server!default` first.)
            (
                "batched create, rename and ACL change",
                [
                    ["create", "user.pat.Tmp"],
                    ["rename", "user.pat.Tmp", "user.pat.Notes"],
                    ["setacl", "user.pat.Sent", "carol", "lrs"],
                ],
            ),
            ("user delete", [["xdelete", "user.quinn"]]),
        ],
    )
    # against Cyrus's master the replica's first DELETE repeat is where it ends (recorded)
    check_repeats(pair, mark, {"DELETE", "RESERVE"} if pair.strict else {"DELETE"})


def test_4_frontend_routes_to_the_pair_then_fails_over(pair: Pair) -> None:
    """A Cyrus frontend proxies to the pair's servername (the VIP); the VIP moves to the
    replica with no restart and no configuration change; the frontend keeps routing."""
    fe = pair.frontend.imap_addr
    with observing(pair, "frontend before failover"):
        wait_until(
            lambda: "user.pat" in {str(r["name"]) for r in pair.murder.dump(pair.frontend)},
            30 if pair.strict else 10,
            "the frontend slave to learn user.pat",
        )
        pair.imap(fe, ["append", "user.pat", "Subject: before failover\r\n\r\nhello"])
        st = pair.imap(fe, ["select", "user.pat"])
        pair.sync("append")
        if pair.strict:
            assert st[-1][1:] == ("OK", "1"), st
    pair.backend_state = {
        "primary": pair.node_state(pair.primary),
        "replica": pair.node_state(pair.replica),
    }

    cut = pair.vip.retarget(HOST, pair.replica.ports["imap_port"])
    pair.note(f"failover: VIP {pair.vip_addr} -> replica imapd, {cut} open link(s) cut")

    # the frontend routes to the same servername and now reaches the replica, which has the
    # message the primary received (replicated)
    st = pair.imap(fe, ["select", "user.pat"])
    if pair.strict:
        assert st[-1][1:] == ("OK", "1"), st
    pair.imap(fe, ["append", "user.pat", "Subject: after failover\r\n\r\nhello again"])
    st = pair.imap(fe, ["select", "user.pat"])
    if pair.strict:
        assert st[-1][1:] == ("OK", "2"), st
        # it was the replica that took the append; the old primary still has one message
        for node, count in ((pair.replica, "2"), (pair.primary, "1")):
            res = pair.murder.imap(node, ["select", "user.pat"])
            assert res.statuses[-1][1:] == ("OK", count), (node.dir, res.output)


def test_5_new_primary_writes_reach_the_master(pair: Pair) -> None:
    """After failover the replica is the one clients use: its creates, ACL changes, renames
    and deletes go to the master as the pair's servername, and the frontend routes to them."""
    mark = pair.taps["replica"].mark()
    pair.imap(
        pair.vip_addr,
        ["create", "user.pat.New"],
        ["setacl", "user.pat.New", "bob", "lr"],
        ["setacl", "user.pat.New", "admin", "lrswipkxtecda"],
        ["rename", "user.pat.Archive", "user.pat.Archive2"],
        ["xdelete", "user.pat.Sent"],
        ["create", "user.ruth"],
    )
    with observing(pair, "new primary's writes"):
        settle(pair.taps["replica"], mark, timeout=20 if pair.strict else 5)
        writes = pair.writes("replica", mark)
        pair.note(f"new primary sent {len(writes)} writes")
    if not pair.strict:
        return
    assert writes, pair.taps["replica"].excerpt(mark)
    bad = [w for w in writes if w.status != "OK"]
    assert not bad, "\n\n".join(w.show() for w in bad)
    wait_until(
        lambda: "user.pat.New" in {str(r["name"]) for r in pair.murder.dump(pair.frontend)},
        30,
        "the frontend slave to learn user.pat.New",
    )
    pair.imap(pair.frontend.imap_addr, ["append", "user.pat.New", "Subject: new\r\n\r\nx"])
    st = pair.imap(pair.frontend.imap_addr, ["select", "user.pat.New"])
    assert st[-1][1:] == ("OK", "1"), st


def test_6_no_refusal_no_crash_and_master_list_is_the_pair(pair: Pair) -> None:
    """Whole run: no NO, BAD or `* BYE` went to either backend; no backend was restarted or
    reconfigured by the failover; the master is the same process and lists exactly what the
    new primary holds, under the pair's servername."""
    bad = {t: bad_server_lines(pair.taps[t]) for t in ("primary", "replica")}
    unanswered = [w for t in ("primary", "replica") for w in pair.writes(t) if w.reply is None]
    after = {"primary": pair.node_state(pair.primary), "replica": pair.node_state(pair.replica)}
    entries: list[Entry] = []
    with observing(pair, "master LIST at the end"):
        entries = pair.master_list()
    held = live_mailboxes(pair.murder, pair.replica)
    pair.note(f"master LIST ({len(entries)}): " + ", ".join(e.name.decode() for e in entries))
    pair.note(f"new primary holds ({len(held)}): " + ", ".join(held))
    routed = [str(r["name"]) for r in pair.murder.dump(pair.frontend)]
    pair.note(f"frontend slave holds ({len(routed)}): " + ", ".join(routed))
    if not pair.strict:
        return
    assert bad == {"primary": [], "replica": []}, bad
    assert not unanswered, "\n\n".join(w.show() for w in unanswered)
    assert after == pair.backend_state, "a backend was restarted or reconfigured"
    assert isinstance(pair.master, OurMaster)
    assert crash_lines(pair) == []
    log = pair.master.log_path.read_text(errors="replace")
    assert "Traceback" not in log, pair.master.log_tail(80)

    got = {e.name.decode(): e for e in entries}
    assert set(got) == set(held), (sorted(got), sorted(held))
    for name, (partition, acl) in held.items():
        e = got[name]
        assert e.kind == b"MAILBOX", e
        assert (e.acl or b"").decode() == acl, (name, e.acl, acl)
        server, _, part = e.location.decode().partition("!")
        assert server == pair.servername, e
        # a RENAME on Cyrus 3.6 registers `server!` (§10.2); nothing repeats it any more
        assert part in (partition, ""), e
    # user.pat.Notes: the primary's RENAME registered `server!`, the replica's create at
    # `server!default` was accepted as the same location and its ACTIVATE fixed it up
    assert got["user.pat.Notes"].location.decode() == f"{pair.servername}!default"
    notes = [w for w in pair.writes("replica") if w.name == "user.pat.Notes"]
    assert ("RESERVE", f"{pair.servername}!default", "OK") in {
        (w.verb, w.location, w.status) for w in notes
    }, "\n\n".join(w.show() for w in notes)


def test_7_record_observations(pair: Pair) -> None:
    """Write what the master did (counts and tap excerpts) to the node directory and stdout."""
    lines = [f"== replication pair seed 000, master: {pair.kind} ({pair.master.describe()})"]
    for t in ("primary", "replica"):
        ws = pair.writes(t)
        by_status: dict[str, int] = {}
        for w in ws:
            by_status[w.status] = by_status.get(w.status, 0) + 1
        lines.append(f"{t}: {len(ws)} writes, answers {by_status}")
        for w in ws:
            if w.status != "OK":
                lines.append(f"  -- {t} #{w.conn} {w.verb} {w.name} {w.location}:")
                lines.extend(f"     {x}" for x in w.lines)
        lines.extend(f"  {x}" for x in bad_server_lines(pair.taps[t]))
    reserves_on_active = demotions_inferred(pair)
    lines.append(
        f"replica RESERVEs at the location of an ACTIVE entry, answered OK: "
        f"{len(reserves_on_active)} ({', '.join(reserves_on_active)})"
    )
    lines.append("probe: " + "; ".join(pair.probes))
    crashes = crash_lines(pair)
    lines.append(f"master crashes: {len(crashes)}")
    lines.extend(f"  {x}" for x in crashes)
    lines.append(f"sync_client failures: {len(pair.sync_failures)}")
    lines.extend(f"  {x}" for x in pair.sync_failures)
    lines.append(f"steps that failed: {len(pair.step_errors)}")
    lines.extend(f"  {x}" for x in pair.step_errors)
    lines.append(f"IMAP commands that failed: {len(pair.imap_failures)}")
    lines.extend(f"  {x.strip()}" for x in pair.imap_failures)
    lines.append("-- notes")
    lines.extend(pair.notes)
    text = "\n".join(lines) + "\n"
    out = pair.murder.base_dir / f"observations-{pair.kind}.txt"
    out.write_text(text)
    print("\n" + text)
    # the observation was made: the replica's repeats are on the wire
    assert any(w.verb == "RESERVE" for w in pair.writes("replica")), text
    if pair.strict:
        assert not crashes, text
        assert not reserves_on_active_demoted(pair), text


def demotions_inferred(pair: Pair) -> list[str]:
    """Replica RESERVEs answered OK for a name that was ACTIVE at that very location: Cyrus
    3.6.1 demotes such an entry to RESERVED with an empty ACL until the next ACTIVATE."""
    active: dict[str, str] = {}
    events: list[tuple[str, int, int, Write]] = []
    for t in ("primary", "replica"):
        for i, w in enumerate(pair.writes(t)):
            events.append((t, w.conn, i, w))
    # the taps' connection numbers are per tap; order the two by their log timestamps
    stamp = _stamps(pair)
    events.sort(key=lambda e: stamp.get((e[0], e[1]), ""))
    out = []
    for t, _conn, _i, w in events:
        if w.status != "OK":
            continue
        if w.verb == "ACTIVATE":
            active[w.name] = w.location
        elif w.verb == "DELETE":
            active.pop(w.name, None)
        elif w.verb in ("RESERVE", "DEACTIVATE"):
            if t == "replica" and w.verb == "RESERVE" and active.get(w.name) == w.location:
                out.append(w.name)
            if w.verb == "DEACTIVATE":
                active.pop(w.name, None)
    return out


def reserves_on_active_demoted(pair: Pair) -> bool:
    return any("after: Entry(kind=b'RESERVE'" in p for p in pair.probes)


def _stamps(pair: Pair) -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    for t in ("primary", "replica"):
        text = pair.taps[t].log_path.read_text(errors="replace")
        for m in re.finditer(r"^(\S+) #(\d+) -- connection from", text, re.M):
            out[(t, int(m.group(2)))] = m.group(1)
    return out


def crash_lines(pair: Pair) -> list[str]:
    """Signs that the master process died: cyrmaster's `signaled to death` lines for Cyrus;
    for ours, a changed pid or a stopped process."""
    if isinstance(pair.master, OurMaster):
        proc = pair.master.proc
        if proc is None or proc.pid != pair.master_pid or proc.poll() is not None:
            return [f"our master is not the process started (pid {pair.master_pid})"]
        return []
    node = pair.master.node
    assert node is not None
    log = pair.murder.logs(node, grep=r"signaled to death|exited, status [^0]|SIG(SEGV|ABRT)")
    out = pair.murder.logs(node, grep=r"SIG|signal", what="master")
    return [x for x in (log + out).splitlines() if x.strip()]

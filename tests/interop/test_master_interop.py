"""Interop: real Cyrus 3.6 backends and tools against the MUPDATE master under test.

Topology (one per module, see conftest.py for which master):

    be1  (Cyrus imapd, servername be1) --tap-be1-->  master under test
    be1r (Cyrus imapd, servername be1) --tap-be1r--> master under test   (replica twin of be1)

Both backends run with `unixhierarchysep: yes` (the Cyrus 3.x default), so
IMAP names are `user/carol/a.b` and the MUPDATE (internal) names `user.carol.a^b`
(mupdate-protocol.md §11.1). The taps are transparent logging proxies: they
record the exchange for case 67/68 and for failure reports.

Cases: §10.2 per-operation sequences, §10.3 `ctl_mboxlist -m`, §7.3 replica
pairs, §14 cases 67-69. Each test uses its own user's mailboxes, so tests can
run alone; they share the master, so they only assert on their own names
(plus global properties such as LIST order).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from tests.helpers.cyrus import CyrusMasterUnderTest, CyrusMurder, Node, Tap, TapLine
from tests.helpers.ourmaster import OurMaster
from tests.helpers.rawmupdate import Entry, MupdateClient, Response, dbname_key, parse_responses

pytestmark = pytest.mark.interop

SERVER = "be1"
FULL = "lrswipkxtecdan"  # rights Cyrus gives a user on their own mailboxes
BACKEND_OPTS = ["--set", "unixhierarchysep=yes"]
DELETED_RX = re.compile(rb"^DELETED\.(?P<orig>.+)\.[0-9A-F]{8}$")

Master = OurMaster | CyrusMasterUnderTest


# --------------------------------------------------------------- helpers


def ext(internal: str) -> str:
    """Internal (MUPDATE) name -> IMAP name on a `unixhierarchysep: yes` backend."""
    return internal.replace(".", "/").replace("^", ".")


def acl(*pairs: tuple[str, str]) -> bytes:
    """Cyrus ACL string: `id<TAB>rights<TAB>` repeated, trailing TAB included (§11.3)."""
    return "".join(f"{who}\t{rights}\t" for who, rights in pairs).encode()


def mailbox(name: str, location: str, acl_value: bytes) -> Entry:
    return Entry(b"MAILBOX", name.encode(), location.encode(), acl_value)


def owned_by(entries: Sequence[Entry], *users: str) -> list[Entry]:
    """Entries of user.<user> and its children, and their DELETED.* twins, in LIST order.

    `user.carol-x` belongs to user "carol-x", not to "carol"."""
    bases = [f"user.{u}".encode() for u in users]

    def mine(name: bytes) -> bool:
        m = DELETED_RX.match(name)
        if m:
            name = m.group("orig")
        return any(name == b or name.startswith(b + b".") for b in bases)

    return [e for e in entries if mine(e.name)]


def show(entries: Sequence[Entry]) -> str:
    return (
        "\n".join(f"  {e.kind.decode()} {e.name!r} {e.location!r} {e.acl!r}" for e in entries)
        or "  (none)"
    )


def assert_key_order(entries: Sequence[Entry]) -> None:
    keys = [dbname_key(e.name) for e in entries]
    bad = [
        (entries[i].name, entries[i + 1].name)
        for i in range(len(keys) - 1)
        if not keys[i] < keys[i + 1]
    ]
    assert not bad, (
        f"LIST not in strictly increasing Cyrus key order (§7.8) at {bad}:\n{show(entries)}"
    )


def ctl_actions(output: str) -> list[tuple[str, str]]:
    """`ctl_mboxlist -m -w` lines: (action, name) for Force Activate / Remove ..."""
    out = []
    for line in output.splitlines():
        m = re.match(
            r"^(Force Activate|Remove from MUPDATE|Remove Local Mailbox|"
            r"Remove remote flag on): (.*)$",
            line,
        )
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def assert_ctl_clean(result: object, what: str) -> None:
    rc, out = result.returncode, result.stdout  # type: ignore[attr-defined]
    assert "said not us" not in out, f"{what}: ordering failure (§7.8, case 69):\n{out}"
    assert "fatal" not in out.lower(), f"{what}: fatal error:\n{out}"
    assert "temporary failure" not in out, f"{what}: the master refused an ACTIVATE:\n{out}"
    assert rc == 0, f"{what}: exit {rc}:\n{out}"


def local_mailboxes(murder: CyrusMurder, node: Node) -> dict[str, tuple[bytes, bytes]]:
    """The backend's real mailboxes: name -> (location it pushes, ACL), in key order."""
    out: dict[str, tuple[bytes, bytes]] = {}
    for rec in murder.dump(node):
        mbtype = str(rec.get("mbtype", ""))
        if any(flag in mbtype for flag in "dirz") or "partition" not in rec:
            continue  # tombstones, intermediates, remote and reserved entries are not pushed
        rights = rec.get("acl") or {}
        assert isinstance(rights, dict)
        out[str(rec["name"])] = (
            f"{node.servername}!{rec['partition']}".encode(),
            acl(*((str(k), str(v)) for k, v in rights.items())),
        )
    return out


def split_exchange(lines: Sequence[TapLine]) -> tuple[list[str], list[tuple[str, str]]]:
    """A tap connection -> (greeting lines from the server, everything after, in order).

    Tap notes and `<closed>` markers are dropped."""
    wire = [(x.direction, x.text) for x in lines if x.direction != "--" and x.text != "<closed>"]
    greeting: list[str] = []
    i = 0
    while i < len(wire) and wire[i][0] == "<S":
        greeting.append(wire[i][1])
        i += 1
        if greeting[-1].startswith("* OK"):
            break
    return greeting, wire[i:]


def find_connection(conns: dict[int, list[TapLine]], first_command: str) -> list[TapLine]:
    hits = [
        v for v in conns.values() if any(x.direction == "C>" and x.text == first_command for x in v)
    ]
    assert len(hits) == 1, f"expected one connection sending {first_command!r}, got {len(hits)}"
    return hits[0]


# --------------------------------------------------------------- topology


@dataclass
class Topology:
    murder: CyrusMurder
    master: Master
    be1: Node
    tap: Tap
    replica: Node
    replica_tap: Tap

    def imap(self, node: Node, *commands: Sequence[str]) -> None:
        self.murder.imap(node, *commands)


@pytest.fixture(scope="module")
def topo(murder: CyrusMurder, master_under_test: Master) -> Topology:
    tap = murder.tap("tap-be1", to=master_under_test.address)
    be1 = murder.backend("be1", servername=SERVER, mupdate=tap.addr, extra=BACKEND_OPTS)
    rtap = murder.tap("tap-be1r", to=master_under_test.address)
    replica = murder.backend("be1r", servername=SERVER, mupdate=rtap.addr, extra=BACKEND_OPTS)
    # every node and tap is stopped by the `murder` fixture (stop_all), after the master
    return Topology(murder, master_under_test, be1, tap, replica, rtap)


@pytest.fixture
def session(mupdate_session: Callable[[], MupdateClient]) -> MupdateClient:
    return mupdate_session()


# ------------------------------------------------ 1. backend writes -> LIST


def test_backend_create_setacl_rename_delete_reach_master_list(
    topo: Topology, session: MupdateClient
) -> None:
    """CREATE, SETACL, RENAME, delayed DELETE on a Cyrus backend: exact entries in our LIST."""
    c = "user.carol"
    topo.imap(
        topo.be1,
        ["create", ext(c)],
        ["create", ext(f"{c}.Sent")],
        ["create", ext(f"{c}.a^b")],  # IMAP user/carol/a.b
        ["create", ext("user.carol-x")],
        ["create", ext(f"{c}.Drafts")],
        ["create", ext(f"{c}.Trash")],
        ["setacl", ext(c), "bob", "lrs"],
        ["rename", ext(f"{c}.Drafts"), ext(f"{c}.Archive")],
        ["xdelete", ext(f"{c}.Trash")],  # SETACL admin x, DELETE (delete_mode: delayed)
    )
    everything = session.list()
    got = owned_by(everything, "carol", "carol-x")
    deleted = [e for e in got if e.name.startswith(b"DELETED.")]
    assert len(deleted) == 1, f"one DELETED.user.carol.Trash.<hex> expected:\n{show(got)}"
    assert DELETED_RX.match(deleted[0].name).group("orig") == b"user.carol.Trash"  # type: ignore[union-attr]
    expected = [
        # delayed delete = rename into DELETED.*, registered at `be1!` (empty partition, §10.2)
        mailbox(deleted[0].name.decode(), "be1!", acl(("carol", FULL), ("admin", "xc"))),
        mailbox("user.carol", "be1!default", acl(("carol", FULL), ("bob", "lrs"))),
        # RENAME: RESERVE/ACTIVATE with location `be1!` (Cyrus 3.6 rename bug, §10.2)
        mailbox("user.carol.Archive", "be1!", acl(("carol", FULL))),
        mailbox("user.carol.Sent", "be1!default", acl(("carol", FULL))),
        mailbox("user.carol.a^b", "be1!default", acl(("carol", FULL))),
        mailbox("user.carol-x", "be1!default", acl(("carol-x", FULL))),
    ]
    assert got == expected, f"master LIST for carol:\n{show(got)}\nexpected:\n{show(expected)}"
    # the full LIST, including these names, is in Cyrus key order (§7.8)
    assert_key_order(everything)
    # LIST "be1!" (prefix match on the location) holds the same entries
    by_server = session.list(b"be1!")
    assert owned_by(by_server, "carol", "carol-x") == expected, show(by_server)
    assert_key_order(by_server)
    # FIND agrees with LIST; the old names are gone
    for e in expected:
        assert session.find(e.name) == e
    assert session.find(b"user.carol.Drafts") is None
    assert session.find(b"user.carol.Trash") is None


def test_find_and_list_wire_bytes_of_acl(topo: Topology, session: MupdateClient) -> None:
    """The ACL travels byte-exact: TAB separators and the trailing TAB (§11.3)."""
    topo.imap(topo.be1, ["create", ext("user.olga")], ["setacl", ext("user.olga"), "-anyone", "p"])
    r = session.command(b"FIND", b"user.olga")
    assert r.status_line == b'T01 OK "Search completed"\r\n', r.raw
    want = acl(("olga", FULL), ("-anyone", "p"))
    assert r.entries == [mailbox("user.olga", "be1!default", want)]
    # whatever string form the master picks for the ACL, its bytes are exactly these
    assert (b"{%d+}\r\n" % len(want) + want + b"\r\n") in r.raw or (
        b'"' + want + b'"\r\n'
    ) in r.raw, r.raw


# ------------------------------------------------- 2. ctl_mboxlist -m / -m -w


def test_ctl_mboxlist_push_runs_clean_and_restores_lost_entries(
    topo: Topology, session: MupdateClient
) -> None:
    """`ctl_mboxlist -m -w` / `-m` from be1: clean runs; entries the master lost come back."""
    m, be1 = topo.murder, topo.be1
    d = "user.dave"
    topo.imap(
        be1,
        ["create", ext(d)],
        ["create", ext(f"{d}.Sent")],
        ["create", ext(f"{d}.a^b")],
        ["create", ext("user.dave-x")],  # sorts after user.dave.* in key order, before in strcmp
        ["create", ext(f"{d}.Drafts")],
        ["rename", ext(f"{d}.Drafts"), ext(f"{d}.Archive")],  # master holds it at `be1!`
    )

    # dry run: exactly the entries whose master copy is missing or differs (§10.3 step 4)
    local = local_mailboxes(m, be1)
    master_view = {e.name.decode(): e for e in session.list(b"be1!")}
    assert not set(master_view) - set(local), (
        f"master holds be1! entries be1 does not have: {sorted(set(master_view) - set(local))}"
    )
    expected_force = [
        ("Force Activate", name)
        for name, (loc, acl_value) in local.items()
        if (e := master_view.get(name)) is None
        or e.kind != b"MAILBOX"
        or e.location != loc
        or e.acl != acl_value
    ]
    assert ("Force Activate", "user.dave.Archive") in expected_force
    dry = m.ctl(be1, "-m", "-w")
    assert_ctl_clean(dry, "ctl_mboxlist -m -w")
    assert ctl_actions(dry.stdout) == expected_force, dry.stdout

    # real run: afterwards the master holds every local mailbox at be1!<partition> with its ACL
    assert_ctl_clean(m.ctl(be1, "-m"), "ctl_mboxlist -m")
    synced = session.list(b"be1!")
    assert {e.name.decode(): (e.kind, e.location, e.acl) for e in synced} == {
        name: (b"MAILBOX", loc, acl_value) for name, (loc, acl_value) in local.items()
    }
    assert_key_order(synced)
    again = m.ctl(be1, "-m", "-w")
    assert_ctl_clean(again, "second ctl_mboxlist -m -w")
    assert ctl_actions(again.stdout) == [], again.stdout

    # the master loses entries (MUPDATE DELETE); the push puts them back
    lost = ["user.dave", "user.dave.Sent", "user.dave-x"]  # local key order
    for name in lost:
        r = session.command(b"DELETE", name)
        assert r.status_line == r.tag + b' OK "done"\r\n', r.raw
    remaining = {e.name.decode() for e in session.list(b"be1!")}
    assert not remaining & set(lost)
    dry = m.ctl(be1, "-m", "-w")
    assert_ctl_clean(dry, "ctl_mboxlist -m -w after losses")
    assert ctl_actions(dry.stdout) == [("Force Activate", n) for n in lost], dry.stdout
    assert_ctl_clean(m.ctl(be1, "-m"), "ctl_mboxlist -m after losses")
    assert session.list(b"be1!") == synced
    final = m.ctl(be1, "-m", "-w")
    assert_ctl_clean(final, "final ctl_mboxlist -m -w")
    assert ctl_actions(final.stdout) == [], final.stdout
    assert m.logs(be1, grep="said not us|fatal") == ""


# -------------------------------------------------- 3. Cyrus's mupdatetest


@pytest.fixture(scope="module")
def erin(topo: Topology) -> str:
    topo.imap(topo.be1, ["create", ext("user.erin")])
    return "user.erin"


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_cyrus_mupdatetest_logs_in_and_runs_list_and_find(
    topo: Topology, erin: str, mech: str, session: MupdateClient
) -> None:
    """Cyrus's own `mupdatetest` binary: SASL login, LIST "be1!", FIND hit and miss."""
    p = topo.murder.mupdatetest(
        topo.master.address,
        'LIST "be1!"',
        f'FIND "{erin}"',
        'FIND "user.nobody"',
        cyrus=True,
        mech=mech,
    )
    out = p.stdout
    assert p.returncode == 0, out
    assert f'C: A01 AUTHENTICATE "{mech}"' in out, out
    assert "\nAuthenticated.\n" in out, out
    assert f'S: * OK MUPDATE "{topo.master.servername}" ' in out, out
    body = out.split("Security strength factor: 0\n", 1)[1]
    body = "\n".join(
        line
        for line in body.split("\n")
        if not line.startswith("C: ") and line != "Connection closed."
    )
    responses = [
        r
        for r in parse_responses(body.encode())
        if r.tokens and r.kind not in (b"LIST", b"FIND")  # drop the echoed commands
    ]
    by_tag: dict[bytes, list[Response]] = {}
    for r in responses:
        by_tag.setdefault(r.tag, []).append(r)
    expected_list = session.list(b"be1!")
    assert [Entry.from_response(r) for r in by_tag[b"X01"][:-1]] == expected_list
    assert by_tag[b"X01"][-1].tokens == (b"X01", b"OK", b"list complete")
    assert [Entry.from_response(r) for r in by_tag[b"X02"][:-1]] == [
        mailbox(erin, "be1!default", acl(("erin", FULL)))
    ]
    assert by_tag[b"X02"][-1].tokens == (b"X02", b"OK", b"Search completed")
    assert [r.tokens for r in by_tag[b"X03"]] == [(b"X03", b"OK", b"Search completed")]
    assert [r.tokens[:2] for r in by_tag[b"Q01"]] == [(b"Q01", b"OK")]


# ------------------------------------------- 5. tap: exact exchanges (67, 68)


def _check_session(topo: Topology, conn: list[TapLine], commands: list[tuple[str, str]]) -> None:
    greeting, rest = split_exchange(conn)
    assert greeting, conn
    assert greeting[0].startswith("* AUTH "), greeting
    assert '"PLAIN"' in greeting[0].split(), greeting
    assert greeting[-1].startswith(f'* OK MUPDATE "{topo.master.servername}" '), greeting
    if '"SCRAM-SHA-512"' in greeting[0].split():
        # Our master offers SCRAM; libsasl takes the strongest. §5.1: client-first in a
        # {n+} literal, bare base64 lines, v=... answered by an empty line, then the OK.
        assert re.fullmatch(r'A01 AUTHENTICATE "SCRAM-SHA-512" \{\d+\+\}', rest[0][1]), rest
        assert [d for d, _ in rest[:7]] == ["C>", "C>", "<S", "C>", "<S", "C>", "<S"], rest
        assert rest[5] == ("C>", ""), rest
        ok, tail = rest[6], rest[7:]
    else:
        # PLAIN as the Cyrus client sends it: initial response in a {n+} literal (§5.1)
        assert rest[:2] == [
            ("C>", 'A01 AUTHENTICATE "PLAIN" {24+}'),
            ("C>", "YWRtaW4AYWRtaW4Ac2VjcmV0"),  # admin\0admin\0secret
        ], rest
        ok, tail = rest[2], rest[3:]
    assert ok[0] == "<S", ok
    assert re.fullmatch(r'A01 OK "[^"]*"', ok[1]), ok
    # the backend closes right after LOGOUT; the reply may or may not make it into the log
    if tail and tail[-1][0] == "<S" and tail[-1][1].startswith("Q01 "):
        assert re.fullmatch(r'Q01 OK "[^"]*"', tail[-1][1]), tail[-1]
        tail = tail[:-1]
    assert tail == [*commands, ("C>", "Q01 LOGOUT")], "\n".join(f"{a} {b}" for a, b in tail)


def test_tap_create_exchange_is_case_67(topo: Topology) -> None:
    """Case 67: one connection, `X0 RESERVE`, `X1 ACTIVATE`, `Q01 LOGOUT`; replies OK "done"."""
    mark = topo.tap.mark()
    topo.imap(topo.be1, ["create", ext("user.gina")])
    conns = topo.tap.wait_closed(mark, 1)
    assert len(topo.tap.new_connections(mark)) == 1, topo.tap.excerpt(mark)
    conn = find_connection(conns, "X0 RESERVE {9+}")
    _check_session(
        topo,
        conn,
        [
            ("C>", "X0 RESERVE {9+}"),
            ("C>", "user.gina {11+}"),
            ("C>", "be1!default"),
            ("<S", 'X0 OK "done"'),
            ("C>", "X1 ACTIVATE {9+}"),
            ("C>", "user.gina {11+}"),
            ("C>", "be1!default {20+}"),
            ("C>", f"gina\t{FULL}\t"),
            ("<S", 'X1 OK "done"'),
        ],
    )


def test_tap_rename_exchange_is_case_68(topo: Topology, session: MupdateClient) -> None:
    """Case 68: RENAME = `DELETE old`, `RESERVE new be1!`, `ACTIVATE new be1! acl`, all OK."""
    topo.imap(topo.be1, ["create", ext("user.hugo")], ["create", ext("user.hugo.Drafts")])
    mark = topo.tap.mark()
    topo.imap(topo.be1, ["rename", ext("user.hugo.Drafts"), ext("user.hugo.Archive")])
    conns = topo.tap.wait_closed(mark, 1)
    conn = find_connection(conns, "X0 DELETE {16+}")
    _check_session(
        topo,
        conn,
        [
            ("C>", "X0 DELETE {16+}"),
            ("C>", "user.hugo.Drafts"),
            ("<S", 'X0 OK "done"'),
            ("C>", "X1 RESERVE {17+}"),
            ("C>", "user.hugo.Archive {4+}"),
            ("C>", "be1!"),
            ("<S", 'X1 OK "done"'),
            ("C>", "X2 ACTIVATE {17+}"),
            ("C>", "user.hugo.Archive {4+}"),
            ("C>", "be1! {20+}"),
            ("C>", f"hugo\t{FULL}\t"),
            ("<S", 'X2 OK "done"'),
        ],
    )
    assert session.find(b"user.hugo.Archive") == mailbox(
        "user.hugo.Archive", "be1!", acl(("hugo", FULL))
    )
    assert session.find(b"user.hugo.Drafts") is None


# ---------------------------------------------------- 4. replicated pair


def _cyrus_breaks_replicas(topo: Topology, request: pytest.FixtureRequest, why: str) -> None:
    if topo.master.kind == "cyrus":
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"Cyrus 3.6 master: {why}"))


def test_replica_pair_repeats_every_write_and_master_stays_right(
    topo: Topology, session: MupdateClient, request: pytest.FixtureRequest
) -> None:
    """Two backends named be1 (primary + replica) both send each write (§7.3): all IMAP OK,
    the master ends as after the primary alone: ACTIVE stays ACTIVE, ACLs kept."""
    _cyrus_breaks_replicas(topo, request, "the repeated DELETE crashes the master (§7.3)")
    h = "user.hank"
    steps: list[list[str]] = [
        ["create", ext(h)],
        ["create", ext(f"{h}.Sent")],
        ["create", ext(f"{h}.a^b")],
        ["create", ext(f"{h}.Drafts")],
        ["create", ext(f"{h}.Trash")],
        ["setacl", ext(h), "bob", "lrs"],
        ["rename", ext(f"{h}.Drafts"), ext(f"{h}.Archive")],
        ["setacl", ext(f"{h}.Trash"), "admin", "x"],  # admins need x to delete (README)
        ["delete", ext(f"{h}.Trash")],  # the replica's DELETE is a true repeat
    ]
    rmark = topo.replica_tap.mark()
    for step in steps:
        topo.murder.imap(topo.be1, step)
        after_primary = owned_by(session.list(), "hank")
        res = topo.murder.imap(topo.replica, step, check=False)
        assert res.ok, (
            f"replica's repeat of {step} failed:\n{res.output}\nreplica wire:\n"
            + topo.replica_tap.excerpt(rmark)
        )
        after_replica = owned_by(session.list(), "hank")
        # the replica's DELETED.<name>.<hex> may carry another timestamp: compare the rest
        live = [e for e in after_replica if not e.name.startswith(b"DELETED.")]
        assert live == [e for e in after_primary if not e.name.startswith(b"DELETED.")], (
            f"after the replica's {step}:\n{show(after_replica)}\nafter the primary's:\n"
            f"{show(after_primary)}"
        )
        assert set(after_primary) <= set(after_replica)
        assert all(e.kind == b"MAILBOX" for e in after_replica), show(after_replica)

    final = owned_by(session.list(), "hank")
    live = [e for e in final if not e.name.startswith(b"DELETED.")]
    assert live == [
        mailbox(h, "be1!default", acl(("hank", FULL), ("bob", "lrs"))),
        mailbox(f"{h}.Archive", "be1!", acl(("hank", FULL))),
        mailbox(f"{h}.Sent", "be1!default", acl(("hank", FULL))),
        mailbox(f"{h}.a^b", "be1!default", acl(("hank", FULL))),
    ], show(final)
    deleted = [e for e in final if e.name.startswith(b"DELETED.")]
    assert 1 <= len(deleted) <= 2, show(final)  # same second -> same name, else two
    for e in deleted:
        assert DELETED_RX.match(e.name).group("orig") == b"user.hank.Trash"  # type: ignore[union-attr]
        assert (e.kind, e.location, e.acl) == (
            b"MAILBOX",
            b"be1!",
            acl(("hank", FULL), ("admin", "xc")),
        )

    # on the wire: the replica's DELETE repeats (rename's and delete's) were answered OK "done"
    deletes = []
    for lines in topo.replica_tap.new_connections(rmark).values():
        wire = [(x.direction, x.text) for x in lines if x.direction != "--"]
        for i, (direction, text) in enumerate(wire):
            if direction == "C>" and text.startswith("X0 DELETE "):
                deletes.append((wire[i + 1][1], wire[i + 2]))
    assert deletes == [
        ("user.hank.Drafts", ("<S", 'X0 OK "done"')),
        ("user.hank.Trash", ("<S", 'X0 OK "done"')),
    ], topo.replica_tap.excerpt(rmark)


def test_replica_reserve_repeat_keeps_entry_active(
    topo: Topology, session: MupdateClient, request: pytest.FixtureRequest
) -> None:
    """The replica's CREATE starts with RESERVE at the same location on the primary's ACTIVE
    entry: OK, and the entry stays ACTIVE with its ACL (case 45 [ours]; Cyrus demotes it)."""
    _cyrus_breaks_replicas(topo, request, "RESERVE at the same location demotes (case 45)")
    topo.imap(topo.be1, ["create", ext("user.ivy")])
    before = session.find(b"user.ivy")
    assert before == mailbox("user.ivy", "be1!default", acl(("ivy", FULL)))
    try:
        # exactly what the replica's CREATE sends first (see the case 67 transcript)
        r = session.command(b"RESERVE", b"user.ivy", b"be1!default", tag=b"X0")
        assert r.status_line == b'X0 OK "done"\r\n', r.raw
        assert session.find(b"user.ivy") == before
        r = session.command(b"RESERVE", b"user.ivy", b"be2!default", tag=b"X0")
        assert r.status_line == b'X0 NO "mailbox already exists"\r\n', r.raw
        assert session.find(b"user.ivy") == before
    finally:
        # then the replica itself repeats the create; whatever the master did, this repairs it
        topo.murder.imap(topo.replica, ["create", ext("user.ivy")], check=False)

"""Interop: our slave in place of Cyrus's on a real Cyrus 3.6 frontend (issue 3).

Topology (one per module):

    be1 (Cyrus imapd, servername 127.0.0.1:P1) --+
    be2 (Cyrus imapd, servername 127.0.0.1:P2) --+--> our master <-- our slave
                                                 |                    | keeps fe's mailboxes.db,
    fe  (Cyrus frontend imapd, its own Cyrus ----+                    | answers its kick socket
         mupdate slave switched off by SIGHUP)  <---------------------+
    fc  (Cyrus frontend with Cyrus's own slave: the reference for the record bytes)

Backends are named ``127.0.0.1:PORT`` so the frontend's imapd proxies to them on loopback
(see cyrus-murder's README). The frontend reads only its mailboxes.db: every IMAP answer
about a mailbox here comes from what our slave wrote there.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.cyrus import CyrusMurder, Node, wait_until, workspace
from tests.helpers.cyrusstore import (
    consistent,
    db_records,
    dbtool_pids,
    our_slave_on,
    switch_off_cyrus_slave,
    without_mtime,
)
from tests.helpers.ourmaster import OurMaster
from tests.helpers.ourslave import OurSlave, our_slave_available
from tests.helpers.rawmupdate import MupdateClient

pytestmark = pytest.mark.interop

FULL = "lrswipkxtecdan"


@dataclass
class Topo:
    murder: CyrusMurder
    master: OurMaster
    be1: Node
    be2: Node
    fe: Node
    fc: Node
    slave: OurSlave

    def master_list(self) -> dict[bytes, tuple[bytes, bytes, bytes]]:
        with MupdateClient.connect(self.master.host, self.master.port) as c:
            assert c.authenticate_plain("admin", "secret").ok
            return {e.name: (e.kind, e.location, e.acl or b"") for e in c.list()}

    def fe_names(self) -> set[str]:
        return {str(rec["name"]) for rec in self.murder.dump(self.fe)}


@pytest.fixture(scope="module")
def topo(request: pytest.FixtureRequest, cyrus_ready: None) -> Iterator[Topo]:
    reason = our_slave_available()
    if reason:
        pytest.fail(f"cannot test our slave: {reason}", pytrace=False)
    with workspace(request, "cyrus-store-fe") as (base, murder):
        master = OurMaster(base / "our-master")
        slave: OurSlave | None = None
        try:
            master.start()
            p1, p2 = murder.free_port(), murder.free_port()
            be1 = murder.backend(
                "be1", servername=f"127.0.0.1:{p1}", imap_port=p1, mupdate=master.address
            )
            be2 = murder.backend(
                "be2", servername=f"127.0.0.1:{p2}", imap_port=p2, mupdate=master.address
            )
            fe = murder.frontend(
                "fe",
                mupdate=master.address,
                imap_port=murder.free_port(),
                extra=["--serverlist", f"127.0.0.1:{p1}"],
            )
            switch_off_cyrus_slave(murder, fe)
            fc = murder.frontend("fc", mupdate=master.address)
            slave = our_slave_on(
                fe, base / "our-slave", master_address=master.address, servername="frontend"
            )
            slave.start(timeout=30.0)
            yield Topo(murder, master, be1, be2, fe, fc, slave)
        finally:
            if slave is not None:
                slave.stop()
            master.stop()


def test_frontend_proxies_to_both_backends_from_our_records(topo: Topo) -> None:
    topo.murder.imap(
        topo.be1,
        ["create", "user.ann"],
        ["create", "user.ann.Sent"],
        ["setacl", "user.ann", "admin", FULL],
    )
    # The admin gets rights to write through the frontend; the SETACL streams as well.
    topo.murder.imap(topo.be2, ["create", "user.bea"], ["setacl", "user.bea", "admin", FULL])

    def learnt() -> bool:
        records = {str(rec["name"]): rec for rec in topo.murder.dump(topo.fe)}
        bea = records.get("user.bea", {})
        ann = records.get("user.ann", {})
        admin = "admin" in str(bea.get("acl")) and "admin" in str(ann.get("acl"))
        return "user.ann.Sent" in records and admin

    wait_until(learnt, 30, "the backends' mailboxes in the frontend's mailboxes.db")
    listed = topo.murder.imap(topo.fe, ["list", "user.*"])
    assert "user.ann.Sent" in listed.output, listed.output
    assert "user.bea" in listed.output, listed.output
    # A message delivered on be2 is what a SELECT through the frontend sees: proxied there.
    message = "From: a@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
    topo.murder.imap(topo.be2, ["append", "user.bea", message])
    on_be2 = topo.murder.imap(topo.be2, ["select", "user.bea"])
    via_fe = topo.murder.imap(topo.fe, ["select", "user.bea"], ["select", "user.ann"])

    def selected(output: str) -> str:
        return next(line for line in output.splitlines() if line.startswith("select user.bea:"))

    assert selected(on_be2.output) == selected(via_fe.output) == "select user.bea: OK 1"


def test_create_through_the_frontend_is_selectable_at_once_by_the_kick(topo: Topo) -> None:
    # In the same session, right after the CREATE's OK: the imapd kicked our slave, which
    # answered only once the master's stream had brought the entry into mailboxes.db.
    result = topo.murder.imap(topo.fe, ["create", "user.cid"], ["list", "user.cid"])
    assert result.ok, result.output
    assert '  (\\HasNoChildren) "." user.cid' in result.output.splitlines(), result.output
    assert "user.cid" in topo.fe_names()
    assert topo.murder.logs(topo.fe, grep="kick_mupdate") == "", "the imapd could not kick"
    # The kick socket is ours: an imapd-style kick gets "ok".
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(str(topo.fe.dir / "conf" / "socket" / "mupdate.target"))
        assert s.recv(16) == b"ok"


def test_ctl_mboxlist_dump_on_the_frontend_matches_the_masters_list(topo: Topo) -> None:
    topo.murder.imap(topo.be1, ["create", "user.dot"], ["setacl", "user.dot", "bob", "lrs"])
    topo.murder.imap(topo.be1, ["rename", "user.ann.Sent", "user.ann.Archive"])
    expected = topo.master_list()

    def same() -> bool:
        dumped = {str(rec["name"]).encode(): rec for rec in topo.murder.dump(topo.fe)}
        return set(dumped) == set(expected)

    wait_until(same, 30, "the frontend's dump to hold the master's names")
    for rec in topo.murder.dump(topo.fe):
        name = str(rec["name"]).encode()
        kind, location, acl = expected[name]
        server, _, partition = location.partition(b"!")
        assert str(rec.get("server", "")).encode() == server, rec
        assert str(rec.get("partition", "")).encode() == partition, rec
        if kind == b"MAILBOX":
            acl_dict = rec.get("acl") or {}
            assert isinstance(acl_dict, dict)
            flat = b"".join(f"{k}\t{v}\t".encode() for k, v in acl_dict.items())
            assert flat == acl, (rec, acl)


def test_records_are_byte_for_byte_those_of_cyruss_own_slave(topo: Topo) -> None:
    odd: list[tuple[bytes, ...]] = [
        (b"ACTIVATE", b"example.com!user.dom", b"be7!p2", b"dom\tlrs\tan yone\tlr\t"),
        (b"ACTIVATE", b"user.bare", b"be9", b""),
        (b"ACTIVATE", b"user.q", b"be7!default", b'a"b\tlrs\tc{d\tlr\tx(y)\tl\t'),
        (b"ACTIVATE", b"user.emptyp", b"be7!", b"u\tl\t"),
        (b"RESERVE", b"user.res", b"be7!default"),
        (b"ACTIVATE", b"user.8bit", b"be7!default", "dé\tlr\ta\t".encode()),
        (b"ACTIVATE", b"user.k a", b"be7!default", b"k\tlrs\t"),
    ]
    with MupdateClient.connect(topo.master.host, topo.master.port) as c:
        assert c.authenticate_plain("admin", "secret").ok
        for verb, *args in odd:
            assert c.command(verb, *args).ok, (verb, args)
    names = {b"Nexample.com\x1duser\x1fdom", b"Nuser\x1fbare", b"Nuser\x1fq", b"Nuser\x1fres"}

    def both_have_them() -> bool:
        return names <= set(db_records(topo.fe)) and names <= set(db_records(topo.fc))

    wait_until(both_have_them, 30, "the odd entries in both frontends' mailboxes.db")

    def settled() -> bool:
        return {k: without_mtime(v) for k, v in db_records(topo.fe).items()} == {
            k: without_mtime(v) for k, v in db_records(topo.fc).items()
        }

    wait_until(settled, 30, "both frontends' mailboxes.db to hold the same records")
    ours = {k: without_mtime(v) for k, v in db_records(topo.fe).items()}
    cyrus = {k: without_mtime(v) for k, v in db_records(topo.fc).items()}
    assert ours == cyrus
    assert ours[b"Nuser\x1fres"] == b"%(T erz P default S be7 M * A %())"


def test_a_killed_cyr_dbtool_is_replaced_and_leaves_the_file_consistent(topo: Topo) -> None:
    wait_until(lambda: dbtool_pids(topo.fe), 15, "our slave's cyr_dbtool child")
    for pid in dbtool_pids(topo.fe):
        os.kill(pid, signal.SIGKILL)
    assert consistent(topo.fe) == "Yes, consistent"
    topo.murder.imap(topo.be2, ["create", "user.after-kill"])
    wait_until(lambda: "user.after-kill" in topo.fe_names(), 30, "a change after the kill")
    assert consistent(topo.fe) == "Yes, consistent"
    assert "cyr_dbtool" in topo.slave.log_tail(400)


def test_following_a_cyrus_master_the_frontend_routes_and_kicks(topo: Topo) -> None:
    """Once with Cyrus's own master: its stream waits for a NOOP, which the kick sends."""
    murder = topo.murder
    cm = murder.master("cm", servername="cyrus-master")
    port = murder.free_port()
    be3 = murder.backend(
        "be3", servername=f"127.0.0.1:{port}", imap_port=port, mupdate=cm.mupdate_addr
    )
    fe3 = murder.frontend(
        "fe3",
        mupdate=cm.mupdate_addr,
        imap_port=murder.free_port(),
        extra=["--serverlist", f"127.0.0.1:{port}"],
    )
    switch_off_cyrus_slave(murder, fe3)
    murder.imap(be3, ["create", "user.cy1"], ["setacl", "user.cy1", "admin", FULL])
    slave = our_slave_on(
        fe3, murder.base_dir / "our-slave-cm", master_address=cm.mupdate_addr, servername="fe3"
    )
    try:
        slave.start(timeout=30.0)
        wait_until(lambda: b"Nuser\x1fcy1" in db_records(fe3), 30, "user.cy1 in fe3's mailboxes.db")
        assert topo.murder.imap(fe3, ["select", "user.cy1"]).ok
        created = murder.imap(fe3, ["create", "user.cy2"], ["list", "user.cy2"])
        assert '  (\\HasNoChildren) "." user.cy2' in created.output.splitlines(), created.output
        record = db_records(fe3)[b"Nuser\x1fcy2"]
        assert without_mtime(record) == (
            f"%(T er P default S 127.0.0.1:{port} M * A %(cy2 {FULL}))".encode()
        ), record
    finally:
        slave.stop()
        murder.stop(fe3, be3, cm)

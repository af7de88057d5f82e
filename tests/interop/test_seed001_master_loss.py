"""Seed 001 with real Cyrus 3.6 peers: the master loses its database (issue 7, part 5).

Topology (one per module):

    be1 (Cyrus backend, standard, named 127.0.0.1:P1) -- mupdate-push --every 2 --+
    ub  (Cyrus unified backend, named 127.0.0.1:P2; our slave keeps its           +--> our master
         mailboxes.db, guards and heals its own mailboxes)  -----------------------+
    fe  (Cyrus frontend imapd; our slave keeps its mailboxes.db) <-- our slave ----+

The master is stopped, its database deleted, and it starts empty. Nobody runs anything:
the frontend's slave keeps what the master stopped listing until a later resync confirms
it gone (``mupdate_resync_remove_delay``; the mass-delete brake behind it), so the frontend
keeps proxying to both backends; ub's slave keeps its local mailboxes and re-announces them; be1's
``mupdate-push --every`` (what etc/mupdate-push.service runs) refills be1's part. In the
end the master lists what it listed before, and no mailbox was lost anywhere.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cyrus import CyrusMurder, Node, repo_root, wait_until, workspace
from tests.helpers.cyrusstore import db_records, our_slave_on, switch_off_cyrus_slave
from tests.helpers.ourmaster import OurMaster, _env
from tests.helpers.ourslave import OurSlave, our_slave_available
from tests.helpers.rawmupdate import MupdateClient
from tests.helpers.relay import Relay

pytestmark = pytest.mark.interop

FULL = "lrswipkxtecdan"
BE1_USERS = [f"user.b{i:02d}" for i in range(8)]
UB_USERS = [f"user.u{i:02d}" for i in range(6)]


@dataclass
class Topo:
    murder: CyrusMurder
    master: OurMaster
    be1: Node
    ub: Node
    fe: Node
    fe_slave: OurSlave
    ub_slave: OurSlave
    pusher: subprocess.Popen[bytes]
    push_log: Path
    refill: Relay  # between the master and those who refill it (ub's slave, be1's push)

    def master_list(self) -> dict[bytes, tuple[bytes, bytes]]:
        with MupdateClient.connect(self.master.host, self.master.port) as c:
            assert c.authenticate_plain("admin", "secret").ok
            return {e.name: (e.location, e.acl or b"") for e in c.list()}


def _pusher(be1: Node, master: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "mupdate.tools.push", "--every", "2",
        "--server", master, "--user", "admin", "--password-env", "PUSH_PASSWORD",
        "--from-cyrus-db", f"{be1.dir}/conf/mailboxes.db", "--cyrus-conf", f"{be1.dir}/imapd.conf",
        "--servername", be1.servername,
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=repo_root(),
            env={**_env(repo_root()), "PUSH_PASSWORD": "secret"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="module")
def topo(request: pytest.FixtureRequest, cyrus_ready: None) -> Iterator[Topo]:
    reason = our_slave_available()
    if reason:
        pytest.fail(f"cannot test our slave: {reason}", pytrace=False)
    with workspace(request, "seed001") as (base, murder):
        master = OurMaster(base / "our-master")
        started: list[OurSlave] = []
        pusher: subprocess.Popen[bytes] | None = None
        refill: Relay | None = None
        try:
            master.start()
            refill = Relay(master.host, master.port).start()
            p1, p2 = murder.free_port(), murder.free_port()
            be1 = murder.backend(
                "be1", servername=f"127.0.0.1:{p1}", imap_port=p1, mupdate=master.address
            )
            ub = murder.backend(
                "ub",
                servername=f"127.0.0.1:{p2}",
                imap_port=p2,
                mupdate=master.address,
                extra=["--unified", "--mupdate-port", str(murder.free_port())],
            )
            switch_off_cyrus_slave(murder, ub)
            fe = murder.frontend("fe", mupdate=master.address, imap_port=murder.free_port())
            switch_off_cyrus_slave(murder, fe)
            # Removals a resync finds wait 10 s for a resync that confirms them (seed 001).
            quick = {"mupdate_retry_max": "4", "mupdate_resync_remove_delay": "10s"}
            ub_slave = our_slave_on(
                ub, base / "ub-slave", master_address=refill.address,
                servername=f"127.0.0.1:{p2}", mode="unified", extra=quick,
            )  # fmt: skip
            fe_slave = our_slave_on(
                fe, base / "fe-slave", master_address=master.address, servername="fe", extra=quick
            )
            for slave in (ub_slave, fe_slave):
                slave.start(timeout=30.0)
                started.append(slave)
            for name in BE1_USERS:
                murder.imap(be1, ["create", name], ["setacl", name, "admin", FULL])
            for name in UB_USERS:
                murder.imap(ub, ["create", name], ["setacl", name, "admin", FULL])
            push_log = base / "push.log"
            pusher = _pusher(be1, refill.address, push_log)
            yield Topo(murder, master, be1, ub, fe, fe_slave, ub_slave, pusher, push_log, refill)
        finally:
            if pusher is not None:
                pusher.terminate()
                pusher.wait(timeout=30)
            for slave in started:
                slave.stop()
            master.stop()
            if refill is not None:
                refill.stop()


def _frontend_routes(topo: Topo) -> None:
    """SELECT through the frontend reaches a mailbox on each backend."""
    result = topo.murder.imap(
        topo.fe, ["select", BE1_USERS[0]], ["select", UB_USERS[0]], check=False
    )
    assert result.ok, result.output


def test_master_loss_loses_nothing_and_the_master_is_whole_again(topo: Topo) -> None:
    everyone = {n.encode() for n in BE1_USERS + UB_USERS}
    wait_until(lambda: everyone <= set(topo.master_list()), 30, "every mailbox on the master")
    before = topo.master_list()

    def fe_has_all() -> bool:
        return everyone <= {str(r["name"]).encode() for r in topo.murder.dump(topo.fe)}

    wait_until(fe_has_all, 30, "every mailbox in the frontend's mailboxes.db")
    _frontend_routes(topo)
    be1_before = db_records(topo.be1)
    ub_local_before = {k: v for k, v in db_records(topo.ub).items() if b" S " not in v}
    fe_before = {k for k in db_records(topo.fe)}

    # Those who refill the master reach it a while after the frontend's slave does (held by
    # the relay until the frontend has resynced against the empty master): the window in
    # which a frontend would lose what the master has not got back yet.
    topo.refill.freeze()
    topo.master.stop()
    _frontend_routes(topo)  # the master is down: the frontend still routes
    shutil.rmtree(topo.master.store_dir)
    topo.master.start()
    wait_until(
        lambda: "entries the master did not list" in topo.fe_slave.log_tail(400),
        30,
        "the frontend's slave to resync against the empty master",
    )
    _frontend_routes(topo)  # the master is up and empty
    topo.refill.passthrough()

    def whole_while_routing() -> bool:
        _frontend_routes(topo)  # at every look, until the master is whole again
        return topo.master_list() == before

    wait_until(whole_while_routing, 60, "the master to be whole again")
    _frontend_routes(topo)
    # Nothing lost anywhere: backends, the unified backend's local records, the frontend.
    assert db_records(topo.be1) == be1_before
    ub_local_after = {k: v for k, v in db_records(topo.ub).items() if b" S " not in v}
    assert ub_local_after == ub_local_before
    assert fe_before <= set(db_records(topo.fe))
    fe_log = topo.fe_slave.log_tail(400)
    assert "entries the master did not list" in fe_log, fe_log
    ub_log = topo.ub_slave.log_tail(400)
    assert "guard kept local mailbox" in ub_log, ub_log
    assert topo.pusher.poll() is None, topo.push_log.read_text()

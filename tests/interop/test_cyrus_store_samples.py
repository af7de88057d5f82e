"""The Cyrus-store sample configs in etc/ start and work next to real Cyrus 3.6 nodes.

Each sample is localized as tests/integration/test_sample_configs.py does (paths under a
tmp root, free ports, mupdate_server = our master), and then pointed at a real Cyrus node:
``mupdate_cyrus_config`` becomes the node's imapd.conf, ``mupdate_cyrus_dbtool`` stays
Cyrus's tool, ``servername`` the node's. Nothing else changes. The frontend sample keeps a
Cyrus frontend's mailboxes.db (its own Cyrus slave switched off as the sample's header
says); the unified sample a unified backend's, whose local mailbox must stay as it is.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers.cyrus import CyrusMurder, PortAllocator, wait_until
from tests.helpers.cyrusstore import db_records, switch_off_cyrus_slave
from tests.helpers.ourmaster import OurMaster
from tests.integration.test_sample_configs import (
    SampleNode,
    add_user,
    config_value,
    localize,
    sample,
)

pytestmark = pytest.mark.interop


def _point_at(text: str, imapd_conf: Path, servername: str) -> str:
    text = re.sub(r"(?m)^mupdate_cyrus_config:.*$", f"mupdate_cyrus_config: {imapd_conf}", text)
    text = re.sub(
        r"(?m)^mupdate_cyrus_dbtool:.*$",
        "mupdate_cyrus_dbtool: /usr/lib/cyrus/bin/cyr_dbtool",
        text,
    )
    return re.sub(r"(?m)^servername:.*$", f"servername: {servername}", text)


def _slave(base: Path, name: str, master: str, imapd_conf: Path, servername: str) -> SampleNode:
    workdir = base / name.removesuffix(".conf")
    text, listened = localize(sample(name).read_text(), workdir / "root", PortAllocator(), master)
    text = _point_at(text, imapd_conf, servername)
    credentials = config_value(text, "mupdate_credentials")
    assert credentials
    Path(credentials).parent.mkdir(parents=True, exist_ok=True)
    add_user(Path(credentials), "admin", "secret")
    for key in ("partition-default",):
        value = config_value(text, key)
        if value:
            Path(value).mkdir(parents=True, exist_ok=True)
    return SampleNode(workdir, name, text, listened["mupdate_listen"][0])


def test_cyrus_store_samples_start_and_keep_the_nodes_mailboxes_db(cyrus_ready: None) -> None:
    base = Path(tempfile.mkdtemp(prefix="mupdate-interop-cyrus-samples-", dir="/tmp"))
    murder = CyrusMurder(base)
    master = OurMaster(base / "our-master")
    slaves: list[SampleNode] = []
    ok = False
    try:
        master.start()
        be1 = murder.backend("be1", servername="be1", mupdate=master.address)
        fe = murder.frontend("fe", mupdate=master.address, servername="fe")
        switch_off_cyrus_slave(murder, fe)
        ub = murder.backend(
            "ub",
            servername="ub",
            mupdate=master.address,
            extra=["--unified", "--mupdate-port", str(murder.free_port())],
        )
        switch_off_cyrus_slave(murder, ub)
        murder.imap(be1, ["create", "user.s1"])
        murder.imap(ub, ["create", "user.s2"])
        local_before = db_records(ub)[b"Nuser\x1fs2"]
        for name, node, servername in (
            ("mupdate-slave-cyrus-frontend.conf", fe, "fe"),
            ("mupdate-slave-cyrus-unified.conf", ub, "ub"),
        ):
            slave = _slave(base, name, master.address, node.dir / "imapd.conf", servername)
            slaves.append(slave)
            slave.start()
        wait_until(lambda: b"Nuser\x1fs2" in db_records(fe), 30, "ub's mailbox on the frontend")
        assert db_records(fe)[b"Nuser\x1fs1"].startswith(b"%(T er P default S be1 M ")
        wait_until(lambda: b"Nuser\x1fs1" in db_records(ub), 30, "be1's mailbox on ub")
        assert db_records(ub)[b"Nuser\x1fs2"] == local_before
        ok = True
    finally:
        for slave in slaves:
            slave.stop()
        murder.stop_all()
        master.stop()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"node directories kept: {base}")

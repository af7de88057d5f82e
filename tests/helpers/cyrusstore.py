"""Helpers for our slave keeping a real Cyrus node's mailboxes.db (issue 3 interop tests).

``switch_off_cyrus_slave`` removes the node's own ``mupdate`` service from its cyrus.conf
and SIGHUPs its cyrmaster, which stops that service without a restart (cyrus-murder writes
cyrus.conf again at the node's next start). ``db_records`` reads the node's mailboxes.db
through Cyrus's own ``cyr_dbtool`` (as the cyrus user), raw keys and values.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from mupdate.cyrusdb import batch
from tests.helpers.cyrus import CyrusMurder, Node, wait_until
from tests.helpers.ourslave import OurSlave

DBTOOL = "/usr/lib/cyrus/bin/cyr_dbtool"
_MTIME = re.compile(rb" M \d+")


def _node_processes(node: Node, program: str) -> list[int]:
    conf = f"{node.dir}/imapd.conf"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(program.encode()) and conf.encode() in argv:
            pids.append(int(entry.name))
    return pids


def switch_off_cyrus_slave(murder: CyrusMurder, node: Node, timeout: float = 20.0) -> None:
    """Take the node's Cyrus ``mupdate`` (slave) service out of cyrus.conf, SIGHUP, wait."""
    conf = node.dir / "cyrus.conf"
    lines = conf.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith("mupdate cmd=")]
    if len(kept) == len(lines):
        raise AssertionError(f"{conf} has no mupdate service:\n{''.join(lines)}")
    conf.write_text("".join(kept))
    os.kill(murder.cyrmaster_pid(node), signal.SIGHUP)
    wait_until(
        lambda: not _node_processes(node, "/mupdate"),
        timeout,
        f"Cyrus's mupdate slave of {node.dir} to stop after SIGHUP",
    )


def db_records(node: Node, prefix: bytes = b"N") -> dict[bytes, bytes]:
    """Every record of the node's mailboxes.db under ``prefix``: raw key -> raw value."""
    argv = [
        "runuser", "-u", "cyrus", "--", DBTOOL, "-C", f"{node.dir}/imapd.conf",
        f"{node.dir}/conf/mailboxes.db", "twoskip", "batch",
    ]  # fmt: skip
    p = subprocess.run(argv, input=batch.show(prefix), capture_output=True, timeout=60)
    if p.returncode != 0 or p.stderr.strip():
        raise AssertionError(f"cyr_dbtool failed ({p.returncode}): {p.stderr!r}")
    parser = batch.OutputParser()
    records = parser.feed(p.stdout)
    assert parser.pending == 0, "cyr_dbtool output ended inside a record"
    return dict(records)


def consistent(node: Node) -> str:
    argv = [
        "runuser", "-u", "cyrus", "--", DBTOOL, "-C", f"{node.dir}/imapd.conf",
        f"{node.dir}/conf/mailboxes.db", "twoskip", "consistent",
    ]  # fmt: skip
    p = subprocess.run(argv, capture_output=True, timeout=60, text=True)
    return (p.stdout + p.stderr).strip()


def without_mtime(value: bytes) -> bytes:
    return _MTIME.sub(b" M *", value)


def dbtool_pids(node: Node) -> list[int]:
    """Our slave's cyr_dbtool children working on the node's mailboxes.db."""
    return _node_processes(node, "/cyr_dbtool")


def our_slave_on(
    node: Node,
    workdir: Path,
    *,
    master_address: str,
    servername: str,
    mode: str = "standard",
    port: int | None = None,
    extra: dict[str, str] | None = None,
) -> OurSlave:
    """Our slave keeping ``node``'s mailboxes.db and answering its kick socket."""
    return OurSlave(
        workdir,
        master_address=master_address,
        servername=servername,
        mode=mode,
        retry_delay=2,
        port=port,
        extra_config={
            "mupdate_slave_store": "cyrus",
            "mupdate_cyrus_config": f"{node.dir}/imapd.conf",
            **(extra or {}),
        },
    )

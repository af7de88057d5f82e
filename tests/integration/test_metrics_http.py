"""``mupdate_metrics_listen`` on real ``twistd`` processes: /metrics, /status, /health, and
``mupdate-client status --status-url`` (issue 8, items 1 and 3).

A master and a slave run as subprocesses with the HTTP listener on a free port. /metrics is
parsed with prometheus_client's own parser and every sample name is checked against the
names we publish; /status is checked field by field; /health is 200 when serving and 503
(with its reason) for a slave with an empty copy whose master is down, and for a master
whose commit waits on a database another process has locked. Failures are
provoked for real: a wrong password (SASL), a STARTTLS whose handshake gets junk (TLS), and
a unified slave re-announcing a local mailbox its master lost (heal). Waits are the
processes' bounded start-up polls (ourmaster.py) and bounded polls of /metrics for a count
the server updates when a connection ends; HTTP reads have timeouts.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.certs import Pki, session_pki  # noqa: F401 - fixture
from tests.helpers.cyrus import PortAllocator, repo_root, wait_until
from tests.helpers.ourmaster import OurMaster, _env, our_master_available
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import MupdateClient, literal

_WHY_NOT = our_master_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))

HISTOGRAM = ("_bucket", "_count", "_sum")
COMMON = {
    "mupdate_info",
    "mupdate_start_time_seconds",
    "mupdate_store_size_bytes",
    "mupdate_connections",
    "mupdate_connections_accepted_total",
    "mupdate_connections_refused_total",
    "mupdate_streams",
    "mupdate_stream_changes_total",
    "mupdate_entries",
    "mupdate_commands_total",
    "mupdate_tls_handshake_failures_total",
    *(f"mupdate_command_seconds{s}" for s in HISTOGRAM),
    *(f"mupdate_store_commit_batch_size{s}" for s in HISTOGRAM),
    *(f"mupdate_store_commit_seconds{s}" for s in HISTOGRAM),
}
PER_STREAM = {"mupdate_stream_queued_bytes"}  # one sample per open UPDATE stream
MASTER_ONLY = {
    "mupdate_tombstones",
    "mupdate_write_refusals_total",
    "mupdate_sasl_failures_total",
    "mupdate_protocol_errors_total",
}
SLAVE_ONLY = {
    "mupdate_sync_state",
    "mupdate_last_sync_timestamp_seconds",
    "mupdate_sync_lag_seconds",
    "mupdate_resyncs_total",
    "mupdate_resync_changes_total",
    "mupdate_slave_stream_changes_total",
    "mupdate_guard_refusals_total",
    "mupdate_brake_holds_total",
    "mupdate_brake_releases_total",
    "mupdate_brake_held",
    "mupdate_uplink_connected",
    "mupdate_uplink_connections_total",
    "mupdate_uplink_failures",
    *(f"mupdate_resync_seconds{s}" for s in HISTOGRAM),
}


def http_listen(port: int) -> dict[str, str]:
    return {"mupdate_metrics_listen": f"tcp:{port}:interface=127.0.0.1"}


def get(port: int, path: str) -> tuple[int, str, str]:
    """Status code, content type and body of one GET."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["content-type"], error.read().decode()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    code, content_type, body = get(port, "/metrics")
    assert code == 200
    assert content_type.startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def names(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {name for name, _ in samples}


def login(node: OurMaster) -> MupdateClient:
    c = MupdateClient.connect(node.host, node.port, timeout=20)
    c.authenticate_plain(node.admin, node.password)
    return c


def start_master(workdir: Path, **config: str) -> OurMaster:
    http = PortAllocator()()
    m = OurMaster(
        workdir,
        servername="m1",
        extra_config={**http_listen(http), "failedloginpause": "0", **config},
    )
    m.http = http  # type: ignore[attr-defined]
    m.start()
    return m


@pytest.fixture
def master(tmp_path):
    m = start_master(tmp_path / "master")
    yield m
    m.stop()


@pytest.fixture
def tls_master(tmp_path, session_pki: Pki):  # noqa: F811 - the imported fixture
    """A master offering STARTTLS (its certificate from the test PKI)."""
    pair = session_pki.server
    m = start_master(
        tmp_path / "master", tls_server_cert=str(pair.cert), tls_server_key=str(pair.key)
    )
    yield m
    m.stop()


def failed_starttls(node: OurMaster) -> None:
    """STARTTLS answered OK, then bytes that are no TLS ClientHello: the server's handshake
    fails and it closes the connection."""
    with MupdateClient.connect(node.host, node.port, timeout=20) as c:
        c.send_raw(b"T01 STARTTLS\r\n")
        assert c.read_until_tagged(b"T01").ok
        c.send_raw(b"this is not a TLS ClientHello\r\n" * 4)
        c.sock.settimeout(20)
        while c.sock.recv(4096):  # the server's alert, if any, then its close
            pass


def test_master_metrics_status_and_health(tls_master):
    master = tls_master
    port = master.http
    with login(master) as c:
        assert c.command("RESERVE", "user.a", "be1!p").ok
        assert c.command("RESERVE", "user.b", "be1!p").ok
        assert c.command("ACTIVATE", "user.a", "be1!p", "").ok
        assert not c.command("RESERVE", "user.a", "be2!p").ok
        c.send_raw(b"Y1 ZORK\r\n")
        assert c.read_until_tagged(b"Y1").raw.startswith(b"Y1 BAD")
    wrong = MupdateClient.connect(master.host, master.port, timeout=20)
    with wrong:
        plain = literal(base64.b64encode(b"\0admin\0nope"))
        wrong.send_raw(b'A01 AUTHENTICATE "PLAIN" ' + plain + b"\r\n")
        assert wrong.read_until_tagged(b"A01").raw.startswith(b"A01 NO")
    tls_failures = ("mupdate_tls_handshake_failures_total", frozenset())
    assert scrape(port)[tls_failures] == 0
    failed_starttls(master)
    wait_until(lambda: scrape(port)[tls_failures] == 1, 20, "the TLS failure to be counted")
    streamer = login(master)
    with streamer:
        streamer.send_raw(b"U01 UPDATE\r\n")
        assert streamer.read_until_tagged(b"U01").ok

        s = scrape(port)
        assert s[tls_failures] == 1
        assert names(s) == COMMON | MASTER_ONLY | PER_STREAM
        info = ("mupdate_info", frozenset({("role", "master"), ("servername", "m1"), ("version", "0.1.0")}))  # fmt: skip
        assert s[info] == 1
        assert s[("mupdate_commands_total", frozenset({("command", "RESERVE"), ("outcome", "ok")}))] == 2  # fmt: skip
        assert s[("mupdate_commands_total", frozenset({("command", "RESERVE"), ("outcome", "no")}))] == 1  # fmt: skip
        assert s[("mupdate_protocol_errors_total", frozenset({("outcome", "bad")}))] == 1
        assert s[("mupdate_sasl_failures_total", frozenset({("mechanism", "PLAIN")}))] == 1
        assert s[("mupdate_entries", frozenset({("state", "active")}))] == 1
        assert s[("mupdate_entries", frozenset({("state", "reserved")}))] == 1
        assert s[("mupdate_streams", frozenset())] == 1
        assert s[("mupdate_connections", frozenset({("state", "streaming")}))] == 1
        assert s[("mupdate_store_commit_batch_size_sum", frozenset())] >= 3
        assert s[("mupdate_store_size_bytes", frozenset())] > 0

        code, content_type, body = get(port, "/status")
        assert (code, content_type) == (200, "application/json")
        status = json.loads(body)
        assert status["role"] == "master"
        assert status["version"] == "0.1.0"
        assert status["servername"] == "m1"
        assert status["uptime_seconds"] >= 0
        assert status["store"]["path"] == str(master.store_dir / "mupdate.sqlite3")
        assert status["store"]["size_bytes"] > 0
        assert status["entries"] == {"total": 2, "active": 1, "reserved": 1}
        assert status["connections"]["streaming"] == 1
        assert status["streams"] == 1

    assert get(port, "/health") == (200, "text/plain; charset=utf-8", "ok\n")
    assert get(port, "/nothing")[0] == 404


def test_master_is_unhealthy_while_its_store_cannot_commit(master):
    """Another process holds the database's write lock: the master's commit waits for it
    (SQLite's busy timeout), the writer waits for its OK, and /health says so until the
    lock goes and the commit ends."""
    database = sqlite3.connect(master.store_dir / "mupdate.sqlite3", isolation_level=None)
    try:
        database.execute("BEGIN IMMEDIATE")
        with login(master) as c:
            c.send_raw(b'R1 RESERVE "user.locked" "be1!p"\r\n')
            wait_until(lambda: get(master.http, "/health")[0] == 503, 30, "a 503 from /health")
            code, _, body = get(master.http, "/health")
            assert code == 503
            assert re.fullmatch(r"unavailable: a store commit has been running for \d+ s\n", body)
            database.execute("ROLLBACK")
            assert c.read_until_tagged(b"R1").ok
        assert get(master.http, "/health") == (200, "text/plain; charset=utf-8", "ok\n")
    finally:
        database.close()


def make_slave(tmp_path: Path, master_address: str, **kw: object) -> OurSlave:
    http = PortAllocator()()
    slave = OurSlave(
        tmp_path / "slave",
        master_address=master_address,
        servername="fe1",
        retry_delay=1,
        extra_config={**http_listen(http), "mupdate_retry_max": "3"},
        **kw,  # type: ignore[arg-type]
    )
    slave.http = http  # type: ignore[attr-defined]
    return slave


def test_slave_metrics_status_and_health_once_synced(tmp_path, master):
    with login(master) as c:
        assert c.command("ACTIVATE", "user.a", "be1!p", "").ok
        assert c.command("RESERVE", "user.b", "be2!p").ok
    slave = make_slave(tmp_path, master.address)
    slave.start()
    try:
        with login(slave) as reader:  # an empty slave answers only after its first sync
            assert reader.find("user.a") is not None
        s = scrape(slave.http)
        assert names(s) == COMMON | SLAVE_ONLY
        assert s[("mupdate_sync_state", frozenset({("state", "synced")}))] == 1
        assert s[("mupdate_resyncs_total", frozenset())] == 1
        assert s[("mupdate_resync_changes_total", frozenset())] == 2
        assert s[("mupdate_resync_seconds_count", frozenset())] == 1
        assert s[("mupdate_uplink_connected", frozenset())] == 1
        assert s[("mupdate_entries", frozenset({("state", "active")}))] == 1
        info = ("mupdate_info", frozenset({("role", "slave"), ("servername", "fe1"), ("version", "0.1.0")}))  # fmt: skip
        assert s[info] == 1

        status = json.loads(get(slave.http, "/status")[2])
        assert status["role"] == "slave"
        assert status["servername"] == "fe1"
        assert status["master"] == master.address
        assert status["mode"] == "standard"
        assert status["store"]["path"] == str(slave.store_dir / "mupdate-slave.sqlite3")
        assert status["entries"] == {"total": 2, "active": 1, "reserved": 1}
        assert status["sync"]["state"] == "synced"
        assert status["sync"]["resyncs"] == 1
        assert status["sync"]["last_sync"] is not None
        assert 0 <= status["sync"]["lag_seconds"] < 60
        assert status["brake"] == {"held": None, "holds": 0, "releases": 0}
        assert status["guard_refusals"] == 0
        assert status["heal"] is None
        assert get(slave.http, "/health") == (200, "text/plain; charset=utf-8", "ok\n")

        shown = run_client("status", "--status-url", f"127.0.0.1:{slave.http}")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert any(line.split() == ["role:", "slave"] for line in lines), lines
        assert any(line.split() == ["sync.state:", "synced"] for line in lines), lines
        assert any(line.split() == ["master:", master.address] for line in lines), lines
        as_json = run_client("--json", "status", "--status-url", f"http://127.0.0.1:{slave.http}")
        record = json.loads(as_json.stdout)
        assert record["kind"] == "status"
        assert record["sync"]["state"] == "synced"
    finally:
        slave.stop()


def cyrus_header(partition: Path, name: str) -> None:
    directory = partition.joinpath(*name.split("."))
    directory.mkdir(parents=True)
    (directory / "cyrus.header").write_bytes(b"\xa1\x02\x8b\x0dCyrus mailbox header\n")


def test_unified_slave_heal_actions_are_scraped(tmp_path, master):
    """A unified backend's slave re-announces a local mailbox (a cyrus.header on its
    partition) that the master no longer lists: one heal action, result healed."""
    partition = tmp_path / "be1-spool"
    cyrus_header(partition, "user.local")
    with login(master) as c:
        assert c.command("ACTIVATE", "user.local", "be1!default", "o\tlrs\t").ok
        assert c.command("ACTIVATE", "user.other", "be2!default", "").ok
    slave = make_slave(tmp_path, master.address, mode="unified", partitions={"default": partition})
    slave.servername = "be1"
    slave.start()  # its copy now holds user.local at its own location
    with login(slave) as reader:
        assert reader.find("user.local") is not None
    slave.stop()
    with login(master) as c:  # the master loses it while the slave is away
        assert c.command("DELETE", "user.local").ok
        assert c.find("user.local") is None
    slave.start()
    try:
        healed = ("mupdate_heal_actions_total", frozenset({("result", "healed")}))
        wait_until(lambda: scrape(slave.http).get(healed) == 1, 30, "the heal to be counted")
        s = scrape(slave.http)
        assert names(s) == COMMON | SLAVE_ONLY | {"mupdate_heal_actions_total"}
        assert s[("mupdate_heal_actions_total", frozenset({("result", "conflict")}))] == 0
        assert s[("mupdate_heal_actions_total", frozenset({("result", "failed")}))] == 0
        with login(master) as c:
            back = c.find("user.local")
        assert back is not None
        assert back.location == b"be1!default"
        status = json.loads(get(slave.http, "/status")[2])
        assert status["heal"] == {"healed": 1, "conflicts": 0, "failures": 0}
        assert status["mode"] == "unified"
    finally:
        slave.stop()


def test_empty_slave_whose_master_is_down_is_unhealthy(tmp_path):
    nobody = PortAllocator()()  # nothing listens there
    slave = make_slave(tmp_path, f"127.0.0.1:{nobody}")
    slave.start()
    try:
        code, _, body = get(slave.http, "/health")
        assert code == 503
        assert body == (
            f"unavailable: no copy to serve yet: first sync with 127.0.0.1:{nobody} pending "
            "(disconnected)\n"
        )
        status = json.loads(get(slave.http, "/status")[2])
        assert status["sync"]["state"] == "disconnected"
        assert status["sync"]["last_sync"] is None
        assert status["sync"]["lag_seconds"] is None
        assert status["entries"] == {"total": 0, "active": 0, "reserved": 0}
        s = scrape(slave.http)
        assert s[("mupdate_sync_state", frozenset({("state", "disconnected")}))] == 1
        assert "mupdate_sync_lag_seconds" not in names(s)
    finally:
        slave.stop()


def test_client_status_url_without_a_listener_fails_cleanly():
    port = PortAllocator()()
    shown = run_client("status", "--status-url", f"127.0.0.1:{port}")
    assert shown.returncode == 4
    assert shown.stderr.startswith(f"mupdate-client: no status from http://127.0.0.1:{port}/status")


def run_client(*args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "mupdate.tools.client", *args],
        cwd=repo_root(),
        env=_env(repo_root()),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in p.stderr, p.stderr
    return p

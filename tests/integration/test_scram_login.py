"""SCRAM over real sockets: our slave logs in to our master (both `twistd` processes) with
the strongest SCRAM mechanism, and the exact §5.1 exchange holds on a raw socket."""

from __future__ import annotations

import base64
import time

import pytest

from mupdate.sasl import ScramClient
from tests.helpers.cyrus import wait_until
from tests.helpers.ourmaster import OurMaster
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import MupdateClient, literal


@pytest.fixture
def master(tmp_path):
    m = OurMaster(tmp_path / "master", servername="m1")
    m.start()
    yield m
    m.stop()


def test_master_offers_scram_first_and_the_raw_exchange_follows_section_5_1(master):
    with MupdateClient.connect(master.host, master.port) as c:
        assert c.mechanisms[:3] == [b"SCRAM-SHA-512", b"SCRAM-SHA-256", b"SCRAM-SHA-1"]
        client = ScramClient("SCRAM-SHA-512", master.admin, master.password, master.admin)
        first = base64.b64encode(client.initial() or b"")
        c.send_raw(b'A01 AUTHENTICATE "SCRAM-SHA-512" ' + literal(first) + b"\r\n")
        server_first = c._read_line(time.monotonic() + 15)
        final = base64.b64encode(client.respond(base64.b64decode(server_first)))
        c.send_raw(final + b"\r\n")
        verifier = base64.b64decode(c._read_line(time.monotonic() + 15))
        assert client.respond(verifier) == b""
        c.send_raw(b"\r\n")
        assert c.read_until_tagged(b"A01").status_line == b'A01 OK "Authenticated"\r\n'
        assert c.command(b"NOOP").ok


def test_our_slave_logs_in_to_our_master_with_scram(tmp_path, master):
    with MupdateClient.connect(master.host, master.port) as c:
        c.authenticate_plain(master.admin, master.password)
        assert c.command(b"RESERVE", "user.s", "be1!p").ok
    slave = OurSlave(
        tmp_path / "fe1",
        master_address=master.address,
        servername="fe1",
        retry_delay=1,
        extra_config={"mupdate_retry_max": "3"},
    )
    slave.start()
    try:
        with MupdateClient.connect(slave.host, slave.port) as s:
            s.authenticate_plain(slave.admin, slave.password)
            wait_until(lambda: s.find("user.s") is not None, 20, "the slave to sync")
        wait_until(
            lambda: "with SCRAM-SHA-512" in master.log_path.read_text(errors="replace"),
            10,
            "the master to log the slave's SCRAM login",
        )
        log = master.log_path.read_text(errors="replace")
        assert f"as {master.admin} with SCRAM-SHA-512" in log
        assert "failed login" not in log
    finally:
        slave.stop()

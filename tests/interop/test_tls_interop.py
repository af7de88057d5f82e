"""Interop over TLS with real Cyrus 3.6 daemons (issue 4; protocol doc §3.3, §5.2).

Topology (this module only; our master always, whatever MUPDATE_INTEROP_MASTER says):

    be1 (Cyrus backend)     --tap-be1--> our master (certificate from the test CA,
    fe1 (Cyrus frontend)    --tap-fe1--> mupdate_tls_required: yes, default mechanisms)
    cm  (Cyrus master, --tls, only SCRAM-SHA-256)  <--tap-cm-- our slave (STARTTLS required,
                                                   mupdate_tls_verify: no)

A Cyrus client starts TLS only when nothing it can use is offered in clear (§3.3 point 2):
our master offers no mechanism at all before TLS (``* AUTH`` empty), so the Cyrus backend and
the frontend's slave must STARTTLS; the taps show it. Cyrus's client does not verify our
certificate; ours cannot verify Cyrus's self-signed one, hence ``mupdate_tls_verify: no``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.certs import Pki, make_pki
from tests.helpers.cyrus import CyrusMurder, Node, Tap, wait_until
from tests.helpers.ourmaster import OurMaster
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import Entry, MupdateClient

pytestmark = pytest.mark.interop


def tls_login(host: str, port: int, ca: str, timeout: float = 15.0) -> MupdateClient:
    """A raw session: banner, STARTTLS, TLS verified against ``ca``, banner again, PLAIN."""
    c = MupdateClient.connect(host, port, timeout=timeout)
    c.send_raw(b"S01 STARTTLS\r\n")
    reply = c.read_response()
    assert reply.raw.startswith(b"S01 OK"), reply.raw
    context = ssl.create_default_context(cafile=ca)
    c.sock = context.wrap_socket(c.sock, server_hostname=host)
    c.greeting = []
    c._read_greeting()
    assert c.authenticate_plain("admin", "secret").ok
    return c


def wire(tap: Tap) -> list[str]:
    return [f"{x.direction} {x.text}" for x in tap.lines() if x.direction != "--"]


@dataclass
class Topology:
    murder: CyrusMurder
    pki: Pki
    master: OurMaster
    be1: Node
    be1_tap: Tap
    fe1: Node
    fe1_tap: Tap

    def master_list(self) -> list[bytes]:
        with tls_login(self.master.host, self.master.port, str(self.pki.ca)) as c:
            return [e.name for e in c.list()]


@pytest.fixture(scope="module")
def topo(murder: CyrusMurder, master_kind: str) -> Iterator[Topology]:
    if master_kind != "ours":
        pytest.skip("TLS interop runs our master against Cyrus nodes")
    pki = make_pki(murder.base_dir / "pki")
    for path in pki.directory.iterdir():
        path.chmod(0o644)  # Cyrus runs as the cyrus user
    master = OurMaster(
        murder.base_dir / "our-master",
        port=murder.free_port(),
        extra_config={
            "tls_server_cert": str(pki.server.cert),
            "tls_server_key": str(pki.server.key),
            "mupdate_tls_required": "yes",
            "allowplaintext": "no",
            "mupdate_loopback_plaintext": "no",
        },
    )
    master.start()
    try:
        be1_tap = murder.tap("tap-be1", to=master.address)
        be1 = murder.backend(
            "be1", servername="be1", mupdate=be1_tap.addr, extra=["--set", "unixhierarchysep=yes"]
        )
        fe1_tap = murder.tap("tap-fe1", to=master.address)
        fe1 = murder.frontend("fe1", mupdate=fe1_tap.addr, servername="fe1", extra=[])
        yield Topology(murder, pki, master, be1, be1_tap, fe1, fe1_tap)
    finally:
        master.stop()


def test_banner_offers_only_starttls_before_tls(topo: Topology) -> None:
    with MupdateClient.connect(topo.master.host, topo.master.port) as c:
        assert c.mechanisms == []
        kinds = [r.kind for r in c.greeting]
        assert kinds == [b"AUTH", b"STARTTLS", b"PARTIAL-UPDATE", b"OK"]


def test_cyrus_backend_starttls_then_create_reaches_our_master(topo: Topology) -> None:
    topo.murder.imap(topo.be1, ["create", "user/tlsalice"])
    names = topo.master_list()
    assert b"user.tlsalice" in names
    lines = wire(topo.be1_tap)
    assert "C> S01 STARTTLS" in lines, "\n".join(lines[:40])
    assert "<S S01 OK Begin TLS negotiation now" in lines
    # No AUTHENTICATE in clear: after the OK only TLS records pass the tap.
    assert not any(line.startswith("C> A01 AUTHENTICATE") for line in lines)
    # Under TLS, a default Cyrus 3.6 client took the strongest mechanism we offer.
    assert "with SCRAM-SHA-512" in topo.master.log_path.read_text(), topo.master.log_tail()


def test_cyrus_frontend_slave_syncs_from_our_master_over_tls(topo: Topology) -> None:
    topo.murder.imap(topo.be1, ["create", "user/tlsbob"])

    def on_frontend() -> bool:
        return any(rec.get("name") == "user.tlsbob" for rec in topo.murder.dump(topo.fe1))

    wait_until(on_frontend, 30, "user.tlsbob in the Cyrus frontend's mailboxes.db")
    lines = wire(topo.fe1_tap)
    assert "C> S01 STARTTLS" in lines, "\n".join(lines[:40])
    assert not any(line.startswith("C> A01 AUTHENTICATE") for line in lines)


def test_our_slave_syncs_from_a_cyrus_master_over_starttls_with_scram(topo: Topology) -> None:
    """A Cyrus master offering only SCRAM-SHA-256 (admin's secret in its sasldb) and
    STARTTLS: our slave, requiring STARTTLS, starts TLS first and then logs in with SCRAM
    under it (no -PLUS: Cyrus binds tls-unique, and the mechanism list has none)."""
    murder = topo.murder
    cm = murder.master("cm", servername="cyrus-master", extra=["--tls", "--mechs", "SCRAM-SHA-256"])
    tap = murder.tap("tap-cm", to=cm.mupdate_addr)
    with MupdateClient.connect("127.0.0.1", cm.mupdate_port) as c:
        assert any(r.kind == b"STARTTLS" for r in c.greeting), c.greeting
        assert c.mechanisms == [b"SCRAM-SHA-256"], c.greeting
    # Our raw helper only does PLAIN: Cyrus's own mupdatetest writes the entry with SCRAM.
    made = murder.mupdatetest(
        cm.mupdate_addr,
        'ACTIVATE "user.tlscarol" "be9!default" ""',
        cyrus=True,
        mech="SCRAM-SHA-256",
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert 'X01 OK "done"' in made.stdout, made.stdout
    slave = OurSlave(
        murder.base_dir / "our-slave",
        master_address=tap.addr,
        servername="fe9",
        master_username="admin",
        retry_delay=2,
        extra_config={"mupdate_tls_verify": "no", "mupdate_starttls": "required"},
    )
    try:
        slave.start()
        with MupdateClient.connect(slave.host, slave.port) as reader:
            assert reader.authenticate_plain("admin", "secret").ok
            found = wait_until(lambda: reader.find("user.tlscarol"), 30, "user.tlscarol")
            assert isinstance(found, Entry)
            assert found.location == b"be9!default", found
        log = slave.log_tail(300)
        assert "as admin with SCRAM-SHA-256 over TLS" in log, log
    finally:
        slave.stop()
    lines = wire(tap)
    assert "C> S01 STARTTLS" in lines, "\n".join(lines[:40])
    assert any(line.startswith("<S S01 OK") for line in lines)
    # Only TLS records after the OK: no AUTHENTICATE, no stream in clear.
    starttls = lines.index("C> S01 STARTTLS")
    assert not any(line.startswith("C> A01 ") for line in lines), "\n".join(lines[:40])
    assert all("UPDATE" not in line for line in lines[starttls:]), "\n".join(lines[:40])

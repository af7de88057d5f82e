"""TLS over real sockets on 127.0.0.1: our master and slave as twistd processes, our tools'
connection code in this process (issue 4: handshake, bad certificates refused, STARTTLS
stripping refused, implicit TLS, PLAIN withheld before TLS).
"""

from __future__ import annotations

import ssl
import warnings
from typing import Any

import pytest
import pytest_twisted

from mupdate.config.tls_settings import ClientTls
from mupdate.tools.connect import EXIT_CONNECTION, Target, ToolError, open_session
from tests.helpers.certs import Pki, session_pki  # noqa: F401 - fixture
from tests.helpers.cyrus import PortAllocator, wait_until
from tests.helpers.ourmaster import OurMaster
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import MupdateClient


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as installed  # the one pytest-twisted installed

    return installed


def tls_master(tmp_path, pki: Pki, pair=None, **extra: str) -> OurMaster:
    pair = pair or pki.server
    config = {"tls_server_cert": str(pair.cert), "tls_server_key": str(pair.key), **extra}
    master = OurMaster(tmp_path / "master", servername="m1", extra_config=config)
    master.start()
    return master


@pytest.fixture
def pki(session_pki: Pki) -> Pki:  # noqa: F811 - the imported fixture
    return session_pki


def target(master: OurMaster, **tls: Any) -> Target:
    return Target(master.host, master.port, "admin", "secret", timeout=10, tls=ClientTls(**tls))


# -- our tools' client --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_logs_in_over_starttls_with_verification(reactor, tmp_path, pki):
    master = tls_master(tmp_path, pki)
    try:
        client, info = await open_session(reactor, target(master, ca_file=pki.ca))
        assert client.tls_active
        assert b"STARTTLS" not in info.capabilities  # the banner re-sent under TLS
        await client.logout()
    finally:
        master.stop()


@pytest.mark.parametrize("which", ["expired", "wrong_host"])
@pytest_twisted.ensureDeferred
async def test_client_refuses_bad_certificates(reactor, tmp_path, pki, which):
    master = tls_master(tmp_path, pki, getattr(pki, which))
    try:
        with pytest.raises(ToolError) as info:
            await open_session(reactor, target(master, ca_file=pki.ca))
        assert info.value.code == EXIT_CONNECTION
        assert "TLS" in str(info.value)
    finally:
        master.stop()
    assert "failed login" not in master.log_tail(200)


@pytest_twisted.ensureDeferred
async def test_client_requiring_starttls_refuses_a_master_without_it(reactor, tmp_path):
    master = OurMaster(tmp_path / "master", servername="m1")  # offers no STARTTLS
    master.start()
    try:
        with pytest.raises(ToolError) as info:
            await open_session(reactor, target(master, starttls="required"))
        assert "does not offer STARTTLS" in str(info.value)
    finally:
        master.stop()
    assert "logged in" not in master.log_tail(200)


@pytest_twisted.ensureDeferred
async def test_implicit_tls_listener(reactor, tmp_path, pki):
    port = PortAllocator()()
    master = tls_master(tmp_path, pki, mupdate_tls_listen=f"tcp:{port}:interface=127.0.0.1")
    try:
        tgt = target(master, ca_file=pki.ca, implicit=True)
        tgt = Target(tgt.host, port, tgt.authname, tgt.password, timeout=10, tls=tgt.tls)
        client, info = await open_session(reactor, tgt)
        assert client.tls_active
        assert not client.engine.tls_active
        assert b"STARTTLS" not in info.capabilities
        await client.logout()
    finally:
        master.stop()


@pytest_twisted.ensureDeferred
async def test_plain_withheld_in_clear_when_loopback_plaintext_is_off(reactor, tmp_path):
    master = OurMaster(
        tmp_path / "master", servername="m1", extra_config={"sasl_mech_list": "PLAIN"}
    )
    master.start()
    try:
        with pytest.raises(ToolError) as info:
            await open_session(reactor, target(master, starttls="off", loopback_plaintext=False))
        assert "not sending the password in clear" in str(info.value)
    finally:
        master.stop()
    assert "failed login" not in master.log_tail(200)


# -- our slave following our master ------------------------------------------------------


def test_slave_syncs_from_master_over_starttls_with_verification(tmp_path, pki):
    master = tls_master(tmp_path, pki, sasl_mech_list="PLAIN", allowplaintext="no")
    with MupdateClient.connect(master.host, master.port) as c:
        c.authenticate_plain("admin", "secret")  # on loopback, in clear
        assert c.command(b"ACTIVATE", "user.tls", "be1!default", "").ok
    slave = OurSlave(
        tmp_path / "slave",
        master_address=master.address,
        servername="fe1",
        retry_delay=1,
        extra_config={
            "mupdate_starttls": "required",
            "tls_server_ca_file": str(pki.ca),
            "mupdate_loopback_plaintext": "no",
            "mupdate_retry_max": "3",
        },
    )
    try:
        slave.start()
        with MupdateClient.connect(slave.host, slave.port) as reader:
            reader.authenticate_plain("admin", "secret")
            wait_until(lambda: reader.find("user.tls") is not None, 15, "user.tls on the slave")
        assert "with PLAIN over TLS" in slave.log_tail(200)
    finally:
        slave.stop()
        master.stop()


# -- EXTERNAL: a client certificate instead of the password -------------------------------


def external_master(tmp_path, pki: Pki, client_ca) -> OurMaster:
    """A master that verifies client certificates against ``client_ca`` and offers nothing
    before TLS (``mupdate_tls_required``)."""
    return tls_master(tmp_path, pki, tls_client_ca_file=str(client_ca), mupdate_tls_required="yes")


@pytest_twisted.ensureDeferred
async def test_client_logs_in_with_external_from_its_certificate(reactor, tmp_path, pki):
    master = external_master(tmp_path, pki, pki.ca)
    cert = pki.client_admin
    try:
        tgt = target(master, ca_file=pki.ca, cert=cert.cert, key=cert.key)
        # The password is wrong on purpose: only the certificate can get this session in.
        tgt = Target(tgt.host, tgt.port, "admin", "not-the-password", timeout=10, tls=tgt.tls)
        client, info = await open_session(reactor, tgt)
        assert client.tls_active
        assert info.mechanisms[0] == "EXTERNAL"
        await client.logout()
    finally:
        master.stop()
    log = master.log_tail(200)
    assert "client certificate user: admin" in log, log
    assert "admin logged in from 127.0.0.1" in log
    assert "with EXTERNAL (a client certificate)" in log
    assert "failed login" not in log


@pytest_twisted.ensureDeferred
async def test_client_certificate_from_an_unknown_ca_is_refused(reactor, tmp_path, pki):
    # The master trusts only other_ca for clients; client_admin is signed by the test CA.
    master = external_master(tmp_path, pki, pki.other_ca)
    cert = pki.client_admin
    try:
        tgt = target(master, ca_file=pki.ca, cert=cert.cert, key=cert.key)
        with pytest.raises(ToolError) as info:
            await open_session(reactor, tgt)
        assert info.value.code == EXIT_CONNECTION
    finally:
        master.stop()
    log = master.log_tail(200)
    assert "client certificate user" not in log, log  # the handshake never completed
    assert "logged in" not in log


def test_slave_logs_in_to_master_with_external(tmp_path, pki):
    master = external_master(tmp_path, pki, pki.ca)
    cert = pki.client_admin
    slave = OurSlave(
        tmp_path / "slave",
        master_address=master.address,
        servername="fe1",
        master_password="not-the-password",  # EXTERNAL needs none; a wrong one proves it
        retry_delay=1,
        extra_config={
            "mupdate_starttls": "required",
            "tls_server_ca_file": str(pki.ca),
            "tls_client_cert": str(cert.cert),
            "tls_client_key": str(cert.key),
            "mupdate_retry_max": "3",
        },
    )
    try:
        with MupdateClient.connect(master.host, master.port) as c:
            assert c.mechanisms == []  # mupdate_tls_required: nothing before TLS
        slave.start()
        with MupdateClient.connect(slave.host, slave.port) as reader:
            reader.authenticate_plain("admin", "secret")
            wait_until(lambda: "logged in to master" in slave.log_tail(200), 15, "slave login")
        slave_log = slave.log_tail(200)
        assert "as admin with EXTERNAL over TLS" in slave_log, slave_log
    finally:
        slave.stop()
        master.stop()
    master_log = master.log_tail(200)
    assert "with EXTERNAL (a client certificate)" in master_log, master_log
    assert "failed login" not in master_log


# -- protocol versions: TLS 1.2 minimum by default, tls_versions to change it --------------

V = ssl.TLSVersion
#: Under OpenSSL 3, TLS 1.0 and 1.1 also need security level 0 (they sign with SHA-1):
#: tls_versions alone does not bring them back; tls_ciphers must lower the level too.
LEGACY = {"tls_versions": "tls1_1 tls1_2 tls1_3", "tls_ciphers": "DEFAULT:@SECLEVEL=0"}


def starttls_with(master: OurMaster, pki: Pki, maximum: ssl.TLSVersion) -> MupdateClient:
    """A raw session upgraded by a Python ``ssl`` client that offers at most ``maximum``
    (and anything from TLS 1.0 up: the client itself never stands in the way)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 / TLSv1_1 are deprecated
        context.minimum_version = V.TLSv1
        context.maximum_version = maximum
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    c = MupdateClient.connect(master.host, master.port, timeout=10)
    try:
        c.send_raw(b"S01 STARTTLS\r\n")
        assert c.read_response().raw.startswith(b"S01 OK"), c.transcript
        c.sock = context.wrap_socket(c.sock, server_hostname=master.host)
        c.greeting = []
        c._read_greeting()  # the banner again, under TLS
    except BaseException:
        c.close()
        raise
    return c


@pytest.mark.parametrize(
    ("config", "maximum", "expected"),
    [
        ({}, V.TLSv1, None),  # the default master: TLS 1.2 minimum
        ({}, V.TLSv1_1, None),
        ({}, V.TLSv1_2, "TLSv1.2"),
        (LEGACY, V.TLSv1_1, "TLSv1.1"),
        ({"tls_versions": "tls1_1 tls1_2 tls1_3"}, V.TLSv1_1, None),  # security level 2
        ({"tls_versions": "tls1_3"}, V.TLSv1_2, None),
        ({"tls_versions": "tls1_3"}, V.TLSv1_3, "TLSv1.3"),
    ],
    ids=["default-1.0", "default-1.1", "default-1.2", "legacy-1.1", "level-1.1", "1.3-1.2", "1.3"],
)
def test_master_tls_versions(tmp_path, pki, config, maximum, expected):
    if maximum in (V.TLSv1, V.TLSv1_1) and not (ssl.HAS_TLSv1 and ssl.HAS_TLSv1_1):
        pytest.skip("this Python's OpenSSL cannot speak TLS 1.0/1.1 at all")
    master = tls_master(tmp_path, pki, **config)
    try:
        if expected is None:
            with pytest.raises(ssl.SSLError) as info:
                starttls_with(master, pki, maximum)
            reason = str(info.value.reason)
            assert "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason, info.value
        else:
            with starttls_with(master, pki, maximum) as c:
                assert c.sock.version() == expected  # type: ignore[attr-defined]
                assert not any(r.kind == b"STARTTLS" for r in c.greeting)
                assert c.authenticate_plain("admin", "secret").ok
    finally:
        master.stop()
    assert ("logged in" in master.log_tail(200)) == (expected is not None)


def test_master_closes_a_tls_session_after_logout_without_waiting_for_the_client(tmp_path, pki):
    """LOGOUT over TLS: the master closes its side at once (TLS close_notify, then EOF), as
    it does in clear. It once waited for the client to close first (the output producer
    was still registered, so the TLS layer never began its shutdown), and a client that
    waits for the server's close, as Cyrus's mupdatetest does, hung."""
    master = tls_master(tmp_path, pki)
    try:
        with starttls_with(master, pki, V.TLSv1_3) as c:
            assert c.authenticate_plain("admin", "secret").ok
            c.send_raw(b"L01 LOGOUT\r\n")
            assert c.read_until_tagged(b"L01").ok, c.transcript
            c.sock.settimeout(10)  # a bound on a hang, not a figure
            rest = b""
            while chunk := c.sock.recv(4096):
                rest += chunk
            assert rest == b"", rest
    finally:
        master.stop()

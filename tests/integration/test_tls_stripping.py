"""STARTTLS stripping by a real man in the middle (issue 4; protocol doc §3.3, §5.2).

Our master offers STARTTLS and, in clear on loopback, PLAIN. A relay on 127.0.0.1
(``tests/helpers/striprelay.py``) deletes ``* STARTTLS`` from its banner. A client told to
require STARTTLS (our tool's connection code, our slave process) must refuse with a clear
error and send nothing an attacker could use: the relay records every byte the client sent,
and neither an AUTHENTICATE line nor the password may be among them.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from mupdate.config.tls_settings import ClientTls
from mupdate.tools.connect import EXIT_CONNECTION, Target, ToolError, open_session
from tests.helpers.certs import Pki, session_pki  # noqa: F401 - fixture
from tests.helpers.cyrus import wait_until
from tests.helpers.ourmaster import OurMaster
from tests.helpers.ourslave import OurSlave
from tests.helpers.striprelay import StrippingRelay

PASSWORD = "secret-never-on-the-wire"
#: What would give the password away: itself, and PLAIN's message in base64.
LEAKS = (
    b"AUTHENTICATE",
    PASSWORD.encode(),
    base64.b64encode(b"\0admin\0" + PASSWORD.encode()),
    base64.b64encode(PASSWORD.encode()),  # LOGIN's answer to "Password:"
)


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as installed  # the one pytest-twisted installed

    return installed


@pytest.fixture
def pki(session_pki: Pki) -> Pki:  # noqa: F811 - the imported fixture
    return session_pki


@pytest.fixture
def master(tmp_path, pki):
    """STARTTLS offered; PLAIN too in clear (allowplaintext: yes), so a client that fell
    back to plaintext would log in and show its password to the relay."""
    m = OurMaster(
        tmp_path / "master",
        servername="m1",
        password=PASSWORD,
        extra_config={
            "tls_server_cert": str(pki.server.cert),
            "tls_server_key": str(pki.server.key),
        },
    )
    m.start()
    yield m
    m.stop()


def assert_nothing_leaked(relay: StrippingRelay) -> None:
    for leak in LEAKS:
        assert leak not in relay.upstream, (leak, relay.upstream)


def tool_target(relay: StrippingRelay, pki: Pki) -> Target:
    tls = ClientTls(starttls="required", ca_file=pki.ca)
    return Target(relay.host, relay.port, "admin", PASSWORD, timeout=10, tls=tls)


@pytest_twisted.ensureDeferred
async def test_tool_requiring_starttls_refuses_a_stripped_banner(reactor, master, pki):
    with StrippingRelay(master.host, master.port) as relay:
        with pytest.raises(ToolError) as info:
            await open_session(reactor, tool_target(relay, pki))
        # The relay's threads finish recording once our side has closed the link.
        await deferToThread(relay.wait_for, lambda r: r.closed >= 1, 10, "the link to close")
        assert relay.dropped == [b"* STARTTLS"]  # the attack did happen
        assert_nothing_leaked(relay)
    assert info.value.code == EXIT_CONNECTION
    assert "does not offer STARTTLS and mupdate_starttls is required" in str(info.value)
    assert "logged in" not in master.log_tail(200)


@pytest_twisted.ensureDeferred
async def test_tool_through_the_same_relay_without_stripping_logs_in_over_tls(reactor, master, pki):
    # Control: the relay itself is transparent; only the deleted line made the difference.
    with StrippingRelay(master.host, master.port, drop=()) as relay:
        client, _ = await open_session(reactor, tool_target(relay, pki))
        assert client.tls_active
        await client.logout()
        await deferToThread(relay.wait_for, lambda r: r.closed >= 1, 10, "the link to close")
        assert relay.dropped == []
        assert relay.upstream.startswith(b"S01 STARTTLS\r\n")
        assert_nothing_leaked(relay)  # the password went under TLS
    assert "logged in from 127.0.0.1" in master.log_tail(200)


def test_slave_requiring_starttls_refuses_a_stripped_banner(tmp_path, master, pki):
    with StrippingRelay(master.host, master.port) as relay:
        slave = OurSlave(
            tmp_path / "slave",
            master_address=relay.address,
            servername="fe1",
            master_password=PASSWORD,
            retry_delay=1,
            extra_config={
                "mupdate_starttls": "required",
                "tls_server_ca_file": str(pki.ca),
                "mupdate_retry_max": "2",
            },
        )
        try:
            slave.start()
            refusal = "does not offer STARTTLS and mupdate_starttls is required"
            wait_until(lambda: refusal in slave.log_tail(200), 15, "the slave's refusal")
            relay.wait_for(lambda r: r.closed >= 2, 15, "two attempts, both ended")
        finally:
            slave.stop()
        assert relay.dropped[:2] == [b"* STARTTLS", b"* STARTTLS"]
        assert_nothing_leaked(relay)
    slave_log = slave.log_tail(200)
    assert "logged in to master" not in slave_log
    assert "logged in" not in master.log_tail(200)

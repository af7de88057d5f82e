"""SCRAM -PLUS over real TLS on 127.0.0.1: the production master (STARTTLS from the TLS
work) and our client bind the login to the server certificate (tls-server-end-point)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString

from mupdate.config.settings import MasterSettings
from mupdate.config.tls_settings import ClientTls, ServerTls
from mupdate.master.tap import MasterService
from mupdate.net.client import MupdateClientProtocol
from mupdate.net.login import secure_session
from mupdate.sasl.credentials import make_credential, write_credentials
from tests.helpers.certs import Pki, session_pki  # noqa: F401 - fixture

HOST = "127.0.0.1"
TIMEOUT = 10.0


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as installed

    return installed


@pytest_twisted.async_yield_fixture
async def tls_master(
    tmp_path: Path,
    reactor: Any,
    session_pki: Pki,  # noqa: F811 - the imported fixture
) -> AsyncIterator[int]:
    credentials = tmp_path / "credentials"
    write_credentials(credentials, {"admin": make_credential("pw", iterations=1000)})
    settings = MasterSettings(
        servername="tls.test",
        configdirectory=tmp_path,
        admins=frozenset({"admin"}),
        credentials=credentials,
        listen=(),
        loopback_plaintext=False,
        tls=ServerTls(cert=session_pki.server.cert, key=session_pki.server.key),
    )
    service = MasterService(settings, reactor)
    service.startService()
    port = await serverFromString(reactor, f"tcp:0:interface={HOST}").listen(service.factory)
    try:
        yield port.getHost().port
    finally:
        await port.stopListening()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_our_client_logs_in_with_scram_plus_after_starttls(
    tls_master: int,
    reactor: Any,
    session_pki: Pki,  # noqa: F811
) -> None:
    endpoint = TCP4ClientEndpoint(reactor, HOST, tls_master, timeout=TIMEOUT)
    client = await connectProtocol(endpoint, MupdateClientProtocol(reactor)).addTimeout(
        TIMEOUT, reactor
    )
    try:
        before = await client.greeted
        assert not any(m.endswith("-PLUS") for m in before.mechanisms)
        info = await Deferred.fromCoroutine(
            secure_session(client, ClientTls(ca_file=session_pki.ca), HOST)
        ).addTimeout(TIMEOUT, reactor)
        assert info.mechanisms[:3] == (
            "SCRAM-SHA-512-PLUS",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
        )
        assert client.channel_binding(info) is not None
        used = await client.authenticate("admin", "pw").addTimeout(TIMEOUT, reactor)
        assert used == "SCRAM-SHA-512-PLUS"
        await client.noop().addTimeout(TIMEOUT, reactor)
    finally:
        await client.close()

"""Our client Protocol against our master over real TCP on 127.0.0.1, in one process.

The master is the production ``MasterService`` (SQLite, worker threads, real password
hashes); we listen ourselves on port 0 and read the port back. Every wait is bounded, and
teardown waits for both ends' ``connectionLost``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from mupdate.config.settings import MasterSettings
from mupdate.master.tap import MasterService
from mupdate.net.client import AuthenticationFailed, CommandFailed, MupdateClientProtocol
from mupdate.protocol import Activate, DeleteLine, MailboxLine, Reserve, ReserveLine
from mupdate.sasl.credentials import hash_password, write_credentials

HOST = "127.0.0.1"
ADMIN = "admin"
PASSWORD = "it-secret"
TIMEOUT = 10.0

T = TypeVar("T")


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as installed  # the one pytest-twisted installed

    return installed


class TrackingWrapper(ProtocolWrapper):
    factory: TrackingFactory

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)  # the master's protocol has now seen it too
        self.factory.lost.pop(self).callback(None)


class TrackingFactory(WrappingFactory):
    """Knows when every server-side connection has seen ``connectionLost``."""

    protocol = TrackingWrapper

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.lost: dict[ProtocolWrapper, Deferred[None]] = {}

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)
        self.lost[p] = Deferred()


@dataclass
class Master:
    reactor: Any
    service: MasterService
    factory: TrackingFactory
    port: int
    clients: list[MupdateClientProtocol] = field(default_factory=list)

    async def wait(self, d: Deferred[T]) -> T:
        return await d.addTimeout(TIMEOUT, self.reactor)

    async def connect(self) -> MupdateClientProtocol:
        endpoint = TCP4ClientEndpoint(self.reactor, HOST, self.port, timeout=TIMEOUT)
        proto = await self.wait(connectProtocol(endpoint, MupdateClientProtocol(self.reactor)))
        self.clients.append(proto)
        await self.wait(proto.greeted)
        return proto

    async def login(self) -> MupdateClientProtocol:
        proto = await self.connect()
        assert await self.wait(proto.authenticate(ADMIN, PASSWORD)) == "PLAIN"
        return proto


@pytest_twisted.async_yield_fixture
async def master(tmp_path: Path, reactor: Any) -> AsyncIterator[Master]:
    credentials = tmp_path / "credentials"
    write_credentials(credentials, {ADMIN: hash_password(PASSWORD, iterations=1000)})
    settings = MasterSettings(
        servername="it.test",
        configdirectory=tmp_path,
        admins=frozenset({ADMIN}),
        credentials=credentials,
        listen=(),
        failed_login_pause=0.1,
    )
    service = MasterService(settings, reactor)
    service.startService()
    factory = TrackingFactory(service.factory)
    listening = await serverFromString(reactor, f"tcp:0:interface={HOST}").listen(factory)
    m = Master(reactor, service, factory, listening.getHost().port)
    try:
        yield m
    finally:
        await m.wait(Deferred.fromCoroutine(_teardown(m, listening)))


async def _teardown(m: Master, listening: Any) -> None:
    closing = [c.close() for c in m.clients]
    await DeferredList(closing)
    await listening.stopListening()
    await m.service.stopService()
    await DeferredList(list(m.factory.lost.values()))


@pytest_twisted.ensureDeferred
async def test_login_write_find_and_noop(master):
    c = await master.login()
    result = await master.wait(c.command(Reserve(b"", b"user.it", b"be1!default")))
    assert (result.tag, result.done.text) == (b"X0", b"done")
    found = await master.wait(c.find(b"user.it"))
    assert found == ReserveLine(b"X1", b"user.it", b"be1!default")
    with pytest.raises(CommandFailed) as refused:
        await master.wait(c.command(Reserve(b"", b"user.it", b"be2!default")))
    assert (refused.value.status, refused.value.text) == (b"NO", b"mailbox already exists")
    assert await master.wait(c.noop()) is None
    assert await master.wait(c.list(b"be1")) == [ReserveLine(b"X4", b"user.it", b"be1!default")]


@pytest_twisted.ensureDeferred
async def test_update_stream_sees_another_clients_write(master):
    writer = await master.login()
    await master.wait(writer.command(Reserve(b"", b"user.old", b"be1!p")))
    streamer = await master.login()
    seen: list[object] = []
    arrived: Deferred[None] = Deferred()

    def on_change(line: object) -> None:
        seen.append(line)
        if len(seen) == 2:
            arrived.callback(None)

    dump = await master.wait(streamer.update(on_change))
    assert dump == [ReserveLine(b"U01", b"user.old", b"be1!p")]
    await master.wait(writer.command(Activate(b"", b"user.new", b"be2!p", b"admin\tlrs\t")))
    await master.wait(writer.command(Activate(b"", b"user.old", b"be1!p", b"")))
    await master.wait(arrived)
    assert await master.wait(streamer.noop(prefix=b"N")) is None
    assert seen == [
        MailboxLine(b"U01", b"user.new", b"be2!p", b"admin\tlrs\t"),
        MailboxLine(b"U01", b"user.old", b"be1!p", b""),
    ]
    assert not any(isinstance(line, DeleteLine) for line in seen)


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_refused(master):
    c = await master.connect()
    with pytest.raises(AuthenticationFailed) as refused:
        await master.wait(c.authenticate(ADMIN, "wrong"))
    assert refused.value.text == b"authentication failed"


@pytest_twisted.ensureDeferred
async def test_logout_closes_the_connection(master):
    c = await master.login()
    assert await master.wait(c.logout()) is None
    assert c.closed.called
    await master.wait(DeferredList(list(master.factory.lost.values())))
    assert not master.service.factory.sessions

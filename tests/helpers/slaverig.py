"""Build a real slave (replica, handler, server factory, uplink) on in-memory parts for glue tests.

Nothing is mocked: ``Replica``, ``SlaveHandler``, ``MupdateServerFactory``, ``Uplink`` (its
``ClientService`` and prepare hook) and ``Healer`` are the production classes. The store is
the honest ``InMemoryStore``, blocking calls and partition scans run at once (or when a
``ManualRunner`` says), time is one ``Clock`` and the jitter is 0 unless given. The uplink's
endpoint connects each new protocol either

* to a ``MasterRig``'s server protocol through ``twisted.test.iosim`` (``FakeTransport``
  pairs; the test calls ``flush()`` to move bytes), or
* to a scripted master: a ``StringTransport`` the test feeds exact bytes (``ScriptedConn``).

A ``StringTransport`` never reports a close by itself: ``ScriptedConn.lose()`` delivers
``connectionLost`` (through ClientService's proxy, so the service hears it too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from twisted.test.iosim import connect as iosim_connect
from zope.interface import implementer

from mupdate.config.settings import SlaveSettings
from mupdate.db.index import MailboxIndex
from mupdate.model import MailboxEntry
from mupdate.net.server import MupdateServerFactory
from mupdate.protocol.texts import ROLE_SLAVE_PREFIX
from mupdate.sasl.credentials import CredentialsFile
from mupdate.slave.brake import BrakeSettings
from mupdate.slave.disk import SpoolLayout, header_roots
from mupdate.slave.guard import LocalFacts
from mupdate.slave.heal import Healer
from mupdate.slave.locality import DiskLocality
from mupdate.slave.replica import Replica
from mupdate.slave.service import SlaveHandler
from mupdate.slave.uplink import Uplink
from tests.helpers.glue import (
    ADMIN,
    PASSWORD,
    Conn,
    MasterRig,
    SyncChecker,
    immediate,
    quoted_b64,
    write_test_credentials,
)
from tests.helpers.memstore import InMemoryStore

MASTER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 3905)

#: What our master (``MasterRig``) greets with; a scripted master may send any other banner.
BANNER = (
    b'* AUTH "PLAIN" "LOGIN"\r\n* PARTIAL-UPDATE\r\n'
    b'* OK MUPDATE "master.test" "mupdate" "0.1" "(master)"\r\n'
)
#: The uplink's login against ``BANNER`` (PLAIN with an initial response, §5.1).
AUTH_LINE = b'A01 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{PASSWORD}") + b"\r\n"


class ScriptedConn:
    """One uplink connection to a master the test plays by hand, byte for byte."""

    def __init__(self, proto: Any, transport: StringTransport) -> None:
        self.proto = proto  # ClientService's proxy around our MupdateClientProtocol
        self.transport = transport
        self.lost = False

    def feed(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closing(self) -> bool:
        """The slave asked to close (loseConnection or abortConnection)."""
        return bool(self.transport.disconnecting)

    def lose(self, reason: BaseException | None = None) -> None:
        """The connection is gone: deliver ``connectionLost`` once."""
        if self.lost:
            return
        self.lost = True
        self.transport.disconnecting = True
        self.proto.connectionLost(Failure(reason or ConnectionDone()))

    def login(self, banner: bytes = BANNER) -> None:
        """Greet, check the uplink's AUTHENTICATE, accept it; the uplink then sends UPDATE."""
        self.feed(banner)
        assert self.take() == AUTH_LINE
        self.feed(b'A01 OK "Authenticated"\r\n')
        assert self.take() == b"U01 UPDATE\r\n"

    def sync(self, dump: bytes = b"", banner: bytes = BANNER) -> None:
        """Log in and answer UPDATE with ``dump`` and ``OK "streaming starts"``."""
        self.login(banner)
        self.feed(dump + b'U01 OK "streaming starts"\r\n')


class MasterPair:
    """One connection from the slave (uplink or healer) to a ``MasterRig``, through iosim."""

    def __init__(self, client: Any, server: Any, pump: IOPump) -> None:
        self.client = client
        self.server = server
        self.pump = pump

    @property
    def done(self) -> bool:
        return bool(self.pump.clientIO.disconnected and self.pump.serverIO.disconnected)


@implementer(IStreamClientEndpoint)
class RigEndpoint:
    """Connects each protocol at once to the rig's master (real or scripted).

    ``refuse`` makes the next connects fail as a refused TCP connect would.
    """

    def __init__(self, attach: Callable[[IProtocol], None]) -> None:
        self._attach = attach
        self.attempts = 0
        self.refuse = False

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError("refused by the test"))
        proto = protocolFactory.buildProtocol(MASTER_ADDRESS)
        assert proto is not None
        self._attach(proto)
        return succeed(proto)


class SlaveRig:
    """One slave, following ``master`` (a ``MasterRig``, via iosim) or a scripted master.

    ``entries`` is the copy from an earlier run; ``scan_runner`` runs partition scans (the
    production thread's stand-in), ``header_now`` replaces the per-name legacy header check
    (to count its calls), ``jitter`` is the retry jitter. Settings default to a
    standard slave ``be1`` logging in as the glue admin; keyword arguments replace any
    ``SlaveSettings`` field. ``release_brake()`` arms the one-shot operator release
    (``consume_release``).
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        master: MasterRig | None = None,
        clock: Clock | None = None,
        entries: Iterable[MailboxEntry] = (),
        runner: Callable[[Callable[[], object]], Deferred[object]] = immediate,
        scan_runner: Callable[[Callable[[], object]], Deferred[object]] = immediate,
        jitter: Callable[[], float] = lambda: 0.0,
        header_now: Callable[[bytes], bool] | None = None,
        **settings: Any,
    ) -> None:
        self.master = master
        self.clock = clock or (master.clock if master is not None else Clock())
        directory = tmp_path / "slave"
        directory.mkdir(exist_ok=True)
        base = SlaveSettings(
            servername="be1",
            configdirectory=directory,
            admins=frozenset({ADMIN}),
            credentials=write_test_credentials(directory),
            mupdate_server="master.test:3905",
            authname=ADMIN,
            password=PASSWORD,
        )
        self.settings = replace(base, **settings)
        self.store = InMemoryStore(entries)
        # Partition scans run where ``scan_runner`` says (at once by default), as tap builds it.
        self.locality = DiskLocality(
            header_roots(
                self.settings.partitions,
                self.settings.metapartitions,
                self.settings.metapartition_files,
                self.settings.header_metadirs,
            )
            if self.settings.unified
            else [],
            SpoolLayout(self.settings.hashimapspool, self.settings.fulldirhash),
            scan_runner,  # type: ignore[arg-type]  # fires with the scan's result
            self.clock,
            header_now=header_now,
        )
        self.on_disk = self.locality.on_disk
        # As tap.SlaveService builds it: the copy keeps the master's bytes.
        self.facts = LocalFacts(
            unified=self.settings.unified,
            own_servernames=self.settings.own_servernames,
            on_disk=self.on_disk,
            bare_location_is_local=False,
        )
        self._release_armed = False
        index = MailboxIndex(self.store.load_entries())
        self.replica = Replica(
            self.store,
            index,
            runner,
            self.facts,
            BrakeSettings(
                self.settings.brake_share, self.settings.brake_minimum, self.settings.brake_release
            ),
            self.settings.servername.encode(),
            self.clock.seconds,
            self._consume_release,
        )
        self.replica.resync_facts = replace(self.facts, on_disk=self.locality.scanned)
        self.replica.scan_partitions = self.locality.scan
        self.replica.rescan_for = self.locality.rescan_for
        role = ROLE_SLAVE_PREFIX + self.settings.mupdate_server.encode()
        self.handler = SlaveHandler(self.replica, role, ready=len(index) > 0)
        checker = SyncChecker(CredentialsFile(self.settings.credentials_path))
        self.factory = MupdateServerFactory(self.settings, self.handler, checker, self.clock)
        self.scripted: list[ScriptedConn] = []
        self.pairs: list[MasterPair] = []
        self.endpoint = RigEndpoint(self._attach)
        self.healer = (
            Healer(self.settings, self.endpoint, self.clock, self.on_disk)
            if self.settings.healing
            else None
        )
        self.uplink = Uplink(
            self.settings,
            self.replica,
            self.endpoint,
            self.clock,
            self.healer,
            self.handler.mark_ready,
            jitter=jitter,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.uplink.service.startService()

    def stop(self) -> Deferred[None]:
        return self.uplink.service.stopService()  # type: ignore[no-any-return]

    def release_brake(self) -> None:
        self._release_armed = True

    def _consume_release(self) -> bool:
        armed, self._release_armed = self._release_armed, False
        return armed

    # -- the master side ------------------------------------------------------------------

    def _attach(self, proto: IProtocol) -> None:
        if self.master is None:
            transport = StringTransport(peerAddress=MASTER_ADDRESS)
            proto.makeConnection(transport)
            self.scripted.append(ScriptedConn(proto, transport))
            return
        peer = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pairs))
        server = self.master.factory.buildProtocol(peer)
        pump = iosim_connect(
            server,
            FakeTransport(server, isServer=True, peerAddress=peer),
            proto,
            FakeTransport(proto, isServer=False, peerAddress=MASTER_ADDRESS),
            greet=False,
            clock=self.clock,
        )
        self.pairs.append(MasterPair(proto, server, pump))

    @property
    def conn(self) -> ScriptedConn:
        """The newest scripted connection."""
        assert self.scripted, "the uplink has not connected"
        return self.scripted[-1]

    def flush(self) -> None:
        """Move bytes on every iosim pair until all are quiet."""
        for _ in range(100):
            moved = False
            for pair in list(self.pairs):
                if not pair.done and pair.pump.flush():
                    moved = True
            if not moved:
                return
        raise AssertionError("the iosim pairs never went quiet")

    # -- the slave's own server (chained slaves, tools) -----------------------------------

    def connect(self, host: str = "127.0.0.1") -> Conn:
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 41000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 41000))
        proto.makeConnection(transport)
        return Conn(proto, transport)

    def login(self, host: str = "127.0.0.1") -> Conn:
        conn = self.connect(host)
        conn.take()
        reply = conn.send(AUTH_LINE)
        assert reply == b'A01 OK "Authenticated"\r\n', reply
        return conn

    # -- what the slave holds -------------------------------------------------------------

    def stored(self) -> dict[bytes, MailboxEntry]:
        return dict(self.store.entries)

    def indexed(self) -> list[MailboxEntry]:
        return list(self.replica.index.in_order())

"""Build a real master (handler, server factory) on in-memory parts for glue tests.

Nothing is mocked: the handler, rules, index, group committer, streams and the server
protocol are the production classes; the store is the honest in-memory one, the clock a
``Clock``, and blocking calls run either at once or when a test says so (``ManualRunner``),
so a test can hold a commit in flight and watch batches form.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mupdate.config.settings import MasterSettings
from mupdate.db.index import MailboxIndex
from mupdate.master.service import MasterHandler
from mupdate.net.server import MupdateServerFactory, MupdateServerProtocol
from mupdate.sasl.credentials import CredentialsFile, make_credential, write_credentials
from mupdate.sasl.scram import ScramKeys
from tests.helpers.memstore import InMemoryStore

ADMIN = "admin"
PASSWORD = "secret"


def immediate(call: Callable[[], object]) -> Deferred[object]:
    return maybeDeferred(call)


class ManualRunner:
    """Blocking calls wait here until ``run_next`` / ``run_all``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], object], Deferred[object]]] = []

    def __call__(self, call: Callable[[], object]) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.calls.append((call, d))
        return d

    def run_next(self) -> None:
        call, d = self.calls.pop(0)
        maybeDeferred(call).chainDeferred(d)

    def run_all(self) -> None:
        while self.calls:
            self.run_next()


class SyncChecker:
    def __init__(self, credentials: CredentialsFile) -> None:
        self.credentials = credentials

    def check(self, user: str, password: bytes) -> Deferred[bool]:
        return succeed(self.credentials.verify(user, password))

    def scram_mechanisms(self) -> frozenset[str]:
        return self.credentials.scram_mechanisms()

    def scram_keys(self, user: str, mechanism: str) -> ScramKeys | None:
        return self.credentials.scram_keys(user, mechanism)


def fast_credential(password: str) -> str:
    """Every verifier, with cheap iteration counts (SCRAM's minimum is 4096)."""
    return make_credential(password, iterations=1000, scram_iterations=4096)


def write_test_credentials(directory: Path, users: dict[str, str] | None = None) -> Path:
    path = directory / "credentials"
    users = users or {ADMIN: PASSWORD, "joe": "joepass"}
    write_credentials(path, {u: fast_credential(p) for u, p in users.items()})
    return path


class MasterRig:
    """One master and any number of connections to it."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        store: InMemoryStore | None = None,
        runner: Callable[[Callable[[], object]], Deferred[object]] = immediate,
        **settings: Any,
    ) -> None:
        self.clock = Clock()
        self.store = store or InMemoryStore()
        base = MasterSettings(
            servername="master.test",
            configdirectory=tmp_path,
            admins=frozenset({ADMIN}),
            credentials=write_test_credentials(tmp_path),
            failed_login_pause=3.0,
        )
        self.settings = replace(base, **settings)
        index = MailboxIndex(self.store.load_entries(), self.store.load_tombstones())
        self.handler = MasterHandler(
            index,
            self.store,
            runner,
            self.clock,
            self.settings.tombstone_window,
            authority=self.settings.authority,
        )
        checker = SyncChecker(CredentialsFile(self.settings.credentials_path))
        self.factory = MupdateServerFactory(self.settings, self.handler, checker, self.clock)

    def connect(self, host: str = "127.0.0.1") -> Conn:
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(transport)
        return Conn(proto, transport)

    def login(self, host: str = "127.0.0.1") -> Conn:
        conn = self.connect(host)
        conn.take()
        reply = conn.send(
            b'A01 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{PASSWORD}") + b"\r\n"
        )
        assert reply == b'A01 OK "Authenticated"\r\n', reply
        return conn


def quoted_b64(text: str) -> bytes:
    return b'"' + base64.b64encode(text.encode()) + b'"'


class Conn:
    def __init__(self, proto: MupdateServerProtocol, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        """Feed bytes; return everything written since the last take."""
        self.proto.dataReceived(data)
        return self.take()

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

"""What one master or slave process owns, and the order it lets go of it (style.md §5).

The data directory's lock, the SQLite store with its single worker thread, the threads that
run password checks (and the saslauthd client, with ``sasl_pwcheck_method: saslauthd``),
and the listeners: ``mupdate_listen`` endpoints (STARTTLS offered there when a certificate
is configured) and ``mupdate_tls_listen`` endpoints, TLS from the first byte (implicit TLS,
§3.3 point 4); and, with ``mupdate_metrics_listen``, the HTTP ``/metrics``, ``/status`` and
``/health`` listener. ``stopService`` stops listening, closes the sessions, waits until
every write already accepted is durable, and only then closes the store, so twistd exits
clean and an acknowledged write is never cut off.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mupdate import __version__
from mupdate.config.settings import ServerSettings
from mupdate.db.lock import DirectoryLock
from mupdate.db.sqlite import SqliteStore
from mupdate.db.store import MailboxStore
from mupdate.metrics import Metrics, ProcessCollector
from mupdate.net.saslauthd import SaslauthdChecker
from mupdate.net.server import MupdateServerFactory
from mupdate.net.status_http import StatusSource, status_site
from mupdate.sasl.credentials import CredentialsFile
from mupdate.sasl.scram import ScramKeys
from mupdate.status import ProcessFacts, store_size
from mupdate.tls import TlsConfigError, server_options

T = TypeVar("T")


class PasswordChecker:
    """Checks a PLAIN or LOGIN password with each ``sasl_pwcheck_method`` in turn until one
    accepts, as libsasl does: ``auxprop`` is the credentials file (the slow hash, on its own
    thread pool), ``saslauthd`` the daemon. SCRAM keys always come from the file."""

    def __init__(
        self,
        credentials: CredentialsFile,
        reactor: IReactorThreads,
        pool: ThreadPool,
        methods: tuple[str, ...] = ("auxprop",),
        saslauthd: SaslauthdChecker | None = None,
    ) -> None:
        self._credentials = credentials
        self._reactor = reactor
        self._pool = pool
        self._methods = methods
        self._saslauthd = saslauthd

    def check(self, user: str, password: bytes) -> Deferred[bool]:
        async def run() -> bool:
            for method in self._methods:
                if method == "saslauthd" and self._saslauthd is not None:
                    ok = await self._saslauthd.check(user, password)
                else:
                    verify = self._credentials.verify
                    ok = await deferToThreadPool(self._reactor, self._pool, verify, user, password)
                if ok:
                    return True
            return False

        return Deferred.fromCoroutine(run())

    def scram_mechanisms(self) -> frozenset[str]:
        return self._credentials.scram_mechanisms()

    def scram_keys(self, user: str, mechanism: str) -> ScramKeys | None:
        """Stored keys, read on the reactor thread: a stat, and a re-read of the small file
        only when it changed; no KDF."""
        return self._credentials.scram_keys(user, mechanism)


class StoreDaemon(MultiService):
    def __init__(
        self,
        settings: ServerSettings,
        reactor: Any,
        database: Path,
        name: str,
        store: Callable[[], MailboxStore] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        settings.configdirectory.mkdir(parents=True, exist_ok=True)
        self.lock = DirectoryLock(settings.configdirectory)
        self.lock.acquire()
        self.store_pool = ThreadPool(minthreads=1, maxthreads=1, name=f"{name}-store")
        self.auth_pool = ThreadPool(minthreads=1, maxthreads=2, name=f"{name}-auth")
        self.store: MailboxStore = store() if store is not None else SqliteStore(database)
        saslauthd = None
        if "saslauthd" in settings.pwcheck:
            path, timeout = settings.saslauthd_path, settings.saslauthd_timeout
            saslauthd = SaslauthdChecker(reactor, reactor, path, timeout)
        credentials = CredentialsFile(settings.credentials_path)
        self.checker = PasswordChecker(
            credentials, reactor, self.auth_pool, settings.pwcheck, saslauthd
        )
        self.factory: MupdateServerFactory | None = None
        self._drain: Callable[[], Deferred[None]] | None = None
        self.database = database
        self.started = reactor.seconds()
        self.metrics = Metrics()  # this process's registry: /metrics

    def run_blocking(self, call: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(self.reactor, self.store_pool, call)

    def serve(self, factory: MupdateServerFactory, drain: Callable[[], Deferred[None]]) -> None:
        """Listen on every configured endpoint; ``drain`` fires when accepted writes are durable."""
        self.factory = factory
        self._drain = drain
        tls = self.settings.tls
        if tls.enabled and factory.tls_options is None:
            try:
                factory.tls_options = server_options(tls)
            except TlsConfigError as exc:
                raise SystemExit(f"mupdate: TLS: {exc}") from None
        for description in self.settings.listen:
            self._listen(description, factory)
        options = factory.tls_options
        for description in tls.listen:
            if description.startswith("ssl:") or options is None:  # brings its own certificate
                self._listen(description, factory)
            else:
                self._listen(description, TLSMemoryBIOFactory(options, False, factory))

    def process_facts(self, role: str) -> ProcessFacts:
        name, now = self.settings.servername, self.reactor.seconds
        return ProcessFacts(role, name, __version__, self.database, self.started, now)

    def serve_status(self, source: StatusSource, role: str) -> None:
        """``/metrics``, ``/status`` and ``/health`` on each ``mupdate_metrics_listen``."""
        size = lambda: store_size(self.database)  # noqa: E731 - read at each scrape
        name = self.settings.servername
        self.metrics.add(ProcessCollector(role, __version__, name, self.started, size))
        site = status_site(self.metrics.exposition, source)
        for description in self.settings.metrics_listen:
            self._listen(description, site)

    def _listen(self, description: str, factory: Any) -> None:
        listener = StreamServerEndpointService(serverFromString(self.reactor, description), factory)
        listener._raiseSynchronously = True  # a port in use stops twistd at once
        listener.setServiceParent(self)

    def startService(self) -> None:
        self.store_pool.start()
        self.auth_pool.start()
        super().startService()

    @inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()  # listeners first: no new connections
        if self.factory is not None:
            for session in list(self.factory.sessions):
                if session.transport is not None:
                    session.transport.loseConnection()
        if self._drain is not None:
            yield self._drain()
        self.store_pool.callInThread(self.store.close)
        self.store_pool.stop()
        self.auth_pool.stop()
        self.lock.release()

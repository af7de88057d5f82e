"""``twistd mupdate-slave``: options, settings and the service tree (style.md §5).

A slave needs a config file: at least ``mupdate_server`` (the master) and
``mupdate_authname`` / ``mupdate_password`` (how it logs in there), plus ``admins`` and
``mupdate_credentials`` for who may read from it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from mupdate.config import (
    ConfigFileError,
    SettingsError,
    SlaveSettings,
    read_imapd_conf,
    slave_settings,
)
from mupdate.config.cyrus_store_settings import CyrusStoreSettings
from mupdate.cyrusdb.dbtool import DbTool, DbToolCommand
from mupdate.cyrusdb.store import CyrusMailboxStore
from mupdate.db.index import MailboxIndex
from mupdate.db.lock import DirectoryLocked
from mupdate.db.store import StoreError
from mupdate.logs import use_for_twistd
from mupdate.metrics import watch_slave
from mupdate.net.daemon import StoreDaemon
from mupdate.net.sdnotify import notify_systemd
from mupdate.net.server import MupdateServerFactory
from mupdate.protocol.texts import ROLE_SLAVE_PREFIX
from mupdate.slave.brake import BrakeSettings
from mupdate.slave.disk import SpoolLayout, header_roots
from mupdate.slave.guard import LocalFacts
from mupdate.slave.heal import Healer
from mupdate.slave.kick import KickFactory, KickSocketBusy, clear_stale_socket, listen_kick
from mupdate.slave.locality import DiskLocality
from mupdate.slave.replica import Replica
from mupdate.slave.service import SlaveHandler
from mupdate.slave.uplink import Uplink
from mupdate.status import SlaveStatus
from mupdate.tls import TlsConfigError, client_options

RELEASE_FILE = "mupdate-brake-release"


class Options(usage.Options):
    synopsis = "--config FILE [--port ENDPOINT ...] [--data-dir DIR]"
    optParameters = [  # noqa: RUF012 - twisted.python.usage API
        ["config", "c", None, "imapd.conf-style configuration file (Cyrus option names); required"],
        ["data-dir", "d", None, "directory for the slave's copy (overrides configdirectory)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []

    def opt_port(self, endpoint: str) -> None:
        """Listen on this Twisted endpoint, e.g. tcp:3905:interface=127.0.0.1 (repeatable)."""
        self["port"].append(endpoint)

    opt_p = opt_port

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required: a slave must know its master")
        try:
            self["settings"] = build_settings(self["config"], self["data-dir"], self["port"])
        except (ConfigFileError, SettingsError) as exc:
            raise usage.UsageError(str(exc)) from exc
        use_for_twistd(self, self["settings"].log, "mupdate-slave")  # mupdate_log_*: logs.py


def build_settings(config: str, data_dir: str | None, ports: list[str]) -> SlaveSettings:
    overrides: dict[str, object] = {}
    if data_dir:
        overrides["configdirectory"] = Path(data_dir)
    if ports:
        overrides["listen"] = tuple(ports)
    settings = slave_settings(
        read_imapd_conf(config),
        default_servername=socket.gethostname(),
        default_configdirectory=Path("mupdate-slave-data"),
        overrides=overrides,
    )
    if not settings.admins:
        raise SettingsError(
            "admins is empty: nobody could read from this slave (set 'admins: USER ...')"
        )
    return settings


def release_requested(directory: Path) -> bool:
    """The one-shot release of ``mupdate-slave-brake release``: consumed when used."""
    marker = directory / RELEASE_FILE
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    return True


class SlaveService(StoreDaemon):
    """The slave's process: its copy, the uplink to the master, the healer, listeners."""

    log = Logger()

    def __init__(self, settings: SlaveSettings, reactor: Any) -> None:
        cyrus = settings.cyrus_store
        if cyrus is None:
            super().__init__(settings, reactor, settings.database_path, "mupdate-slave")
        else:
            store = cyrus_store(settings, cyrus, reactor)
            super().__init__(settings, reactor, cyrus.database, "mupdate-slave", lambda: store)
        self.slave_settings = settings
        try:
            index = MailboxIndex(self.store.load_entries())
        except StoreError as exc:
            raise SystemExit(f"mupdate-slave: cannot read the copy: {exc}") from None
        self.scan_pool = ThreadPool(minthreads=0, maxthreads=1, name="mupdate-slave-scan")
        self.locality = DiskLocality(
            header_roots(
                settings.partitions,
                settings.metapartitions,
                settings.metapartition_files,
                settings.header_metadirs,
            )
            if settings.unified
            else [],
            SpoolLayout(settings.hashimapspool, settings.fulldirhash),
            lambda scan: deferToThreadPool(reactor, self.scan_pool, scan),
            reactor,
        )
        on_disk: Callable[[bytes], bool] = self.locality.on_disk
        scanned: Callable[[bytes], bool] = self.locality.scanned  # a resync's: no stat per name
        if isinstance(self.store, CyrusMailboxStore):
            # Cyrus's own test first: a record without a server in its mailboxes.db.
            on_disk = _either(self.store.is_local, on_disk)
            scanned = _either(self.store.is_local, scanned)
        # A bare location is a server name (a pointer elsewhere) in both stores: the SQLite
        # copy keeps the master's bytes, and the Cyrus store reads a local record back at
        # our servername.
        facts = LocalFacts(
            unified=settings.unified,
            own_servernames=settings.own_servernames,
            on_disk=on_disk,
            bare_location_is_local=False,
        )
        self.replica = Replica(
            self.store,
            index,
            self.run_blocking,
            facts,
            BrakeSettings(settings.brake_share, settings.brake_minimum, settings.brake_release),
            settings.servername.encode(),
            reactor.seconds,
            lambda: release_requested(settings.configdirectory),
        )
        self.replica.resync_facts = replace(facts, on_disk=scanned)
        self.replica.reload_before_resync = cyrus is not None
        self.replica.scan_partitions = self.locality.scan
        self.replica.rescan_for = self.locality.rescan_for
        self.replica.remove_delay = settings.remove_delay
        role = ROLE_SLAVE_PREFIX + settings.mupdate_server.encode()
        self.handler = SlaveHandler(self.replica, role, ready=len(index) > 0)
        factory = MupdateServerFactory(
            settings, self.handler, self.checker, reactor, metrics=self.metrics
        )
        self.serve(factory, self.replica.committer.barrier)
        host, port = settings.master_address
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, host, port, timeout=max(10, int(settings.retry_delay))
        )
        if settings.client_tls.implicit:  # mupdate_server: host:port/tls (§3.3 point 4)
            try:
                endpoint = wrapClientTLS(client_options(settings.client_tls, host), endpoint)
            except TlsConfigError as exc:
                raise SystemExit(f"mupdate-slave: TLS: {exc}") from None
        self.healer = Healer(settings, endpoint, reactor, on_disk) if settings.healing else None
        self.uplink = Uplink(
            settings, self.replica, endpoint, reactor, self.healer, self.handler.mark_ready
        )
        self.uplink.service.setServiceParent(self)
        self.kicks: KickFactory | None = None
        if settings.kick_socket is not None:
            try:
                clear_stale_socket(settings.kick_socket)
            except (KickSocketBusy, OSError) as exc:
                raise SystemExit(f"mupdate-slave: kick socket: {exc}") from None
            self.kicks = KickFactory(self.uplink.kick)
        watch_slave(self.metrics, factory, self.replica, self.uplink, self.healer, reactor.seconds)
        status = SlaveStatus(
            self.process_facts("slave"), factory, self.handler, self.uplink, self.healer
        )
        self.serve_status(status, "slave")

    def startService(self) -> None:
        self.scan_pool.start()
        super().startService()
        if self.slave_settings.realm:
            self.log.warn(
                "mupdate_realm is set but has no effect: it is the SASL realm of realm-aware "
                "mechanisms (Cyrus hands it to DIGEST-MD5), and none of ours (SCRAM, PLAIN, "
                "LOGIN, EXTERNAL) has one; logging in to the master as {user}",
                user=self.slave_settings.authname,
            )
        if self.kicks is not None and self.slave_settings.kick_socket is not None:
            self._kick_port = listen_kick(self.reactor, self.slave_settings.kick_socket, self.kicks)
        self.log.info(
            "mupdate slave {servername} ({state}) following {server}, {count} entries from {path}",
            servername=self.settings.servername,
            state=self.slave_settings.murder_mode,
            server=self.slave_settings.mupdate_server,
            count=len(self.replica.index),
            path=str(self.database),
        )

    def stopService(self) -> Any:
        self.locality.stop()  # a running scan ends at its next directory
        d = super().stopService()
        d.addBoth(self._stop_scan_pool)
        return d

    def _stop_scan_pool(self, result: object) -> object:
        self.scan_pool.stop()
        return result


def _either(
    first: Callable[[bytes], bool], then: Callable[[bytes], bool]
) -> Callable[[bytes], bool]:
    return lambda name: first(name) or then(name)


def cyrus_store(settings: SlaveSettings, cyrus: CyrusStoreSettings, reactor: Any) -> Any:
    """Cyrus's mailboxes.db behind a long-lived ``cyr_dbtool`` child (as the Cyrus user)."""
    try:
        uid, gid = cyrus.run_as() or (None, None)
    except SettingsError as exc:
        raise SystemExit(f"mupdate-slave: {exc}") from None
    command = DbToolCommand.batch(
        str(cyrus.dbtool), str(cyrus.imapd_conf), str(cyrus.database), cyrus.backend, uid, gid
    )
    tool = DbTool(reactor, reactor, command, cyrus.timeout)
    return CyrusMailboxStore(tool, reactor, settings.servername.encode(), cyrus.timeout)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    try:
        service = SlaveService(options["settings"], reactor)
    except DirectoryLocked as exc:
        raise SystemExit(f"mupdate-slave: {exc}: is another slave running?") from exc
    # Under systemd (Type=notify): READY=1 once it has a copy to serve (sdnotify.py).
    assert service.factory is not None
    facts = service.process_facts("slave")
    status = SlaveStatus(facts, service.factory, service.handler, service.uplink, service.healer)
    notify_systemd(service, reactor, status, service.handler.when_ready, os.environ)
    return service

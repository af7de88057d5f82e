"""``twistd mupdate-slave``: options, settings and the service tree (style.md §5).

A slave needs a config file: at least ``mupdate_server`` (the master) and
``mupdate_authname`` / ``mupdate_password`` (how it logs in there), plus ``admins`` and
``mupdate_credentials`` for who may read from it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python import usage

from mupdate.config import (
    ConfigFileError,
    SettingsError,
    SlaveSettings,
    read_imapd_conf,
    slave_settings,
)
from mupdate.db.index import MailboxIndex
from mupdate.db.lock import DirectoryLocked
from mupdate.logs import use_for_twistd
from mupdate.metrics import watch_slave
from mupdate.net.daemon import StoreDaemon
from mupdate.net.server import MupdateServerFactory
from mupdate.protocol.texts import ROLE_SLAVE_PREFIX
from mupdate.slave.brake import BrakeSettings
from mupdate.slave.disk import make_on_disk
from mupdate.slave.guard import LocalFacts
from mupdate.slave.heal import Healer
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
        super().__init__(settings, reactor, settings.database_path, "mupdate-slave")
        self.slave_settings = settings
        index = MailboxIndex(self.store.load_entries())
        on_disk = make_on_disk(path for _, path in settings.partitions)
        # The SQLite copy keeps the master's bytes: a bare location there is a server name
        # (a pointer elsewhere), not Cyrus's local record form.
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
        watch_slave(self.metrics, factory, self.replica, self.uplink, self.healer, reactor.seconds)
        status = SlaveStatus(
            self.process_facts("slave"), factory, self.handler, self.uplink, self.healer
        )
        self.serve_status(status, "slave")

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "mupdate slave {servername} ({state}) following {server}, {count} entries from {path}",
            servername=self.settings.servername,
            state=self.slave_settings.murder_mode,
            server=self.slave_settings.mupdate_server,
            count=len(self.replica.index),
            path=str(self.slave_settings.database_path),
        )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    try:
        return SlaveService(options["settings"], reactor)
    except DirectoryLocked as exc:
        raise SystemExit(f"mupdate-slave: {exc}: is another slave running?") from exc

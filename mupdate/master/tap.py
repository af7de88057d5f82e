"""``twistd mupdate-master``: options, settings and the service tree (style.md §5).

With no ``--config`` the master runs on its embedded default: 127.0.0.1 port 3905, SQLite
in ``./mupdate-data`` (or ``--data-dir``), admin ``admin`` with a generated password that
is printed once and stored only as a salted hash.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService
from twisted.internet.defer import succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.logger import Logger
from twisted.python import usage

from mupdate.config import (
    ConfigFileError,
    MasterSettings,
    SettingsError,
    master_settings,
    read_imapd_conf,
)
from mupdate.db.index import MailboxIndex
from mupdate.db.lock import DirectoryLocked
from mupdate.logs import use_for_twistd
from mupdate.master.control import SOCKET_NAME, ControlFactory
from mupdate.master.service import MasterHandler
from mupdate.metrics import watch_master
from mupdate.net.daemon import StoreDaemon
from mupdate.net.sdnotify import notify_systemd
from mupdate.net.server import MupdateServerFactory
from mupdate.sasl.credentials import hash_password, write_credentials
from mupdate.status import MasterStatus

DEFAULT_DATA_DIR = Path("mupdate-data")
DEFAULT_ADMIN = "admin"


class Options(usage.Options):
    synopsis = "[--config FILE] [--port ENDPOINT ...] [--data-dir DIR]"
    optParameters = [  # noqa: RUF012 - twisted.python.usage API
        ["config", "c", None, "imapd.conf-style configuration file (Cyrus option names)"],
        [
            "data-dir",
            "d",
            None,
            "directory for the database and credentials (overrides configdirectory)",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []

    def opt_port(self, endpoint: str) -> None:
        """Listen on this Twisted endpoint, e.g. tcp:3905:interface=127.0.0.1 (repeatable;
        overrides mupdate_listen)."""
        self["port"].append(endpoint)

    opt_p = opt_port

    def postOptions(self) -> None:
        try:
            self["settings"] = build_settings(self["config"], self["data-dir"], self["port"])
        except (ConfigFileError, SettingsError) as exc:
            raise usage.UsageError(str(exc)) from exc
        use_for_twistd(self, self["settings"].log, "mupdate-master")  # mupdate_log_*: logs.py


def build_settings(config: str | None, data_dir: str | None, ports: list[str]) -> MasterSettings:
    overrides: dict[str, object] = {}
    if data_dir:
        overrides["configdirectory"] = Path(data_dir)
    if ports:
        overrides["listen"] = tuple(ports)
    records = read_imapd_conf(config) if config else []
    if not config:
        overrides.setdefault("admins", frozenset({DEFAULT_ADMIN}))
    settings = master_settings(
        records,
        default_servername=socket.gethostname(),
        default_configdirectory=DEFAULT_DATA_DIR,
        overrides=overrides,
    )
    if not settings.admins:
        raise SettingsError("admins is empty: nobody could log in (set 'admins: USER ...')")
    return settings


def ensure_default_credential(settings: MasterSettings, out: TextIO) -> None:
    """First start on the embedded default: make an admin password and show it once."""
    path = settings.credentials_path
    if path.exists():
        return
    password = secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_credentials(path, {DEFAULT_ADMIN: hash_password(password)})
    out.write(
        f"mupdate-master: generated admin credential (shown once, stored hashed in {path}):\n"
        f"  user: {DEFAULT_ADMIN}\n  password: {password}\n"
    )
    out.flush()


class MasterService(StoreDaemon):
    """The master's process: its store, index, handler, listeners and housekeeping."""

    log = Logger()

    def __init__(self, settings: MasterSettings, reactor: Any) -> None:
        super().__init__(settings, reactor, settings.database_path, "mupdate")
        self.master_settings = settings
        self.index = MailboxIndex(self.store.load_entries(), self.store.load_tombstones())
        self.handler = MasterHandler(
            self.index,
            self.store,
            self.run_blocking,
            reactor,
            settings.tombstone_window,
            authority=settings.authority,
        )
        factory = MupdateServerFactory(
            settings, self.handler, self.checker, reactor, metrics=self.metrics
        )
        self.serve(factory, self.handler.committer.barrier)
        watch_master(self.metrics, factory, self.handler)  # /metrics, /status: status.py
        self.serve_status(
            MasterStatus(self.process_facts("master"), factory, self.handler), "master"
        )
        housekeeping = TimerService(
            min(3600.0, max(60.0, settings.tombstone_window / 10)), self.handler.expire_tombstones
        )
        housekeeping.clock = reactor
        housekeeping.setServiceParent(self)
        # Only one master holds this directory (the lock): a socket file left by a killed
        # one is stale and can go.
        control_path = settings.configdirectory / SOCKET_NAME
        control_path.unlink(missing_ok=True)
        control = StreamServerEndpointService(
            UNIXServerEndpoint(reactor, str(control_path), mode=0o600),
            ControlFactory(self.handler, reactor.seconds),
        )
        control.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "mupdate master {servername} serving {count} entries from {path} on {endpoint}",
            servername=self.settings.servername,
            count=len(self.index),
            path=str(self.master_settings.database_path),
            endpoint=" ".join(self.settings.listen),
        )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    settings: MasterSettings = options["settings"]
    if not options["config"]:
        ensure_default_credential(settings, sys.stdout)
    try:
        service = MasterService(settings, reactor)
    except DirectoryLocked as exc:
        raise SystemExit(f"mupdate-master: {exc}: is another master running?") from exc
    # Under systemd (Type=notify): READY=1 once listening, STATUS=, WATCHDOG=1 (sdnotify.py).
    assert service.factory is not None
    status = MasterStatus(service.process_facts("master"), service.factory, service.handler)
    notify_systemd(service, reactor, status, lambda: succeed(None), os.environ)
    return service

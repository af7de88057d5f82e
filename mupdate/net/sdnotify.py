"""systemd's readiness, status and watchdog messages (sd_notify(3)), sent here: no new
dependency (issue 8, item 3: a health check systemd can use).

Under ``Type=notify`` systemd gives the service ``$NOTIFY_SOCKET``: a unix datagram socket,
a path or, starting with ``@``, a name in the abstract namespace. Each message is one
datagram of newline-separated ``KEY=VALUE`` assignments. We send

* ``READY=1`` (with ``STATUS=``) once the process serves: a master once it listens, a slave
  once it has a copy to serve (at once with a copy from an earlier run, else after its
  first sync with its master), so units ordered after it start when it answers;
* ``STATUS=`` again whenever the one-line summary changes (``systemctl status`` shows it):
  entries, streams, connections, a slave's sync state and held brake, or why /health says
  503;
* ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` (``WatchdogSec=`` in the unit) from a reactor
  timer, so a reactor that stops turning stops the pings and systemd restarts the process;
* ``STOPPING=1`` when twistd stops the service.

Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) nothing is sent and no
timer runs. ``$WATCHDOG_PID``, when set, must be our pid (as sd_watchdog_enabled(3) checks).
The variables are taken out of the environment, as ``sd_notify(unset_environment=1)`` does,
so children (``cyr_dbtool``) do not inherit them. A send that fails is logged once and never
stops the service; a READY that could not be sent is sent again at the next tick.
Imports nothing from the sans-I/O core.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.net.status_http import StatusSource

#: How often the status line is refreshed when systemd asked for no watchdog.
STATUS_EVERY: Final = 5.0


@dataclass(frozen=True, slots=True)
class NotifyEnvironment:
    address: str  # a path, or "@name" (abstract namespace)
    watchdog: float | None  # seconds between WATCHDOG=1 pings, None: no watchdog


def take_environment(environ: MutableMapping[str, str], pid: int) -> NotifyEnvironment | None:
    """The notify socket and watchdog interval systemd handed us, removed from ``environ``."""
    address = environ.pop("NOTIFY_SOCKET", "")
    usec = environ.pop("WATCHDOG_USEC", "")
    watchdog_pid = environ.pop("WATCHDOG_PID", "")
    if not address.startswith(("/", "@")):
        return None  # unset, or a kind of socket we do not speak (vsock:)
    watchdog = None
    if usec.isdigit() and int(usec) > 0 and watchdog_pid in ("", str(pid)):
        watchdog = int(usec) / 2_000_000  # half the timeout, as sd_watchdog_enabled(3) advises
    return NotifyEnvironment(address, watchdog)


class Notifier:
    """Datagrams to the notify socket; ``send`` never raises and never blocks."""

    log = Logger()

    def __init__(self, address: str) -> None:
        self.path = address
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._warned = False

    def send(self, *assignments: str) -> bool:
        message = "\n".join(assignments).encode("utf-8", "backslashreplace")
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self.log.warn(
                    "cannot notify systemd at {path}: {reason}", path=self.path, reason=str(exc)
                )
            return False
        return True

    def close(self) -> None:
        self._sock.close()


def summary(source: StatusSource) -> str:
    """One line for ``systemctl status``, from the /status document and /health."""
    healthy, reason = source.health()
    if not healthy:
        return f"unavailable: {reason}"
    status = source.status()
    entries = _count(status.get("entries"), "total")
    connections = status.get("connections")
    open_connections = sum(connections.values()) if isinstance(connections, Mapping) else 0
    line = f"{entries} entries, {status.get('streams', 0)} streams, {open_connections} connections"
    sync = status.get("sync")
    if isinstance(sync, Mapping):
        line = f"{sync.get('state')} with {status.get('master')}: {line}"
        brake = status.get("brake")
        if isinstance(brake, Mapping) and brake.get("held") is not None:
            line += "; mass-delete brake held (mupdate-slave-brake status)"
    return line


def _count(section: object, key: str) -> object:
    return section.get(key, 0) if isinstance(section, Mapping) else 0


class SystemdNotifyService(Service):
    """READY, STATUS, WATCHDOG and STOPPING for one process; the last child of its
    MultiService, so it starts after the listeners and stops first."""

    log = Logger()

    def __init__(
        self,
        notifier: Notifier,
        clock: IReactorTime,
        source: StatusSource,
        ready: Callable[[], Deferred[None]],
        watchdog: float | None,
    ) -> None:
        self.notifier = notifier
        self.clock = clock
        self.source = source
        self.ready = ready
        self.watchdog = watchdog
        self._serving = False  # ready() fired
        self._told_ready = False  # READY=1 reached the socket
        self._shown: str | None = None  # the STATUS last sent
        self._waiting: Deferred[None] | None = None
        self._timer: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        waiting = self.ready()
        waiting.addCallback(lambda _: self.clock.callLater(0, self._now_serving))
        waiting.addErrback(self._not_ready)
        self._waiting = waiting
        self._timer = LoopingCall(self._tick)
        self._timer.clock = self.clock
        self._timer.start(self.watchdog or STATUS_EVERY, now=False).addErrback(
            lambda failure: self.log.failure("systemd notification timer failed", failure)
        )

    def _not_ready(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self.log.failure("waiting to tell systemd we are ready failed", failure)

    def _now_serving(self) -> None:
        """After every startService has run (callLater 0): the listeners are open."""
        if not self.running:
            return
        self._serving = True
        self._tell_ready()

    def _tell_ready(self) -> None:
        line = summary(self.source)
        if self.notifier.send("READY=1", f"STATUS={line}"):
            self._told_ready, self._shown = True, line
            self.log.info("told systemd we are ready: {state}", state=line)

    def _tick(self) -> None:
        if self._serving and not self._told_ready:
            self._tell_ready()
        assignments = ["WATCHDOG=1"] if self.watchdog else []
        line = summary(self.source)
        if line != self._shown:
            assignments.append(f"STATUS={line}")
        if assignments and self.notifier.send(*assignments):
            self._shown = line

    def stopService(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping: closing connections, committing")
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()
        super().stopService()
        self.notifier.close()


def notify_systemd(
    parent: MultiService,
    clock: IReactorTime,
    source: StatusSource,
    ready: Callable[[], Deferred[None]],
    environ: MutableMapping[str, str],
) -> SystemdNotifyService | None:
    """From a tap's ``makeService``: with ``$NOTIFY_SOCKET`` in ``environ``, add the
    notifying service as ``parent``'s last child; else nothing."""
    found = take_environment(environ, os.getpid())
    if found is None:
        return None
    service = SystemdNotifyService(Notifier(found.address), clock, source, ready, found.watchdog)
    service.setServiceParent(parent)
    return service


__all__ = [
    "Notifier",
    "NotifyEnvironment",
    "SystemdNotifyService",
    "notify_systemd",
    "summary",
    "take_environment",
]

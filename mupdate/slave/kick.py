"""The kick socket, ``<configdirectory>/socket/mupdate.target`` (protocol doc §9.6).

Cyrus's imapd and lmtpd on a frontend or unified backend connect here after each change
they made through the murder and block reading: the slave makes a NOOP round trip to the
master, so every change the master acknowledged before has arrived, waits until those
changes are in mailboxes.db, writes ``ok`` and closes. Kicks that arrive while a round trip
is on its way share the next one. A kick that cannot be answered within
``mupdate_kick_timeout`` (no master) is closed without ``ok``: the kicker only waits for
the close, and must never hang.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

OK = b"ok"


class KickSocketBusy(Exception):
    """Another process answers on the kick socket (Cyrus's own slave still running?)."""


class _Kick(Protocol):
    factory: KickFactory

    def connectionMade(self) -> None:
        self.factory.kicks += 1
        d = self.factory.synced()
        d.addBoth(self._answer)

    def _answer(self, synced: bool | Failure) -> None:
        if self.transport is None:
            return
        if synced is True:
            self.transport.write(OK)
            self.factory.answered += 1
        else:
            self.factory.unanswered += 1
        self.transport.loseConnection()


class KickFactory(Factory):
    """``synced()`` fires True once the copy holds what the master had acknowledged."""

    def buildProtocol(self, addr: Any) -> Protocol:
        kick = _Kick()
        kick.factory = self
        return kick

    def __init__(self, synced: Callable[[], Deferred[bool]]) -> None:
        self.synced = synced
        self.kicks = 0
        self.answered = 0
        self.unanswered = 0


log = Logger()


def clear_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse when somebody does."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise KickSocketBusy(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        path.unlink(missing_ok=True)  # left by a process that is gone
        return
    finally:
        probe.close()
    raise KickSocketBusy(
        f"something already answers on {path}: switch Cyrus's own mupdate service off "
        "(its line in cyrus.conf) before this slave takes its place"
    )


def listen_kick(reactor: Any, path: Path, factory: KickFactory) -> Any:
    """Listen on ``path`` (mode 0777, as Cyrus: imapd and lmtpd run as the Cyrus user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_socket(path)
    port = reactor.listenUNIX(os.fspath(path), factory, mode=0o777, wantPID=False)
    os.chmod(path, 0o777)
    log.info("answering kicks on {path}", path=os.fspath(path))
    return port

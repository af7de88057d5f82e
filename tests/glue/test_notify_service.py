"""mupdate/net/sdnotify.py: the environment systemd hands over, the datagrams, and the
service's READY / STATUS / WATCHDOG / STOPPING on a ``Clock`` (the process-level test with a
real twistd is tests/integration/test_sdnotify.py). The notify socket is a real unix
datagram socket bound by the test."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger

from mupdate.net.sdnotify import (
    STATUS_EVERY,
    Notifier,
    SystemdNotifyService,
    notify_systemd,
    summary,
    take_environment,
)


class Source:
    """A status source whose answers the test sets."""

    def __init__(self) -> None:
        self.healthy, self.reason = True, "ok"
        self.document: dict[str, object] = {
            "entries": {"total": 3, "active": 2, "reserved": 1},
            "streams": 1,
            "connections": {"not_authenticated": 0, "authenticated": 1, "streaming": 1},
        }

    def status(self) -> dict[str, object]:
        return self.document

    def health(self) -> tuple[bool, str]:
        return self.healthy, self.reason


@pytest.fixture
def notify_path(tmp_path):
    directory = tmp_path if len(str(tmp_path)) < 90 else Path(tempfile.mkdtemp(dir="/tmp"))
    return directory / "notify"


def bind(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


def received(sock: socket.socket) -> list[dict[str, str]]:
    """Every datagram queued now, as its assignments."""
    found = []
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536).decode()
            found.append(dict(line.split("=", 1) for line in data.split("\n")))
    except BlockingIOError:
        return found


# -- the environment ----------------------------------------------------------------------


def test_the_environment_is_taken_and_the_watchdog_pinged_at_half_its_timeout():
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "PATH": "/b"}
    found = take_environment(environ, pid=123)
    assert found is not None
    assert (found.address, found.watchdog) == ("/run/systemd/notify", 15.0)
    assert environ == {"PATH": "/b"}  # children do not inherit them


@pytest.mark.parametrize(
    ("environ", "watchdog"),
    [
        ({"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "123"}, 1.0),
        ({"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "99"}, None),
        ({"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "0"}, None),
        ({"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "soon"}, None),
        ({"NOTIFY_SOCKET": "@sd"}, None),
    ],
)
def test_the_watchdog_is_ours_only_when_systemd_says_so(environ, watchdog):
    found = take_environment(dict(environ), pid=123)
    assert found is not None
    assert found.watchdog == watchdog


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:9"}])
def test_no_usable_notify_socket_means_no_notifier(environ):
    assert take_environment(dict(environ), pid=1) is None
    parent = MultiService()
    assert notify_systemd(parent, Clock(), Source(), lambda: succeed(None), dict(environ)) is None
    assert list(parent) == []


# -- datagrams ----------------------------------------------------------------------------


def test_datagrams_reach_a_path_and_an_abstract_socket(notify_path):
    sock = bind(notify_path)
    assert Notifier(str(notify_path)).send("READY=1", "STATUS=fine")
    assert received(sock) == [{"READY": "1", "STATUS": "fine"}]
    name = f"mupdate-test-{os.getpid()}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind("\0" + name)
    assert Notifier("@" + name).send("WATCHDOG=1")
    assert received(abstract) == [{"WATCHDOG": "1"}]
    sock.close()
    abstract.close()


def test_a_failed_send_is_logged_once_and_never_raises(notify_path):
    events: list[dict[str, object]] = []
    notifier = Notifier(str(notify_path))  # nothing bound there
    notifier.log = Logger(observer=events.append)
    assert not notifier.send("READY=1")
    assert not notifier.send("WATCHDOG=1")
    assert len(events) == 1
    assert events[0]["path"] == str(notify_path)


# -- the status line ----------------------------------------------------------------------


def test_summary_of_a_master_a_slave_and_an_unhealthy_process():
    source = Source()
    assert summary(source) == "3 entries, 1 streams, 2 connections"
    source.document.update(master="m.example:3905", sync={"state": "synced"}, brake={"held": None})
    assert summary(source) == "synced with m.example:3905: 3 entries, 1 streams, 2 connections"
    source.document["brake"] = {"held": {"removals": 40}}
    assert summary(source).endswith("; mass-delete brake held (mupdate-slave-brake status)")
    source.healthy, source.reason = False, "a store commit has been running for 7 s"
    assert summary(source) == "unavailable: a store commit has been running for 7 s"


# -- the service on a Clock ---------------------------------------------------------------


def test_ready_only_once_serving_then_status_changes_pings_and_stopping(notify_path):
    sock = bind(notify_path)
    clock, source, serving = Clock(), Source(), Deferred()
    source.healthy, source.reason = False, "no copy to serve yet"
    service = SystemdNotifyService(Notifier(str(notify_path)), clock, source, lambda: serving, 0.5)
    service.startService()
    clock.advance(0.5)
    clock.advance(0.5)
    assert received(sock) == [
        {"WATCHDOG": "1", "STATUS": "unavailable: no copy to serve yet"},
        {"WATCHDOG": "1"},  # the status did not change
    ]
    source.healthy = True
    serving.callback(None)
    assert received(sock) == []  # READY waits for every startService to have run
    clock.advance(0)
    assert received(sock) == [{"READY": "1", "STATUS": "3 entries, 1 streams, 2 connections"}]
    source.document["streams"] = 2
    clock.advance(0.5)
    assert received(sock) == [{"WATCHDOG": "1", "STATUS": "3 entries, 2 streams, 2 connections"}]
    service.stopService()
    assert received(sock) == [
        {"STOPPING": "1", "STATUS": "stopping: closing connections, committing"}
    ]
    assert clock.getDelayedCalls() == []  # no timer left behind
    sock.close()


def test_a_ready_that_could_not_be_sent_is_sent_at_the_next_tick(notify_path):
    clock = Clock()
    notifier = Notifier(str(notify_path))
    notifier.log = Logger(observer=lambda event: None)
    service = SystemdNotifyService(notifier, clock, Source(), lambda: succeed(None), None)
    service.startService()
    clock.advance(0)  # READY=1 to a socket systemd has not bound yet: lost
    sock = bind(notify_path)
    clock.advance(STATUS_EVERY)  # no watchdog: the status timer
    assert received(sock) == [{"READY": "1", "STATUS": "3 entries, 1 streams, 2 connections"}]
    clock.advance(STATUS_EVERY)
    assert received(sock) == []  # nothing changed, no watchdog: nothing to say
    service.stopService()
    sock.close()


def test_stopping_before_ready_cancels_the_wait(notify_path):
    sock = bind(notify_path)
    clock, never = Clock(), Deferred()
    service = SystemdNotifyService(Notifier(str(notify_path)), clock, Source(), lambda: never, 1.0)
    service.startService()
    service.stopService()
    clock.advance(0)
    assert [m.get("READY") for m in received(sock)] == [None]  # only STOPPING
    assert clock.getDelayedCalls() == []
    sock.close()


def test_notify_systemd_adds_the_last_child(notify_path):
    parent = MultiService()
    MultiService().setServiceParent(parent)
    environ = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    service = notify_systemd(parent, Clock(), Source(), lambda: succeed(None), environ)
    assert service is not None
    assert list(parent)[-1] is service
    assert service.watchdog == 0.5
    assert environ == {}

"""The kick socket (§9.6): Cyrus's imapd and lmtpd connect, the slave answers ``ok`` once synced.

The socket tests listen on a real unix socket in a temporary directory, on the reactor
pytest-twisted runs, with a ``synced`` whose Deferreds the test fires. The ``Uplink.kick``
tests run the production uplink on the in-memory slave rig with a scripted master and a
``Clock``. Every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from mupdate.model import EntryState, MailboxEntry
from mupdate.slave.kick import KickFactory, KickSocketBusy, clear_stale_socket, listen_kick
from tests.helpers.glue import ManualRunner
from tests.helpers.slaverig import SlaveRig

WAIT = 10.0


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as installed  # the one pytest-twisted installed

    return installed


class FakeSynced:
    """``synced()`` for the factory: each call's Deferred is kept for the test to fire."""

    def __init__(self) -> None:
        self.pending: list[Deferred[bool]] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def __call__(self) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.pending.append(d)
        ready = [w for n, w in self._waiters if n <= len(self.pending)]
        self._waiters = [(n, w) for n, w in self._waiters if n > len(self.pending)]
        for w in ready:
            w.callback(None)
        return d

    def called(self, times: int = 1) -> Deferred[None]:
        """Fires once ``synced()`` was called ``times`` times in all."""
        d: Deferred[None] = Deferred()
        if len(self.pending) >= times:
            d.callback(None)
        else:
            self._waiters.append((times, d))
        return d


class Kicker(Protocol):
    """What Cyrus's kick_mupdate does: connect, read until the close."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(self.data)


@pytest.fixture
def sock_dir() -> Any:
    import tempfile

    # Short, so the path fits sun_path; removed with what it holds.
    with tempfile.TemporaryDirectory(prefix="kick-", dir="/tmp") as d:
        yield Path(d)


async def wait(reactor: Any, d: Deferred[Any]) -> Any:
    return await d.addTimeout(WAIT, reactor)


async def kick(reactor: Any, path: Path) -> Kicker:
    kicker = Kicker()
    await wait(reactor, connectProtocol(UNIXClientEndpoint(reactor, os.fspath(path)), kicker))
    return kicker


@pytest_twisted.async_yield_fixture
async def listening(reactor: Any, sock_dir: Path) -> Any:
    synced = FakeSynced()
    factory = KickFactory(synced)
    path = sock_dir / "socket" / "mupdate.target"
    port = listen_kick(reactor, path, factory)
    try:
        yield path, factory, synced
    finally:
        await wait(reactor, port.stopListening())


@pytest_twisted.ensureDeferred
async def test_socket_is_made_for_cyrus(listening):
    path, _, _ = listening
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o777


@pytest_twisted.ensureDeferred
async def test_kick_gets_ok_then_eof_when_synced(reactor, listening):
    path, factory, synced = listening
    kicker = await kick(reactor, path)
    await wait(reactor, synced.called())
    assert kicker.data == b""  # nothing until the copy is current
    synced.pending[0].callback(True)
    assert await wait(reactor, kicker.closed) == b"ok"
    assert (factory.kicks, factory.answered, factory.unanswered) == (1, 1, 0)


@pytest_twisted.ensureDeferred
async def test_kick_gets_eof_without_ok_when_not_synced(reactor, listening):
    path, factory, synced = listening
    kicker = await kick(reactor, path)
    await wait(reactor, synced.called())
    synced.pending[0].callback(False)
    assert await wait(reactor, kicker.closed) == b""
    assert (factory.kicks, factory.answered, factory.unanswered) == (1, 0, 1)


@pytest_twisted.ensureDeferred
async def test_failed_sync_closes_without_ok(reactor, listening):
    path, factory, synced = listening
    kicker = await kick(reactor, path)
    await wait(reactor, synced.called())
    synced.pending[0].errback(RuntimeError("no master"))
    assert await wait(reactor, kicker.closed) == b""
    assert factory.unanswered == 1


@pytest_twisted.ensureDeferred
async def test_kicker_gone_before_the_answer(reactor, listening):
    path, factory, synced = listening
    kicker = await kick(reactor, path)
    await wait(reactor, synced.called())
    assert kicker.transport is not None
    kicker.transport.loseConnection()
    await wait(reactor, kicker.closed)
    second = await kick(reactor, path)
    await wait(reactor, synced.called(2))
    synced.pending[1].callback(True)
    synced.pending[0].callback(True)  # its kicker is gone: no error
    assert await wait(reactor, second.closed) == b"ok"
    assert factory.kicks == 2


def test_clear_stale_socket_removes_a_dead_socket(sock_dir):
    path = sock_dir / "mupdate.target"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(path))
    dead.close()  # the file stays, nobody listens
    assert stat.S_ISSOCK(path.lstat().st_mode)
    clear_stale_socket(path)
    assert not path.exists()


def test_clear_stale_socket_without_a_file(sock_dir):
    clear_stale_socket(sock_dir / "none")  # nothing to do


def test_clear_stale_socket_refuses_a_plain_file(sock_dir):
    path = sock_dir / "mupdate.target"
    path.write_text("x")
    with pytest.raises(KickSocketBusy, match="is not a socket"):
        clear_stale_socket(path)
    assert path.exists()


def test_clear_stale_socket_refuses_a_live_listener(sock_dir):
    path = sock_dir / "mupdate.target"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(os.fspath(path))
        live.listen(1)
        with pytest.raises(KickSocketBusy, match="switch Cyrus's own mupdate service off"):
            clear_stale_socket(path)
        assert path.exists()
    finally:
        live.close()


@pytest_twisted.ensureDeferred
async def test_listen_kick_refuses_when_another_listens(reactor, listening, sock_dir):
    path, _, _ = listening
    with pytest.raises(KickSocketBusy):
        listen_kick(reactor, path, KickFactory(FakeSynced()))
    assert stat.S_ISSOCK(path.lstat().st_mode)  # the first listener's file is untouched


# -- Uplink.kick on the in-memory rig ------------------------------------------------------

PARTIAL = b'U01 MAILBOX "user.zed" "be9!p" ""\r\n'


def results(*ds: Deferred[bool]) -> list[object]:
    out: list[object] = []
    for d in ds:
        d.addBoth(out.append)
    return out


def streaming(tmp_path: Path, **settings: Any) -> SlaveRig:
    slave = SlaveRig(tmp_path, retry_delay=20, **settings)
    slave.start()
    slave.conn.sync(PARTIAL)
    assert slave.uplink.connected
    assert slave.conn.take() == b""
    return slave


def test_kick_is_answered_after_a_noop(tmp_path):
    slave = streaming(tmp_path)
    got = results(slave.uplink.kick())
    assert slave.conn.take() == b"N0 NOOP\r\n"
    assert got == []
    slave.conn.feed(b'N0 OK "Noop done"\r\n')
    assert got == [True]
    assert slave.uplink.kick_round_trips == 1


def test_kicks_during_a_noop_share_the_next_one(tmp_path):
    slave = streaming(tmp_path)
    first = results(slave.uplink.kick())
    assert slave.conn.take() == b"N0 NOOP\r\n"
    later = results(slave.uplink.kick(), slave.uplink.kick())
    assert slave.conn.take() == b""  # one round trip at a time
    slave.conn.feed(b'N0 OK "Noop done"\r\n')
    # The first NOOP was sent before the later kicks: it cannot answer them.
    assert (first, later) == ([True], [])
    assert slave.conn.take() == b"N1 NOOP\r\n"
    slave.conn.feed(b'N1 OK "Noop done"\r\n')
    assert later == [True, True]
    assert slave.uplink.kick_round_trips == 2
    assert slave.conn.take() == b""


def test_kick_waits_for_the_changes_before_the_ok_to_be_stored(tmp_path):
    runner = ManualRunner()
    slave = SlaveRig(tmp_path, runner=runner, retry_delay=20)
    slave.start()
    slave.conn.sync(PARTIAL)
    runner.run_all()  # the resync's transaction
    assert slave.uplink.connected
    slave.conn.feed(b'U01 MAILBOX "user.s" "be2!p" ""\r\n')
    assert len(runner.calls) == 1  # its commit is in flight
    got = results(slave.uplink.kick())
    assert slave.conn.take() == b"N0 NOOP\r\n"
    slave.conn.feed(b'N0 OK "Noop done"\r\n')
    assert got == []  # the master's OK is in; the change before it is not stored yet
    runner.run_all()
    assert got == [True]
    assert slave.stored()[b"user.s"] == MailboxEntry(b"user.s", EntryState.ACTIVE, b"be2!p")


def test_kick_times_out_to_false_when_the_master_does_not_answer(tmp_path):
    slave = streaming(tmp_path, kick_timeout=5.0)
    got = results(slave.uplink.kick())
    assert slave.conn.take() == b"N0 NOOP\r\n"
    slave.clock.advance(4.9)
    assert got == []
    slave.clock.advance(0.1)
    assert got == [False]
    # A late OK for it harms nothing, and the next kick gets a NOOP of its own.
    slave.conn.feed(b'N0 OK "Noop done"\r\n')
    again = results(slave.uplink.kick())
    assert slave.conn.take() == b"N1 NOOP\r\n"
    slave.conn.feed(b'N1 OK "Noop done"\r\n')
    assert again == [True]


def test_kick_without_a_master_times_out(tmp_path):
    slave = SlaveRig(tmp_path, kick_timeout=5.0)
    got = results(slave.uplink.kick())
    slave.clock.advance(5)
    assert got == [False]
    assert slave.uplink.kick_round_trips == 0


def test_kick_before_the_session_is_answered_once_streaming(tmp_path):
    slave = SlaveRig(tmp_path, retry_delay=20, kick_timeout=30.0)
    got = results(slave.uplink.kick())
    slave.start()
    slave.conn.sync(PARTIAL)
    assert slave.conn.take() == b"N0 NOOP\r\n"
    slave.conn.feed(b'N0 OK "Noop done"\r\n')
    assert got == [True]


def test_kick_outlives_a_lost_connection(tmp_path):
    slave = streaming(tmp_path, kick_timeout=60.0)
    got = results(slave.uplink.kick())
    assert slave.conn.take() == b"N0 NOOP\r\n"
    slave.conn.lose()
    assert got == []
    slave.clock.advance(20)  # the retry
    slave.conn.sync(PARTIAL)
    assert slave.conn.take() == b"N0 NOOP\r\n"  # a new session, a new NOOP for the kick
    slave.conn.feed(b'N0 OK "Noop done"\r\n')
    assert got == [True]

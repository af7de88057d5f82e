"""Password checks through a running saslauthd (issue 4, credentials; ``sasl_pwcheck_method:
saslauthd``), over its unix socket.

The daemon is the real one from Debian's sasl2-bin: ``saslauthd -d -a sasldb -m DIR -n 1``.
Its sasldb backend reads only the compiled-in /etc/sasldb2 (it has no option for another
file), so it runs in a private mount namespace (``unshare -m``) where a sasldb the test made
with ``saslpasswd2`` is bind-mounted over /etc/sasldb2: the host's file is neither read nor
touched. Needs root, saslauthd, saslpasswd2 and unshare; skipped otherwise.

Failure modes a healthy daemon cannot show (a daemon that never answers, one that answers
garbage) use small servers of our own on real unix sockets in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher

from mupdate.config.tls_settings import ClientTls
from mupdate.net.saslauthd import SaslauthdChecker
from mupdate.tools.connect import EXIT_AUTH, Target, ToolError, open_session
from tests.helpers.cyrus import wait_until
from tests.helpers.ourmaster import OurMaster
from tests.helpers.rawmupdate import MupdateClient, MupdateError

SASL_PASSWORD = "sasl-pw-4711"  # admin's password in the daemon's sasldb
FILE_PASSWORD = "file-pw-0815"  # admin's password in our credentials file


@dataclass
class Saslauthd:
    directory: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def socket(self) -> Path:
        return self.directory / "mux"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private mount namespace for the sasldb)"
    for tool in ("saslauthd", "saslpasswd2", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: sasl2-bin, util-linux)"
    return None


@pytest.fixture(scope="module")
def saslauthd() -> Iterator[Saslauthd]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    # Short: a unix socket path must fit in 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="saslauthd-", dir="/tmp"))
    sasldb = directory / "sasldb2"
    subprocess.run(
        ["saslpasswd2", "-f", str(sasldb), "-p", "-c", "admin"],
        input=SASL_PASSWORD.encode(),
        check=True,
        timeout=30,
    )
    run = directory / "run"
    run.mkdir()
    log = directory / "saslauthd.log"
    script = f'mount --bind "{sasldb}" /etc/sasldb2 && exec saslauthd -d -a sasldb -m "{run}" -n 1'
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # In the foreground (-d) saslauthd's master pid is 0, and on SIGTERM it sends
            # kill(-master_pid, SIGTERM): its whole process group, which must not be ours.
            start_new_session=True,
        )
    daemon = Saslauthd(run, proc, log)
    try:
        wait_until(
            lambda: proc.poll() is not None or "listening on socket" in daemon.log_text(),
            15,
            "saslauthd to listen",
        )
        if proc.poll() is not None:
            pytest.skip(f"saslauthd could not start here: {daemon.log_text()[-500:]}")
        yield daemon
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as installed  # the one pytest-twisted installed

    return installed


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log event of this process, formatted, while the test runs."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# -- the checker against the real daemon --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_real_saslauthd_accepts_the_right_password_only(reactor, saslauthd, logged):
    checker = SaslauthdChecker(reactor, reactor, saslauthd.socket, timeout=10)
    assert await checker.check("admin", SASL_PASSWORD.encode()) is True
    assert await checker.check("admin", b"wrong") is False
    assert await checker.check("nobody", SASL_PASSWORD.encode()) is False
    log = saslauthd.log_text()
    # What Cyrus's mupdate would send: service "mupdate", no realm.
    assert "auth success: [user=admin] [service=mupdate] [realm=] [mech=sasldb]" in log, log
    assert "auth failure: [user=nobody] [service=mupdate]" in log
    refusals = [line for line in logged if "refused" in line]
    assert any(f"saslauthd at {saslauthd.socket} refused admin" in line for line in refusals)
    assert not any(SASL_PASSWORD in line or "wrong" in line for line in logged)


def master_with(tmp_path: Path, saslauthd: Saslauthd, methods: str, mechs: str) -> OurMaster:
    master = OurMaster(
        tmp_path / "master",
        password=FILE_PASSWORD,
        extra_config={
            "sasl_pwcheck_method": methods,
            "sasl_saslauthd_path": str(saslauthd.socket),
            "sasl_mech_list": mechs,
            "failedloginpause": "0",
        },
    )
    master.start()
    return master


def test_master_checks_plain_with_saslauthd_alone(tmp_path, saslauthd):
    master = master_with(tmp_path, saslauthd, "saslauthd", "PLAIN")
    try:
        with MupdateClient.connect(master.host, master.port) as c:
            assert c.authenticate_plain("admin", SASL_PASSWORD).ok
        with (
            MupdateClient.connect(master.host, master.port) as c,
            pytest.raises(MupdateError, match="NO"),  # the file is not asked
        ):
            c.authenticate_plain("admin", FILE_PASSWORD)
    finally:
        master.stop()
    log = master.log_tail(300)
    assert "admin logged in from 127.0.0.1" in log, log
    assert f"saslauthd at {saslauthd.socket} refused admin" in log
    assert SASL_PASSWORD not in log
    assert FILE_PASSWORD not in log


@pytest_twisted.ensureDeferred
async def test_master_tries_the_file_then_saslauthd_for_login(reactor, tmp_path, saslauthd):
    master = master_with(tmp_path, saslauthd, "auxprop saslauthd", "LOGIN")
    try:
        for password in (FILE_PASSWORD, SASL_PASSWORD):  # each method accepts its own
            target = Target(master.host, master.port, "admin", password, timeout=10)
            client, info = await open_session(reactor, target)
            assert info.mechanisms == ("LOGIN",)
            await client.logout()
        wrong = Target(master.host, master.port, "admin", "neither", timeout=10, tls=ClientTls())
        with pytest.raises(ToolError) as refused:
            await open_session(reactor, wrong)
        assert refused.value.code == EXIT_AUTH
    finally:
        master.stop()
    log = master.log_tail(300)
    assert log.count("admin logged in from 127.0.0.1") == 2, log
    assert "neither" not in log


# -- failure modes: no daemon, a daemon that hangs, one that answers garbage ---------------


class _Silent(Protocol):
    """Reads the request and never answers; ``lost`` fires when the client gives up."""

    def __init__(self, lost: Deferred[None]) -> None:
        self.lost = lost

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class _Garbage(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"\x00\x05HELLO")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="fake-sasl-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_no_daemon_at_the_path_is_a_logged_refusal(reactor, socket_dir, logged):
    path = socket_dir / "mux"
    checker = SaslauthdChecker(reactor, reactor, path, timeout=5)
    assert await checker.check("admin", b"pw-not-logged") is False
    errors = [line for line in logged if "cannot check the password of admin" in line]
    assert len(errors) == 1
    assert str(path) in errors[0]
    assert not any("pw-not-logged" in line for line in logged)


@pytest_twisted.ensureDeferred
async def test_a_daemon_that_never_answers_times_out(reactor, socket_dir, logged):
    lost: Deferred[None] = Deferred()
    endpoint = UNIXServerEndpoint(reactor, str(socket_dir / "mux"))
    port = await endpoint.listen(Factory.forProtocol(lambda: _Silent(lost)))
    try:
        checker = SaslauthdChecker(reactor, reactor, socket_dir / "mux", timeout=0.5)
        started = reactor.seconds()
        assert await checker.check("admin", b"pw-not-logged") is False
        assert reactor.seconds() - started < 5
        await lost.addTimeout(5, reactor)  # we hung up: no connection left behind
    finally:
        await port.stopListening()
    errors = [line for line in logged if "cannot check the password of admin" in line]
    assert len(errors) == 1
    assert "no answer within 0.5 s" in errors[0], errors
    assert not any("pw-not-logged" in line for line in logged)


@pytest_twisted.ensureDeferred
async def test_a_reply_that_is_not_saslauthds_is_a_refusal(reactor, socket_dir, logged):
    endpoint = UNIXServerEndpoint(reactor, str(socket_dir / "mux"))
    port = await endpoint.listen(Factory.forProtocol(_Garbage))
    try:
        checker = SaslauthdChecker(reactor, reactor, socket_dir / "mux", timeout=5)
        assert await checker.check("admin", b"pw-not-logged") is False
    finally:
        await port.stopListening()
    errors = [line for line in logged if "cannot check the password of admin" in line]
    assert len(errors) == 1
    assert "not a saslauthd reply (neither OK nor NO)" in errors[0], errors
    assert not any("pw-not-logged" in line for line in logged)

"""sd_notify from real ``twistd mupdate-master`` / ``mupdate-slave`` processes (issue 8).

The test binds a unix datagram socket, as systemd's notify socket, and passes it as
``$NOTIFY_SOCKET`` (with ``$WATCHDOG_USEC``) to a twistd it starts; a thread reads the
datagrams as systemd does (a datagram socket queues only ~10 unread ones). Checked: READY=1
arrives only when the process serves (the master's port greets at once; a slave with an
empty copy stays unready while its master is down, then is ready after its first sync),
STATUS= says what it does, WATCHDOG=1 comes on a timer, STOPPING=1 on SIGTERM. (Without
$NOTIFY_SOCKET no notifier exists: tests/glue/test_notify_service.py.) Every wait is a
bounded ``queue.get`` or the helpers' bounded start-up poll; no sleeps.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.cyrus import PortAllocator
from tests.helpers.ourmaster import OurMaster, _env, our_master_available
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import MupdateClient

_WHY_NOT = our_master_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))

WATCHDOG_USEC = 300_000  # pings every 0.15 s


class NotifySocket:
    """systemd's side: a bound datagram socket and a thread that reads it."""

    def __init__(self, tmp_path: Path) -> None:
        directory = tmp_path if len(str(tmp_path)) < 90 else Path(tempfile.mkdtemp(dir="/tmp"))
        self.path = str(directory / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)  # how often the reader looks at `stopping`
        self.messages: queue.Queue[dict[str, str]] = queue.Queue()
        self.stopping = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if self.stopping.is_set():
                    return
                continue
            self.messages.put(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def next_where(self, wanted: Callable[[dict[str, str]], bool], timeout: float) -> tuple[dict[str, str], list[dict[str, str]]]:  # fmt: skip
        """The first message ``wanted`` accepts, and every message before it."""
        deadline = time.monotonic() + timeout
        before = []
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no such message within {timeout}s; got {before}"
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                raise AssertionError(f"no such message within {timeout}s; got {before}") from None
            if wanted(message):
                return message, before
            before.append(message)

    def close(self) -> None:
        self.stopping.set()
        self.reader.join(timeout=10)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(tmp_path)
    yield n
    n.close()


def start_notifying(node: OurMaster, notify: NotifySocket) -> subprocess.Popen[bytes]:
    """Start the node's twistd with the notify variables (only this process gets them),
    without waiting for its greeting: READY=1 is what tells the test it serves."""
    node.configure()
    env = {
        **_env(node.root),
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    log = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    with log:
        node.proc = subprocess.Popen(
            node.argv(),
            cwd=node.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return node.proc


def greets_at_once(node: OurMaster) -> bytes:
    """The first line on a fresh connection (within 5 s): the port is open and serving."""
    with socket.create_connection((node.host, node.port), timeout=5) as sock:
        sock.settimeout(5)
        data = b""
        while b"\r\n* OK" not in b"\r\n" + data and not data.startswith(b"* OK"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        return data


def test_master_is_ready_once_listening_then_pings_the_watchdog_and_says_stopping(tmp_path, notify):
    master = OurMaster(tmp_path / "master", servername="m1")
    proc = start_notifying(master, notify)
    try:
        ready, before = notify.next_where(lambda m: "READY" in m, 30)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == "0 entries, 0 streams, 0 connections"
        assert all("READY" not in m for m in before)
        assert b"* OK MUPDATE" in greets_at_once(master)  # READY came after the listen
        with MupdateClient.connect(master.host, master.port) as c:
            c.authenticate_plain(master.admin, master.password)
            assert c.command("RESERVE", "user.a", "be1!p").ok
            # a watchdog tick may repeat an older status first (during the login): the one
            # after the write must come
            status, _ = notify.next_where(
                lambda m: m.get("STATUS") == "1 entries, 0 streams, 1 connections", 30
            )
            assert "READY" not in status
        pings = [notify.next_where(lambda m: m.get("WATCHDOG") == "1", 10)[0] for _ in range(3)]
        assert len(pings) == 3
        master.stop()  # SIGTERM; twistd ends by that signal again once it stopped cleanly
        stopping, _ = notify.next_where(lambda m: "STOPPING" in m, 10)
        assert stopping["STOPPING"] == "1"
    finally:
        master.stop()
    assert proc.returncode is not None


def test_slave_with_an_empty_copy_is_ready_only_after_its_first_sync(tmp_path, notify):
    master_port = PortAllocator()()
    master = OurMaster(tmp_path / "master", servername="m1", port=master_port)
    slave = OurSlave(
        tmp_path / "slave",
        master_address=f"127.0.0.1:{master_port}",
        servername="fe1",
        retry_delay=1,
        extra_config={"mupdate_retry_max": "1"},
    )
    start_notifying(slave, notify)
    try:
        # Master down: the slave pings its watchdog and says why it is not ready, no READY.
        waiting, before = notify.next_where(lambda m: "STATUS" in m, 30)
        assert waiting["STATUS"] == (
            f"unavailable: no copy to serve yet: first sync with 127.0.0.1:{master_port} "
            "pending (disconnected)"
        )
        pings = [notify.next_where(lambda m: m.get("WATCHDOG") == "1", 10) for _ in range(3)]
        assert all("READY" not in m for _, seen in pings for m in seen)
        assert all("READY" not in m for m in before)
        master.start()
        ready, _ = notify.next_where(lambda m: "READY" in m, 60)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == (
            f"synced with 127.0.0.1:{master_port}: 0 entries, 0 streams, 0 connections"
        )
        greeting = greets_at_once(slave)  # serves at once: no waiting for a sync
        assert b"* OK MUPDATE" in greeting
        assert f'"mupdate://127.0.0.1:{master_port}"'.encode() in greeting
    finally:
        slave.stop()
        master.stop()
    stopping, _ = notify.next_where(lambda m: "STOPPING" in m, 10)
    assert stopping["STOPPING"] == "1"

"""Network faults against our master and slave as real processes on 127.0.0.1 (issue 7, item 2).

Connections cut mid-literal, mid-dump and mid-SASL; a master that stops answering without
closing (the slave's NOOP deadline); a stream reader that stops reading (``* BYE`` at
``mupdate_stream_buffer_max``, bounded memory); a flood beyond ``mupdate_connections_max``;
slowloris clients (``mupdate_login_timeout``, ``mupdate_idle_timeout``).

Faults that need a misbehaving network go through ``tests.helpers.relay.Relay`` (cut, freeze,
slow). What the master holds is read from its /metrics listener (open connections by state,
accepted and refused counts, streams), what the slave holds from its own LIST and from an
UPDATE stream chained on it. ``test_overflowed_stream_is_closed_once_its_bye_is_read`` found
that an overflowed stream stayed open after its ``* BYE`` until the 10 s abort timer (the
paused output queue was still the transport's producer); it now guards the fix. Every wait is bounded: socket reads have deadlines, polls of
/metrics or a log go through ``wait_until``, the relay's counters through ``Relay.wait_for``.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.cyrus import PortAllocator, wait_until
from tests.helpers.ourmaster import OurMaster, our_master_available
from tests.helpers.ourslave import OurSlave, our_slave_available
from tests.helpers.rawmupdate import (
    Entry,
    MupdateClient,
    MupdateError,
    literal,
    parse_responses,
)
from tests.helpers.relay import Relay

_WHY_NOT = our_master_available() or our_slave_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))

BYE_UNABLE = b'* BYE "Server Unable"\r\n\x00'
BYE_IDLE = b'* BYE "idle for too long"\r\n'
BYE_OVERFLOW = b'* BYE "output buffer full: reader too slow"\r\n'


# -- helpers ------------------------------------------------------------------------------


class Master(OurMaster):
    """Our master with its /metrics listener on a free port."""

    def __init__(self, workdir: Path, **config: str) -> None:
        self.metrics_port = PortAllocator()()
        config.setdefault("mupdate_metrics_listen", f"tcp:{self.metrics_port}:interface=127.0.0.1")
        super().__init__(workdir, servername="m1", extra_config=config)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics: ``name`` or ``name{label=value}`` -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = reply.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def open_connections(self) -> int:
        return int(
            sum(v for k, v in self.metrics().items() if k.startswith("mupdate_connections{"))
        )

    def wait_connections(self, count: int, what: str, timeout: float = 15.0) -> None:
        wait_until(lambda: self.open_connections() == count, timeout, what)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_no_traceback(self) -> None:
        text = self.log_text()
        assert "Traceback" not in text, self.log_tail(120)


@pytest.fixture
def make_master(tmp_path: Path) -> Iterator:
    started: list[Master] = []

    def make(name: str = "master", **config: str) -> Master:
        m = Master(tmp_path / name, **config)
        started.append(m)
        m.start()
        return m

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def make_relay() -> Iterator:
    started: list[Relay] = []

    def make(node: OurMaster) -> Relay:
        relay = Relay(node.host, node.port).start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.stop()


def make_slave(tmp_path: Path, master_address: str, name: str = "fe1") -> OurSlave:
    return OurSlave(
        tmp_path / name,
        master_address=master_address,
        servername=name,
        retry_delay=1,
        extra_config={"mupdate_retry_max": "2"},
    )


def connect(host: str, port: int, timeout: float = 15.0) -> MupdateClient:
    return MupdateClient.connect(host, port, timeout=timeout)


def login(node: OurMaster | Relay, timeout: float = 15.0) -> MupdateClient:
    c = connect(node.host, node.port, timeout)
    c.authenticate_plain("admin", "secret")
    return c


def stream(node: OurMaster) -> tuple[MupdateClient, list[Entry]]:
    c = login(node)
    c.send_raw(b"U01 UPDATE\r\n")
    dump = c.read_until_tagged(b"U01")
    assert dump.ok, dump.raw
    return c, dump.entries


def next_change(c: MupdateClient) -> tuple[bytes, tuple[bytes, ...]]:
    r = c.read_response()
    assert r.tag == b"U01", r.raw
    return r.kind, r.args


def write(node: OurMaster, *commands: tuple[str | bytes, ...]) -> None:
    with login(node) as c:
        for verb, *args in commands:
            verb_b = verb.encode() if isinstance(verb, str) else verb
            result = c.command(verb_b, *args)
            assert result.ok, result.raw


def pipelined_writes(c: MupdateClient, commands: list[tuple[bytes, ...]]) -> None:
    """Send every command at once, then read each tagged OK (one round trip in all)."""
    wire = bytearray()
    for i, (verb, *args) in enumerate(commands):
        wire += b"P%d " % i + verb + b"".join(b" " + literal(a) for a in args) + b"\r\n"
    c.send_raw(bytes(wire))
    for i in range(len(commands)):
        r = c.read_until_tagged(b"P%d" % i)
        assert r.ok, r.raw


def read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes; fails if it does not close in time."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"not closed within {timeout}s; received {bytes(data[-300:])!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        except TimeoutError:
            continue
        if not chunk:
            return bytes(data)
        data += chunk


def rest_to_eof(c: MupdateClient, timeout: float) -> bytes:
    """What the client had buffered plus everything until the peer closes."""
    return c._buf + read_to_eof(c.sock, timeout)


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status field in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


# -- 1. cut mid-literal ---------------------------------------------------------------------

NAME50 = b"user.cut-mid-literal-" + b"x" * 29  # 50 bytes
RESERVE = b"X1 RESERVE " + literal(NAME50) + b" " + literal(b"be1!default") + b"\r\n"
HEADER = len(b"X1 RESERVE {50+}\r\n")


@pytest.mark.parametrize(
    "keep",
    [
        HEADER - 3,  # inside the {50+} marker
        HEADER,  # the marker, no literal byte
        HEADER + 20,  # 20 of the 50 bytes
        len(RESERVE) - 2,  # everything but the final CRLF
    ],
    ids=["in-marker", "after-marker", "mid-literal", "no-crlf"],
)
def test_cut_mid_literal_leaves_master_and_store_intact(make_master, make_relay, keep):
    master = make_master()
    relay = make_relay(master)
    with login(master) as other, stream(master)[0] as watcher:
        victim = login(relay)
        with victim:
            assert master.open_connections() == 3
            relay.cut_after(up=keep)
            victim.send_raw(RESERVE)
            relay.wait_for(lambda r: r.cuts == 1, 10, "the cut")
            assert relay.forwarded_up >= keep
            assert rest_to_eof(victim, 10) == b""  # nothing answered: the command never ran
        master.wait_connections(2, "the cut session to go")
        assert other.find(NAME50) is None  # nothing half-written
        assert other.list() == []
        # other sessions carry on: a write, its stream line, and nothing before it
        assert other.command(b"RESERVE", b"user.after", b"be1!default").ok
        assert next_change(watcher) == (b"RESERVE", (b"user.after", b"be1!default"))
        assert watcher.command(b"NOOP").raw == b'T01 OK "Noop done"\r\n'
    master.assert_no_traceback()


# -- 2. cut mid-dump ------------------------------------------------------------------------

ACL = b"".join(b"user%02d\tlrswipkxtecdan\t" % i for i in range(40))  # ~1 KiB per entry


def populate(master: OurMaster, count: int) -> None:
    with login(master) as c:
        pipelined_writes(
            c,
            [(b"ACTIVATE", b"user.d%05d" % i, b"be1!default", ACL) for i in range(count)],
        )


def test_raw_update_dump_cut_partway_leaves_master_serving(make_master, make_relay):
    master = make_master()
    populate(master, 600)
    relay = make_relay(master)
    with login(relay) as reader:
        before = len(reader.transcript)
        relay.cut_after(down=300_000)
        reader.send_raw(b"U01 UPDATE\r\n")
        with pytest.raises(MupdateError, match="connection closed"):
            reader.read_until_tagged(b"U01")
        assert len(reader.transcript) == before + 300_000  # part of the dump, then the cut
    assert relay.cuts == 1
    master.wait_connections(0, "the cut streamer to go")
    assert master.metrics()["mupdate_streams"] == 0
    with login(master) as c:
        assert len(c.list()) == 600
    master.assert_no_traceback()


def test_slave_discards_a_dump_cut_partway_then_resyncs(tmp_path, make_master, make_relay):
    master = make_master()
    populate(master, 600)
    relay = make_relay(master)
    slave = make_slave(tmp_path, relay.address)
    slave.start()
    try:
        watcher, dump = stream(slave)  # readers are held until the first sync
        with watcher:
            assert len(dump) == 600
            with login(slave) as s:
                before = s.command(b"LIST").raw
            dump_size = len(before)
            # Every later connection through the relay is cut halfway through its dump.
            relay.cut_after(down=dump_size // 2, existing=False)
            assert relay.cut_all() == 1
            deleted = [b"user.d%05d" % i for i in range(0, 600, 60)]
            write(
                master,
                *((b"DELETE", n) for n in deleted),
                (b"ACTIVATE", b"user.new", b"be2!default", b""),
                (b"RESERVE", b"user.newr", b"be2!default"),
            )
            relay.wait_for(lambda r: r.cuts >= 3, 30, "two dumps cut partway")
            assert relay.forwarded_down > dump_size  # the dumps really were under way
            with login(slave) as s:
                assert s.command(b"LIST").raw == before  # byte for byte: nothing applied
            # and nothing went out to the slave's own streams
            assert watcher.command(b"NOOP", tag=b"N1").raw == b'N1 OK "Noop done"\r\n'
            assert "connection to master" in slave.log_path.read_text()

            relay.passthrough()  # the network heals: the next dump arrives whole
            expected = {(b"DELETE", (n,)) for n in deleted} | {
                (b"MAILBOX", (b"user.new", b"be2!default", b"")),
                (b"RESERVE", (b"user.newr", b"be2!default")),
            }
            seen = {next_change(watcher) for _ in expected}
            assert seen == expected
        with login(slave) as s, login(master) as m:
            assert s.list() == m.list()
    finally:
        slave.stop()
    assert "Traceback" not in slave.log_path.read_text(), slave.log_tail(120)
    master.assert_no_traceback()


# -- 3. cut mid-SASL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mechanism", [b"PLAIN", b"SCRAM-SHA-256", b"LOGIN"], ids=["plain", "scram", "login"]
)
def test_cut_mid_sasl_after_the_authenticate_line(make_master, make_relay, mechanism):
    master = make_master()
    relay = make_relay(master)
    with login(master) as other:
        client = connect(relay.host, relay.port)
        with client:
            if mechanism == b"SCRAM-SHA-256":
                first = b"n,,n=admin,r=cutmidsaslnonce"
                line = b'A01 AUTHENTICATE "SCRAM-SHA-256" ' + literal(base64.b64encode(first))
            else:
                line = b'A01 AUTHENTICATE "' + mechanism + b'"'
            client.send_raw(line + b"\r\n")
            # a bare base64 challenge line (empty for PLAIN): the master awaits our response
            challenge = client._read_line(time.monotonic() + 10)
            assert challenge.endswith(b"\r\n"), challenge
            base64.b64decode(challenge[:-2], validate=True)
            assert master.open_connections() == 2
            assert relay.cut_all() == 1
            assert rest_to_eof(client, 10) == b""
        master.wait_connections(1, "the half-authenticated session to go")
        metrics = master.metrics()
        assert metrics["mupdate_connections{state=not_authenticated}"] == 0
        assert other.command(b"NOOP").ok
    with login(master) as again:  # and logging in still works
        assert again.command(b"NOOP").ok
    master.assert_no_traceback()


def test_cut_while_the_password_is_checked_and_during_the_failed_login_pause(
    make_master, make_relay
):
    """PLAIN with an initial response, cut right after the line: the loss lands while the
    master checks the password off the reactor thread. Then a wrong password, cut while the
    master waits out failedloginpause before its NO."""
    master = make_master(failedloginpause="2")
    relay = make_relay(master)
    cuts = 0
    for password in (b"secret", b"wrong"):
        with connect(relay.host, relay.port) as client:
            line = b'A01 AUTHENTICATE "PLAIN" ' + literal(base64.b64encode(b"\0admin\0" + password))
            relay.cut_after(up=len(line) + 2, new=False)  # the whole line, then the cut
            client.send_raw(line + b"\r\n")
            cuts += 1
            relay.wait_for(lambda r, n=cuts: r.cuts == n, 10, "the cut")
            assert rest_to_eof(client, 10) == b""
        relay.passthrough()
    master.wait_connections(0, "the cut sessions to go")
    with connect(relay.host, relay.port) as client:
        line = b'A01 AUTHENTICATE "PLAIN" ' + literal(base64.b64encode(b"\0admin\0wrong"))
        client.send_raw(line + b"\r\n")
        wait_until(
            lambda: master.log_text().count("failed login from") == 2,
            10,
            "the master to start its failed-login pause",
        )
        assert relay.cut_all() == 1  # the NO is 2 s away
        assert rest_to_eof(client, 10) == b""
    master.wait_connections(0, "the paused session to go")
    with login(master) as c:
        assert c.command(b"NOOP").ok
    master.assert_no_traceback()


# -- 4. a master that stops answering without closing ------------------------------------------


def test_slave_notices_a_frozen_master_by_its_noop_deadline_and_resyncs(
    tmp_path, make_master, make_relay
):
    master = make_master()
    write(master, (b"ACTIVATE", b"user.before", b"be1!default", b""))
    relay = make_relay(master)
    slave = make_slave(tmp_path, relay.address)
    slave.start()
    try:
        watcher, dump = stream(slave)
        with watcher:
            assert dump == [Entry(b"MAILBOX", b"user.before", b"be1!default", b"")]
            accepted = relay.accepted
            relay.freeze()  # the master's host hangs: nothing passes, nothing closes
            wait_until(
                lambda: "did not answer NOOP within 1000 ms" in slave.log_path.read_text(),
                15,
                "the slave's NOOP deadline",
            )
            relay.wait_for(lambda r: r.accepted > accepted, 15, "the slave to reconnect")
            with login(slave) as s:  # it keeps serving its copy meanwhile
                assert s.list() == dump
            write(master, (b"ACTIVATE", b"user.during", b"be1!default", b""))  # unseen yet
            relay.passthrough()  # held bytes flow again, the reconnect completes
            assert next_change(watcher) == (b"MAILBOX", (b"user.during", b"be1!default", b""))
            write(master, (b"RESERVE", b"user.after", b"be2!default"))  # streamed again
            assert next_change(watcher) == (b"RESERVE", (b"user.after", b"be2!default"))
        with login(slave) as s, login(master) as m:
            assert s.list() == m.list()
    finally:
        slave.stop()
    assert "Traceback" not in slave.log_path.read_text(), slave.log_tail(120)
    master.assert_no_traceback()


# -- 5. a stream reader that stops reading ----------------------------------------------------


def small_window_client(host: str, port: int) -> MupdateClient:
    """A client whose receive buffer is 4 KiB, so the master's output backs up quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(15)
    sock.connect((host, port))
    c = MupdateClient(sock, 15.0)
    c._read_greeting()
    return c


class Drain(threading.Thread):
    """Reads a socket to its end in the background (bounded), keeping every byte."""

    def __init__(self, c: MupdateClient, until: bytes | None = None, timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.client, self.until, self.timeout = c, until, timeout
        self.data = bytearray(c._buf)
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        sock = self.client.sock
        try:
            while self.until is None or not (
                self.until in self.data[-4096:] and self.data.endswith(b"\r\n")
            ):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                self.data += chunk
        except BaseException as e:
            self.error = e

    def collect(self) -> bytes:
        """Read in this thread instead (bounded by the same timeout)."""
        self.start()
        return self.result()

    def result(self) -> bytes:
        self.join(self.timeout)
        assert not self.is_alive(), f"still reading after {self.timeout}s"
        assert self.error is None or isinstance(self.error, ConnectionResetError), (
            self.error,
            len(self.data),
            bytes(self.data[-300:]),
        )
        return bytes(self.data)


def test_stream_reader_that_stops_reading_gets_bye_and_memory_stays_bounded(make_master):
    limit = 64 * 1024
    master = make_master(mupdate_stream_buffer_max=str(limit))
    assert master.proc is not None
    pid = master.proc.pid
    acl_a = b"".join(b"a%04d\tlrs\t" % i for i in range(800))  # ~8 KiB
    acl_b = acl_a.replace(b"lrs", b"lrw")
    writes = 1500  # ~12 MiB of stream output for each stream
    marker = b"user.marker"

    slow = small_window_client(master.host, master.port)
    slow.authenticate_plain("admin", "secret")
    slow.send_raw(b"U01 UPDATE\r\n")
    assert slow.read_until_tagged(b"U01").ok
    good, _ = stream(master)  # a well-behaved reader, reading all the time
    good_reader = Drain(good, until=marker)
    good_reader.start()
    # The slow one is read again only once the master has given up on it (and within the
    # 10 s the master then waits for its BYE to be read).
    overflowed = f"more than {limit} bytes of output unread"
    slow_reader = threading.Thread(
        target=wait_until,
        args=(lambda: overflowed in master.log_text(), 30, "the overflow to be logged"),
        daemon=True,
    )
    slow_reader.start()
    rss_before, hwm_before = vm(pid, "VmRSS"), vm(pid, "VmHWM")
    with login(master) as writer:
        batch = 500
        for start in range(0, writes, batch):
            pipelined_writes(
                writer,
                [
                    (b"ACTIVATE", b"user.big", b"be1!default", acl_a if i % 2 else acl_b)
                    for i in range(start, start + batch)
                ],
            )
        pipelined_writes(writer, [(b"ACTIVATE", b"user.marker", b"be1!default", b"")])
        seen = parse_responses(good_reader.result())
    rss_after, hwm_after = vm(pid, "VmRSS"), vm(pid, "VmHWM")
    slow_reader.join(30)
    with slow:
        tail = Drain(slow, until=BYE_OVERFLOW, timeout=20).collect()
    # The good reader saw every change, in order, then the marker, and carries on.
    assert [r.args[2] for r in seen[:-1]] == [acl_a if i % 2 else acl_b for i in range(writes)]
    assert seen[-1].tokens == (b"U01", b"MAILBOX", b"user.marker", b"be1!default", b"")
    assert good.command(b"NOOP").raw == b'T01 OK "Noop done"\r\n'
    good.close()
    # The slow reader was dropped at the bound with a BYE, not fed 12 MiB.
    responses = parse_responses(tail)
    assert responses[-1].raw == BYE_OVERFLOW, tail[-300:]
    assert all(r.kind == b"MAILBOX" for r in responses[:-1])
    assert len(tail) < 6 * 1024 * 1024, len(tail)  # what the kernel buffers held, at most
    grown = max(rss_after - rss_before, hwm_after - hwm_before)
    assert grown < 6 * 1024, (
        f"master memory grew by {grown} KiB (RSS {rss_before}->{rss_after}, "
        f"HWM {hwm_before}->{hwm_after} KiB)"
    )
    master.assert_no_traceback()


def test_overflowed_stream_is_closed_once_its_bye_is_read(make_master):
    limit = 64 * 1024
    master = make_master(mupdate_stream_buffer_max=str(limit))
    acl = b"".join(b"a%04d\tlrs\t" % i for i in range(800))  # ~8 KiB
    with small_window_client(master.host, master.port) as slow:
        slow.authenticate_plain("admin", "secret")
        slow.send_raw(b"U01 UPDATE\r\n")
        assert slow.read_until_tagged(b"U01").ok
        with login(master) as writer:
            pipelined_writes(
                writer,
                [(b"ACTIVATE", b"user.big%d" % i, b"be1!default", acl) for i in range(500)],
            )
        wait_until(
            lambda: f"more than {limit} bytes of output unread" in master.log_text(),
            10,
            "the overflow to be logged",
        )
        assert Drain(slow, until=BYE_OVERFLOW, timeout=8).collect().endswith(BYE_OVERFLOW)
        assert read_to_eof(slow.sock, 3) == b""  # closed once the BYE is out


# -- 6. a flood of connections ---------------------------------------------------------------


def test_connections_beyond_the_maximum_are_refused_with_server_unable(make_master):
    master = make_master(mupdate_connections_max="5")
    first = [login(master) for _ in range(3)] + [
        connect(master.host, master.port) for _ in range(2)
    ]
    try:
        assert master.open_connections() == 5
        for _ in range(10):
            with socket.create_connection((master.host, master.port), timeout=10) as s:
                assert read_to_eof(s, 10) == BYE_UNABLE
        metrics = master.metrics()
        assert metrics["mupdate_connections_refused_total"] == 10
        assert master.open_connections() == 5
        # the first five keep working: writes and reads, and the unauthenticated ones log in
        assert first[0].command(b"RESERVE", b"user.flood", b"be1!default").ok
        for c in first[1:3]:
            assert c.find(b"user.flood") == Entry(b"RESERVE", b"user.flood", b"be1!default")
        for c in first[3:]:
            c.authenticate_plain("admin", "secret")
            assert c.command(b"NOOP").ok
        # a place that frees up is taken again
        first.pop().close()
        master.wait_connections(4, "the closed connection to be counted out")
        first.append(login(master))
        assert first[-1].command(b"NOOP").ok
    finally:
        for c in first:
            c.close()
    master.assert_no_traceback()


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads for pid {pid}")


def test_two_hundred_silent_streams_block_nobody_and_cost_no_thread(make_master):
    """Cyrus gives each UPDATE stream a worker thread and stops answering new connections
    after about 50 silent streams; here 200 logged-in streams that send nothing and read
    nothing after their dump leave new connections, logins, writes and reads answered, the
    master's thread count unchanged, and each stream still gets the change when it reads.
    (The connection cap is raised above its default of 128 for this.)"""
    master = make_master(mupdate_connections_max="400")
    write(master, ("RESERVE", b"user.before", b"be1!default"))
    assert master.proc is not None
    pid = master.proc.pid
    threads_before = threads(pid)
    silent: list[MupdateClient] = []
    try:
        for _ in range(200):
            c, entries = stream(master)
            assert [e.name for e in entries] == [b"user.before"]
            silent.append(c)
        master.wait_connections(200, "200 streams to be counted")
        assert master.metrics()["mupdate_streams"] == 200
        assert threads(pid) <= threads_before, (threads_before, threads(pid))
        # a newcomer is greeted, logs in, writes and reads while every stream stays silent
        with login(master) as newcomer:
            assert newcomer.command(b"RESERVE", b"user.after", b"be1!default").ok
            assert newcomer.command(b"ACTIVATE", b"user.after", b"be1!default", b"").ok
            assert newcomer.find(b"user.after") == Entry(
                b"MAILBOX", b"user.after", b"be1!default", b""
            )
        # every silent stream has both changes waiting, in commit order
        for c in silent:
            assert next_change(c) == (b"RESERVE", (b"user.after", b"be1!default"))
            assert next_change(c)[0] == b"MAILBOX"
    finally:
        for c in silent:
            c.close()
    master.assert_no_traceback()


# -- 7. slowloris ---------------------------------------------------------------------------


def test_silent_and_dribbling_clients_are_closed_at_the_login_timeout(make_master, make_relay):
    master = make_master(mupdate_login_timeout="2", mupdate_idle_timeout="4")
    relay = make_relay(master)
    relay.slow(1, 0.25, down=False)  # client -> master: one byte every 0.25 s
    started = time.monotonic()
    silent = connect(master.host, master.port)
    dribbler = connect(relay.host, relay.port)  # the greeting comes back at full speed
    partial = b'A01 AUTHENTICATE "PLAIN" {24+}\r\n' + b"A" * 24  # 56 bytes, never finished
    dribbler.send_raw(partial)
    with silent, dribbler:
        assert rest_to_eof(silent, 10) == BYE_IDLE
        assert rest_to_eof(dribbler, 10) == BYE_IDLE
        elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 10, elapsed
    assert 0 < relay.forwarded_up < len(partial)  # it was still dribbling when closed
    assert master.log_text().count("not logged in in time") == 2
    master.assert_no_traceback()


def test_logged_in_idle_client_is_closed_at_the_idle_timeout(make_master):
    master = make_master(mupdate_login_timeout="2", mupdate_idle_timeout="3")
    started = time.monotonic()
    with login(master) as idle, login(master) as second:
        assert rest_to_eof(idle, 10) == BYE_IDLE
        elapsed = time.monotonic() - started
        assert 2.5 <= elapsed < 10, elapsed  # the idle timeout, not the login timeout
        # the other one was idle as long: closed too, and a new login works
        assert rest_to_eof(second, 10) == BYE_IDLE
    with login(master) as fresh:
        assert fresh.command(b"NOOP").ok
    assert "closing idle connection" in master.log_text()
    master.assert_no_traceback()

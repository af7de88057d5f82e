"""The slave's glue end to end on in-memory parts: uplink, replica, handler, healer (§9).

Our uplink follows either a real master in memory (``MasterRig`` through iosim) or a master
the test plays byte for byte on a ``StringTransport``. Time moves only through the rig's
``Clock``; the retry jitter is 0, so every delay below is exact: the first retry after
``retry_delay``, then doubling (from at least 1 s) up to ``retry_max``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.error import ConnectionLost
from twisted.logger import LogEvent, LogLevel, globalLogPublisher

from mupdate.config.imapdconf import parse_imapd_conf
from mupdate.config.settings import slave_settings
from mupdate.model import EntryState, MailboxEntry
from mupdate.protocol.responses import MailboxLine
from mupdate.slave.disk import make_on_disk
from mupdate.slave.uplink import retry_policy
from tests.helpers.glue import ManualRunner, MasterRig
from tests.helpers.memstore import InMemoryStore
from tests.helpers.slaverig import SlaveRig
from tests.helpers.spool import LAYOUTS, layout_settings, write_header


def active(name: bytes, location: bytes, acl: bytes = b"") -> MailboxEntry:
    return MailboxEntry(name, EntryState.ACTIVE, location, acl)


def reserved(name: bytes, location: bytes) -> MailboxEntry:
    return MailboxEntry(name, EntryState.RESERVED, location)


PREVIOUS = [
    active(b"user.anne", b"be2!p", b"anne\tlrswipkxtecda\t"),
    active(b"user.bob", b"be2!p", b""),
    reserved(b"user.carl", b"be3!p"),
]
PARTIAL = b'U01 MAILBOX "user.zed" "be9!p" ""\r\n'


@pytest.fixture
def events():
    captured: list[LogEvent] = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


def logged(events: list[LogEvent], level: LogLevel, fragment: str, **fields: Any) -> list[LogEvent]:
    """Events at ``level`` whose format contains ``fragment`` and whose fields match."""
    return [
        e
        for e in events
        if e.get("log_level") == level
        and fragment in (e.get("log_format") or "")
        and all(e.get(k) == v for k, v in fields.items())
    ]


def at_levels(events: list[LogEvent], *levels: LogLevel) -> list[LogEvent]:
    return [e for e in events if e.get("log_level") in levels]


def assert_retry_after(slave: SlaveRig, wait: float) -> None:
    """Nothing connects before ``wait`` seconds; one new attempt at ``wait``
    (quarter seconds: exact in binary floating point)."""
    attempts = slave.endpoint.attempts
    if wait > 0:
        slave.clock.advance(wait - 0.25)
        assert slave.endpoint.attempts == attempts
        slave.clock.advance(0.25)
    else:
        slave.clock.advance(0)
    assert slave.endpoint.attempts == attempts + 1


# -- first sync from our master, then the stream ------------------------------------------


def test_first_sync_copies_the_master_then_streams_to_store_and_chained_slave(tmp_path):
    master = MasterRig(
        tmp_path,
        store=InMemoryStore(
            [
                active(b"user.a", b"be2!p", b"a\tlrs\t"),
                active(b"user.a-b", b"be2!p", b""),
                active(b"user.a.b", b"be3!q", b"anyone\tlr\t"),
                reserved(b"user.r", b"be2!p"),
                active(b"user.sp ace", b"be2!p", b""),
            ]
        ),
    )
    slave = SlaveRig(tmp_path, master=master)
    assert not slave.handler.ready
    slave.start()
    slave.flush()

    assert slave.uplink.connected
    assert slave.handler.ready
    assert slave.stored() == master.store.entries
    assert slave.indexed() == list(master.handler.index.in_order())
    assert slave.replica.counters.resyncs == 1
    assert slave.replica.counters.resync_changes == 5
    # The slave's own LIST answers exactly what the master's does.
    listing = master.login().send(b"L0 LIST\r\n")
    assert listing.endswith(b'L0 OK "list complete"\r\n')
    assert slave.login().send(b"L0 LIST\r\n") == listing

    chained = slave.login()
    assert chained.send(b"U01 UPDATE\r\n") == listing.replace(b"L0 ", b"U01 ").replace(
        b'"list complete"', b'"streaming starts"'
    )

    writer = master.login()
    assert writer.send(b'X0 ACTIVATE "user.new" "be4!p" "n\tlrs\t"\r\n') == b'X0 OK "done"\r\n'
    assert writer.send(b'X1 DELETE "user.a"\r\n') == b'X1 OK "done"\r\n'
    slave.flush()

    assert slave.stored() == master.store.entries
    assert slave.store.entries[b"user.new"] == active(b"user.new", b"be4!p", b"n\tlrs\t")
    assert b"user.a" not in slave.replica.index
    assert slave.replica.counters.stream_changes == 2
    assert chained.take() == (
        b'U01 MAILBOX "user.new" "be4!p" "n\tlrs\t"\r\nU01 DELETE "user.a"\r\n'
    )
    assert len(slave.pairs) == 1  # one connection, still streaming


def test_case_63_resync_is_by_set_not_by_order(tmp_path):
    slave = SlaveRig(
        tmp_path, entries=[active(b"user.a.b", b"be2!p"), active(b"user.a-b", b"be2!p")]
    )
    slave.start()
    slave.conn.sync(b'U01 MAILBOX "user.a-b" "be2!p" ""\r\n')
    assert slave.stored() == {b"user.a-b": active(b"user.a-b", b"be2!p")}
    assert slave.replica.counters.resync_changes == 1


# -- case 61 / 62: a dump that does not end in a proper OK -------------------------------


def _end_with_no(conn):
    conn.feed(b'U01 NO "x"\r\n')


def _end_with_bad(conn):
    conn.feed(b'U01 BAD "x"\r\n')


def _end_with_bye(conn):
    conn.feed(b'* BYE "x"\r\n')


def _drop_mid_dump(conn):
    conn.lose(ConnectionLost("master went away"))


def _delete_inside_dump(conn):
    conn.feed(b'U01 DELETE "user.anne"\r\nU01 OK "streaming starts"\r\n')


def _unquoted_ok(conn):
    conn.feed(b"U01 OK streaming starts\r\n")


ENDINGS = {
    "no": (_end_with_no, "U01 NO x"),
    "bad": (_end_with_bad, "U01 BAD x"),
    "bye": (_end_with_bye, "x"),
    "dropped": (_drop_mid_dump, "master went away"),
    "delete-in-dump": (_delete_inside_dump, "DELETE user.anne outside a stream"),
    "case-62-unquoted-ok": (_unquoted_ok, ""),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_case_61_failed_dump_keeps_the_copy_and_backs_off(tmp_path, events, ending):
    end, reason = ENDINGS[ending]
    slave = SlaveRig(tmp_path, entries=PREVIOUS, retry_delay=20, retry_max=60)
    before = slave.stored()
    listing = slave.login().send(b"L0 LIST\r\n")
    slave.start()
    assert slave.endpoint.attempts == 1

    for failures, wait in ((1, 20), (2, 40), (3, 60), (4, 60)):
        conn = slave.conn
        conn.login()
        conn.feed(PARTIAL)
        end(conn)

        assert slave.stored() == before  # byte for byte: same entries, same bytes
        assert slave.store.batches == []
        assert slave.replica.counters.resyncs == 0
        assert slave.login().send(b"L0 LIST\r\n") == listing
        assert conn.closing
        assert not slave.uplink.connected
        assert slave.uplink.failures == failures
        conn.lose()
        assert_retry_after(slave, wait)

    warned = logged(events, LogLevel.warn, "connection to master {server} failed")
    assert len(warned) == 4
    assert all(reason in e["reason"] for e in warned)
    assert all(e["server"] == "master.test:3905" for e in warned)


def test_case_62_unquoted_status_is_a_protocol_error(tmp_path, events):
    slave = SlaveRig(tmp_path, entries=PREVIOUS)
    slave.start()
    conn = slave.conn
    conn.login()
    conn.feed(PARTIAL + b"U01 OK streaming starts\r\n" + b'U01 DELETE "user.bob"\r\n')
    assert slave.stored() == {e.name: e for e in PREVIOUS}
    assert conn.closing
    assert logged(events, LogLevel.warn, "protocol violation by {peer}")
    assert slave.replica.counters.stream_changes == 0
    conn.lose()
    assert_retry_after(slave, 20)
    # The next session applies a good dump in full.
    slave.conn.sync(PARTIAL)
    assert slave.stored() == {b"user.zed": active(b"user.zed", b"be9!p")}
    assert slave.uplink.connected
    assert slave.uplink.failures == 0


def test_success_resets_the_backoff(tmp_path):
    slave = SlaveRig(tmp_path, entries=PREVIOUS, retry_delay=20, retry_max=300)
    slave.start()
    for wait in (20, 40):
        slave.conn.login()
        slave.conn.feed(b'U01 NO "x"\r\n')
        slave.conn.lose()
        assert_retry_after(slave, wait)
    slave.conn.sync(PARTIAL)
    assert slave.uplink.failures == 0
    slave.conn.lose()  # the master restarts
    assert not slave.uplink.connected
    assert_retry_after(slave, 20)


def test_refused_connects_back_off_too(tmp_path):
    slave = SlaveRig(tmp_path, retry_delay=20, retry_max=100)
    slave.endpoint.refuse = True
    slave.start()
    assert slave.endpoint.attempts == 1
    for wait in (20, 40, 80, 100, 100):
        assert_retry_after(slave, wait)
    assert slave.scripted == []
    slave.endpoint.refuse = False
    assert_retry_after(slave, 100)
    slave.conn.sync(PARTIAL)
    assert slave.stored() == {b"user.zed": active(b"user.zed", b"be9!p")}


# -- retry_delay 0 and 1 (§9.4: Cyrus divides by zero) -----------------------------------


def _settings_with_delay(tmp_path, delay: int):
    text = (
        f"mupdate_server: master.test:3905\nmupdate_authname: admin\nmupdate_retry_delay: {delay}\n"
    )
    return slave_settings(
        parse_imapd_conf(text, "slave.conf"),
        default_servername="be1",
        default_configdirectory=tmp_path,
    )


@pytest.mark.parametrize(
    ("delay", "waits", "ping"), [(0, (0, 2, 4, 8), 1.0), (1, (1, 2, 4, 8), 1.0)]
)
def test_retry_delay_0_and_1_build_and_back_off_from_one_second(tmp_path, delay, waits, ping):
    parsed = _settings_with_delay(tmp_path, delay)
    assert parsed.retry_delay == delay
    slave = SlaveRig(
        tmp_path, entries=PREVIOUS, retry_delay=parsed.retry_delay, retry_max=parsed.retry_max
    )
    slave.start()
    for wait in waits:
        conn = slave.conn
        conn.login()
        conn.feed(b'U01 BAD "x"\r\n')
        conn.lose()
        assert_retry_after(slave, wait)
        assert slave.endpoint.attempts == len(slave.scripted)  # one attempt per wait, no loop

    conn = slave.conn
    conn.sync(PARTIAL)
    assert slave.uplink.connected
    conn.take()
    slave.clock.advance(ping - 0.25)
    assert conn.take() == b""
    slave.clock.advance(0.25)
    assert conn.take() == b"N0 NOOP\r\n"


@pytest.mark.parametrize("delay", [0, 1])
def test_retry_delay_0_and_1_refused_connects_do_not_spin(tmp_path, delay):
    slave = SlaveRig(tmp_path, retry_delay=float(delay))
    slave.endpoint.refuse = True
    slave.start()
    slave.clock.advance(0)
    slave.clock.advance(0)
    # delay 0: the first retry is immediate, the next waits 2 s; delay 1: nothing yet.
    assert slave.endpoint.attempts == (2 if delay == 0 else 1)
    slave.clock.pump([1] * 10)  # one second at a time: a retry is timed from when it is set
    # delay 0: attempts at 0, 0, 2, 6 s; delay 1: at 0, 1, 3, 7 s (then 14 s, 15 s).
    assert slave.endpoint.attempts == 4


def test_jittered_retries_never_wait_longer_than_retry_max(tmp_path):
    seed = 9
    jitter = random.Random(seed).random
    expected = retry_policy(20, 100, random.Random(seed).random)
    slave = SlaveRig(tmp_path, retry_delay=20, retry_max=100, jitter=jitter)
    slave.endpoint.refuse = True
    slave.start()
    waits = []
    for failures in range(1, 8):
        wait = expected(failures)
        waits.append(wait)
        attempts = slave.endpoint.attempts
        slave.clock.advance(wait - 0.001)
        assert slave.endpoint.attempts == attempts
        slave.clock.advance(0.002)
        assert slave.endpoint.attempts == attempts + 1
    assert all(w <= 100 for w in waits)
    assert waits[0] > 20  # jittered above the base ...
    assert waits[-1] == 100  # ... and capped, jitter included


# -- pings (§9.4) ---------------------------------------------------------------------------


def test_noop_pings_keep_an_answering_master_and_drop_a_silent_one(tmp_path, events):
    slave = SlaveRig(tmp_path, retry_delay=20)
    slave.start()
    conn = slave.conn
    conn.sync(PARTIAL)
    assert slave.uplink.connected
    assert conn.take() == b""

    slave.clock.advance(19.75)
    assert conn.take() == b""
    slave.clock.advance(0.25)
    assert conn.take() == b"N0 NOOP\r\n"
    slave.clock.advance(19.75)
    conn.feed(b'N0 OK "Noop done"\r\n')
    assert not conn.closing
    slave.clock.advance(0.25)  # the deadline was cancelled by the answer
    assert not conn.closing
    # Stream lines still apply while pings run.
    conn.feed(b'U01 MAILBOX "user.s" "be2!p" ""\r\n')
    assert slave.store.entries[b"user.s"] == active(b"user.s", b"be2!p")

    slave.clock.advance(19.5)  # the next ping is due retry_delay after the answer
    assert conn.take() == b""
    slave.clock.advance(0.25)
    assert conn.take() == b"N1 NOOP\r\n"
    slave.clock.advance(19.75)
    assert not conn.closing
    slave.clock.advance(0.25)
    assert conn.closing
    assert conn.transport.disconnected  # StringTransport's mark of abortConnection
    assert logged(events, LogLevel.warn, "did not answer NOOP", duration_ms=20000)

    conn.lose()
    assert not slave.uplink.connected
    assert_retry_after(slave, 20)
    # A full resync follows: what the master lists now replaces the copy.
    slave.conn.sync(b'U01 RESERVE "user.t" "be3!p"\r\n')
    assert slave.stored() == {b"user.t": reserved(b"user.t", b"be3!p")}
    assert slave.replica.counters.resyncs == 2
    assert slave.uplink.connections == 2


def test_noop_answered_no_reconnects(tmp_path, events):
    slave = SlaveRig(tmp_path, retry_delay=20)
    slave.start()
    conn = slave.conn
    conn.sync(PARTIAL)
    slave.clock.advance(20)
    assert conn.take() == b"N0 NOOP\r\n"
    conn.feed(b'N0 NO "go away"\r\n')
    assert conn.closing
    assert logged(events, LogLevel.warn, "master answered NOOP")
    conn.lose()
    assert_retry_after(slave, 20)
    assert slave.stored() == {b"user.zed": active(b"user.zed", b"be9!p")}


def test_pings_against_our_master(tmp_path):
    master = MasterRig(tmp_path)
    slave = SlaveRig(tmp_path, master=master, retry_delay=5)
    slave.start()
    slave.flush()
    assert slave.uplink.connected
    for _ in range(3):
        slave.clock.advance(5)
        slave.flush()
        slave.clock.advance(4.9)
        assert slave.uplink.connected
    assert master.factory.counters.commands["NOOP"] == 3
    assert len(slave.pairs) == 1


def test_connection_lost_while_the_resync_commits_still_reconnects(tmp_path, events):
    # The resync's one transaction runs on the store's worker (a thread in production);
    # the master may drop the connection meanwhile. ClientService has no transition for
    # a disconnect while the prepare hook runs, so the hook must end with the connection.
    runner = ManualRunner()
    slave = SlaveRig(tmp_path, entries=PREVIOUS, runner=runner, retry_delay=20)
    slave.start()
    conn = slave.conn
    conn.sync(PARTIAL)
    assert len(runner.calls) == 1  # the transaction is in flight
    conn.lose()
    runner.run_all()
    assert slave.stored() == {b"user.zed": active(b"user.zed", b"be9!p")}  # a complete dump
    assert slave.replica.counters.resyncs == 1
    assert not slave.uplink.connected
    assert [call.getTime() for call in slave.clock.getDelayedCalls()] == [20]  # no ping
    assert_retry_after(slave, 20)
    slave.conn.sync(PARTIAL)
    assert slave.uplink.connected
    slave.clock.advance(20)
    assert slave.conn.take() == b"N0 NOOP\r\n"
    assert logged(events, LogLevel.warn, "master answered NOOP") == []


def test_stream_lines_behind_the_dump_wait_for_the_resync_transaction(tmp_path):
    runner = ManualRunner()
    slave = SlaveRig(tmp_path, entries=PREVIOUS, runner=runner)
    slave.start()
    conn = slave.conn
    conn.login()
    conn.feed(
        PARTIAL + b'U01 OK "streaming starts"\r\n'
        b'U01 DELETE "user.zed"\r\nU01 RESERVE "user.new" "be2!p"\r\n'
    )
    assert len(runner.calls) == 1  # only the resync's transaction so far
    assert slave.stored() == {e.name: e for e in PREVIOUS}
    runner.run_all()
    assert slave.stored() == {b"user.new": reserved(b"user.new", b"be2!p")}
    assert [len(batch) for batch in slave.store.batches] == [4, 1, 1]  # resync, then in order
    assert slave.replica.counters.stream_changes == 2
    assert slave.uplink.connected


# -- login and dump timeouts --------------------------------------------------------------


def test_login_timeout_when_the_master_never_greets(tmp_path, events):
    slave = SlaveRig(tmp_path, entries=PREVIOUS, retry_delay=20)
    assert slave.uplink.login_timeout == 20
    slave.start()
    conn = slave.conn
    slave.clock.advance(19.75)
    assert not conn.closing
    assert conn.take() == b""
    slave.clock.advance(0.25)
    assert conn.closing
    assert logged(events, LogLevel.warn, "connection to master {server} failed")
    conn.lose()
    assert_retry_after(slave, 20)
    assert slave.stored() == {e.name: e for e in PREVIOUS}


def test_login_timeout_when_authenticate_is_never_answered(tmp_path):
    slave = SlaveRig(tmp_path, retry_delay=2)
    assert slave.uplink.login_timeout == 10  # at least 10 s, as Cyrus's client_timeout
    slave.start()
    conn = slave.conn
    conn.feed(b'* AUTH "PLAIN"\r\n* OK MUPDATE "m" "x" "y" "(master)"\r\n')
    assert conn.take().startswith(b'A01 AUTHENTICATE "PLAIN"')
    slave.clock.advance(9.75)
    assert not conn.closing
    slave.clock.advance(0.25)
    assert conn.closing
    conn.lose()
    assert_retry_after(slave, 2)


def test_dump_timeout_discards_a_dump_that_never_ends(tmp_path):
    slave = SlaveRig(tmp_path, entries=PREVIOUS, retry_delay=20)
    assert slave.uplink.dump_timeout == 200
    slave.start()
    conn = slave.conn
    conn.login()
    for _ in range(3):
        slave.clock.advance(66)
        conn.feed(PARTIAL)  # lines keep coming, the status never does
    assert not conn.closing
    slave.clock.advance(2)
    assert conn.closing
    assert slave.stored() == {e.name: e for e in PREVIOUS}
    conn.lose()
    assert_retry_after(slave, 20)


# -- the stream guard (case 64, 65) --------------------------------------------------------

LOCAL = [
    active(b"user.loc1", b"be1!p1", b"loc1\tlrswipkxtecda\t"),
    active(b"user.loc2", b"BE1!p1", b""),
    active(b"user.rem", b"be2!p", b""),
]
LOCAL_DUMP = (
    b'U01 MAILBOX "user.loc1" "be1!p1" "loc1\tlrswipkxtecda\t"\r\n'
    b'U01 MAILBOX "user.loc2" "BE1!p1" ""\r\n'
    b'U01 MAILBOX "user.rem" "be2!p" ""\r\n'
)


def test_unified_stream_guard_refuses_moves_and_deletes_of_local_mailboxes(tmp_path, events):
    slave = SlaveRig(tmp_path, entries=LOCAL, murder_mode="unified", heal=False)
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP)
    assert slave.store.batches == []  # the dump matched: nothing to write
    counters = slave.replica.counters

    conn.feed(b'U01 DELETE "user.loc1"\r\n')
    conn.feed(b'U01 MAILBOX "user.loc2" "be9!p9" ""\r\n')
    conn.feed(b'U01 RESERVE "user.loc2" "be9!p9"\r\n')
    assert slave.stored() == {e.name: e for e in LOCAL}
    assert counters.guard_refusals == 3
    assert counters.refused_names == {b"user.loc1", b"user.loc2"}
    assert counters.stream_changes == 0
    refusals = logged(events, LogLevel.error, "guard kept local mailbox", state="stream")
    assert [(e["mailbox"], e["location"]) for e in refusals] == [
        ("user.loc1", "DELETE"),
        ("user.loc2", "be9!p9"),
        ("user.loc2", "be9!p9"),
    ]
    assert refusals[0]["old_location"] == "be1!p1"

    # The master may still change a local mailbox in place, and remote ones freely.
    conn.feed(b'U01 MAILBOX "user.loc1" "be1!p2" "loc1\tlr\t"\r\n')
    conn.feed(b'U01 DELETE "user.rem"\r\n')
    assert slave.stored() == {
        b"user.loc1": active(b"user.loc1", b"be1!p2", b"loc1\tlr\t"),
        b"user.loc2": active(b"user.loc2", b"BE1!p1", b""),
    }
    assert counters.stream_changes == 2
    assert counters.guard_refusals == 3
    assert not conn.closing
    assert slave.uplink.connected


@pytest.mark.parametrize("mode", ["standard", "unified"])
def test_case_64_streamed_delete_of_an_unknown_name_is_a_no_op(tmp_path, events, mode):
    slave = SlaveRig(tmp_path, entries=LOCAL, murder_mode=mode, heal=False)
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP)
    before_events = len(events)
    conn.feed(b'U01 DELETE "user.nobody"\r\n')
    assert slave.stored() == {e.name: e for e in LOCAL}
    assert slave.store.batches == []
    assert slave.replica.counters.stream_changes == 0
    assert slave.replica.counters.guard_refusals == 0
    assert at_levels(events[before_events:], LogLevel.warn, LogLevel.error) == []
    assert not conn.closing
    slave.clock.advance(20)
    assert conn.take() == b"N0 NOOP\r\n"  # still streaming


def test_standard_slave_has_no_guard(tmp_path):
    slave = SlaveRig(tmp_path, entries=LOCAL)  # servername be1, standard mode
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP)
    conn.feed(b'U01 DELETE "user.loc1"\r\nU01 MAILBOX "user.loc2" "be9!p9" ""\r\n')
    assert slave.stored() == {
        b"user.loc2": active(b"user.loc2", b"be9!p9"),
        b"user.rem": active(b"user.rem", b"be2!p"),
    }
    assert slave.replica.counters.guard_refusals == 0


# -- the mass-delete brake and healing -----------------------------------------------------

REMOTE_30 = [active(b"user.r%02d" % i, b"be2!p", b"") for i in range(30)]


def test_brake_holds_an_emptying_resync_until_released(tmp_path, events):
    master = MasterRig(tmp_path)  # lost its database: lists nothing
    slave = SlaveRig(tmp_path, master=master, entries=REMOTE_30, retry_delay=20)
    before = slave.stored()
    slave.start()
    slave.flush()

    counters = slave.replica.counters
    assert slave.stored() == before
    assert slave.store.batches == []
    assert counters.brake_holds == 1
    assert counters.resyncs == 0
    [held] = logged(events, LogLevel.critical, "mass-delete brake holds the resync")
    # What would have been removed: the total, and the first 20 names in key order.
    assert held["count"] == 30
    assert held["mailboxes"] == [f"user.r{i:02d}" for i in range(20)]
    assert "mupdate-slave-brake release" in held["reason"]
    assert logged(events, LogLevel.critical, "resync held by the brake")
    assert slave.pairs[0].done  # the connection was closed
    assert not slave.uplink.connected
    assert slave.handler.ready  # the last-known-good copy is served meanwhile

    assert_retry_after(slave, 20)
    slave.flush()
    assert counters.brake_holds == 2
    assert slave.stored() == before

    slave.release_brake()
    assert_retry_after(slave, 40)
    slave.flush()
    assert slave.stored() == {}
    assert counters.brake_releases == 1
    assert counters.brake_holds == 2
    assert counters.resyncs == 1
    assert logged(events, LogLevel.warn, "mass-delete brake released by the operator")
    assert slave.uplink.connected


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unified_brake_holds_but_the_healer_reannounces_local_mailboxes(tmp_path, events, layout):
    partition = tmp_path / "p1"
    for name in (b"user.loc1", b"user.loc2"):
        write_header(partition, name, layout)
    local = [
        active(b"user.loc1", b"be1!p1", b"loc1\tlrswipkxtecda\t"),
        reserved(b"user.loc2", b"be1!p1"),
        active(b"user.loc3", b"be1!p1", b""),  # own server, but no cyrus.header: not sure
    ]
    master = MasterRig(tmp_path)
    slave = SlaveRig(
        tmp_path,
        master=master,
        entries=REMOTE_30 + local,
        murder_mode="unified",
        partitions=(("p1", partition),),
        retry_delay=20,
        **layout_settings(layout),
    )
    assert slave.healer is not None
    before = slave.stored()
    slave.start()
    slave.flush()

    counters = slave.replica.counters
    assert slave.locality.names == {b"user.loc1", b"user.loc2"}  # scanned before the plan
    assert counters.brake_holds == 1
    assert slave.stored() == before
    assert counters.refused_names == {b"user.loc1", b"user.loc2", b"user.loc3"}
    # Healing did not wait for the brake: RESERVE (+ ACTIVATE) reached the master.
    assert master.store.entries == {
        b"user.loc1": active(b"user.loc1", b"be1!p1", b"loc1\tlrswipkxtecda\t"),
        b"user.loc2": reserved(b"user.loc2", b"be1!p1"),
    }
    assert list(master.handler.index.in_order()) == [
        active(b"user.loc1", b"be1!p1", b"loc1\tlrswipkxtecda\t"),
        reserved(b"user.loc2", b"be1!p1"),
    ]
    assert master.factory.counters.commands["RESERVE"] == 2
    assert master.factory.counters.commands["ACTIVATE"] == 1
    assert slave.healer.counters.healed == 2
    assert slave.healer.counters.conflicts == 0
    assert logged(events, LogLevel.warn, "not re-announcing", count=1)
    assert sorted(
        e["mailbox"] for e in logged(events, LogLevel.warn, "re-announced local mailbox")
    ) == ["user.loc1", "user.loc2"]
    assert len(slave.pairs) == 2
    assert all(p.done for p in slave.pairs)

    slave.release_brake()
    assert_retry_after(slave, 20)
    slave.flush()
    assert counters.brake_releases == 1
    assert slave.stored() == {e.name: e for e in local}
    assert slave.uplink.connected
    assert slave.healer.counters.healed == 2  # nothing more to announce


def test_healer_conflict_is_reported_never_forced(tmp_path, events):
    partition = tmp_path / "p1"
    for name in (b"user.loc1", b"user.loc2"):
        write_header(partition, name, "uuid")
    local = [
        active(b"user.loc1", b"be1!p1", b"loc1\tlrswipkxtecda\t"),
        active(b"user.loc2", b"be1!p1", b""),
    ]
    master = MasterRig(tmp_path)  # lost its database
    slave = SlaveRig(
        tmp_path,
        master=master,
        entries=local,
        murder_mode="unified",
        partitions=(("p1", partition),),
    )
    assert slave.healer is not None
    slave.start()
    uplink = slave.pairs[0]
    while uplink.pump.flush():  # the uplink's session only: the healer has not spoken yet
        pass
    assert slave.uplink.connected
    assert len(slave.pairs) == 2  # the healer's connection, waiting
    # Meanwhile another backend takes user.loc1 at the master.
    other = master.login()
    assert other.send(b'X0 RESERVE "user.loc1" "be2!p"\r\n') == b'X0 OK "done"\r\n'
    refused = other.send(b'X1 RESERVE "user.loc1" "be1!p1"\r\n')
    slave.flush()

    assert slave.healer.counters.conflicts == 1
    assert slave.healer.counters.healed == 1  # user.loc2
    assert slave.healer.counters.failures == 0
    [conflict] = logged(events, LogLevel.error, "cannot re-announce local mailbox")
    assert conflict["mailbox"] == "user.loc1"
    assert conflict["location"] == "be1!p1"
    assert conflict["old_location"] == "be2!p"
    assert f'X1 NO "{conflict["reason"]}"'.encode() in refused  # the master's own words
    # Nothing forced: the master keeps its owner, no ACTIVATE for user.loc1 was sent.
    assert master.store.entries[b"user.loc1"] == reserved(b"user.loc1", b"be2!p")
    assert master.store.entries[b"user.loc2"] == active(b"user.loc2", b"be1!p1")
    commands = master.factory.counters.commands
    assert (commands["RESERVE"], commands["ACTIVATE"], commands["FIND"]) == (4, 1, 1)
    # And the slave keeps its local mailbox against the master's RESERVE elsewhere.
    assert slave.stored()[b"user.loc1"] == local[0]
    assert logged(events, LogLevel.error, "guard kept local mailbox", state="stream")


def _unified_with_partition(tmp_path, **kw):
    partition = tmp_path / "p1"
    partition.mkdir(exist_ok=True)
    slave = SlaveRig(
        tmp_path,
        entries=LOCAL,
        murder_mode="unified",
        heal=False,
        partitions=(("p1", partition),),
        retry_delay=100,  # no pings while the clock passes the rescan interval
        **kw,
    )
    return slave, partition


def test_streamed_removal_of_a_name_no_scan_found_waits_for_a_rescan(tmp_path, events):
    scans = ManualRunner()
    slave, partition = _unified_with_partition(tmp_path, scan_runner=scans)
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP)
    assert slave.replica.resyncing  # the plan waits for the scan begun with the dump
    assert len(scans.calls) == 1
    scans.run_all()
    assert slave.uplink.connected
    slave.clock.advance(61)  # past the rescan interval (60 s)

    # user.rem came here (say by XFER) since the scan; the master still deletes it.
    write_header(partition, b"user.rem", "uuid")
    conn.feed(b'U01 DELETE "user.rem"\r\nU01 MAILBOX "user.new" "be2!p" ""\r\n')
    assert len(scans.calls) == 1  # a rescan, and both lines wait for it, in order
    assert slave.stored() == {e.name: e for e in LOCAL}
    kicked = slave.replica.barrier()
    assert not kicked.called
    scans.run_all()

    assert kicked.called
    assert slave.stored() == {e.name: e for e in LOCAL} | {
        b"user.new": active(b"user.new", b"be2!p")
    }
    [refusal] = logged(events, LogLevel.error, "guard kept local mailbox", state="stream")
    assert (refusal["mailbox"], refusal["location"]) == ("user.rem", "DELETE")
    assert logged(events, LogLevel.info, "scanning partitions before", mailbox="user.rem")
    # Rate-limited: another removal right after is judged on what the scan found.
    conn.feed(b'U01 DELETE "user.new"\r\n')
    assert scans.calls == []
    assert b"user.new" not in slave.stored()
    assert slave.replica.counters.stream_changes == 2
    assert not conn.closing


def test_headers_on_the_metapartition_keep_local_mailboxes(tmp_path, events):
    # metapartition_files: header puts every cyrus.header under metapartition-p1; the data
    # partition holds only messages. A scan finds the uuid one, the fast path the legacy one.
    meta = tmp_path / "meta1"
    slave, _ = _unified_with_partition(
        tmp_path,
        metapartitions=(("p1", meta),),
        metapartition_files=frozenset({"header", "index"}),
    )
    write_header(meta, b"user.rem", "uuid")
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP)
    assert slave.locality.names == {b"user.rem"}
    conn.feed(b'U01 MAILBOX "user.new" "be2!p" ""\r\n')
    write_header(meta, b"user.new", "legacy")  # since the scan (say by XFER): the fast path
    conn.feed(b'U01 DELETE "user.rem"\r\nU01 DELETE "user.new"\r\n')
    assert slave.replica.barrier().called
    assert {b"user.rem", b"user.new"} <= slave.stored().keys()
    refusals = logged(events, LogLevel.error, "guard kept local mailbox", state="stream")
    assert [r["mailbox"] for r in refusals] == ["user.rem", "user.new"]
    assert not conn.closing


def test_failed_rescan_resyncs_instead_of_applying(tmp_path, events):
    scans = ManualRunner()
    slave, partition = _unified_with_partition(tmp_path, scan_runner=scans)
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP)
    scans.run_all()
    slave.clock.advance(61)
    partition.rename(tmp_path / "unmounted")
    conn.feed(b'U01 DELETE "user.rem"\r\n')
    scans.run_all()
    assert conn.closing
    assert slave.stored() == {e.name: e for e in LOCAL}
    [error] = logged(events, LogLevel.error, "cannot tell whether {mailbox} is on our partitions")
    assert error["mailbox"] == "user.rem"
    assert error["count"] == 1


def test_after_a_failed_rescan_later_lines_are_ignored_until_the_next_resync(tmp_path, events):
    scans = ManualRunner()
    slave, partition = _unified_with_partition(tmp_path, scan_runner=scans)
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP)
    scans.run_all()
    slave.clock.advance(61)
    partition.rename(tmp_path / "unmounted")
    conn.feed(b'U01 DELETE "user.rem"\r\n')
    scans.run_all()  # fails: the DELETE is dropped and a resync demanded
    assert conn.closing
    # Under TLS the link stays open until the master's close_notify, and lines still come;
    # each came after the dropped DELETE, so none may be applied.
    conn.feed(b'U01 MAILBOX "user.late" "be2!p" ""\r\n')
    slave.replica.apply_line(MailboxLine(b"U01", b"user.later", b"be1!p1", b""))  # no disk look
    assert slave.stored() == {e.name: e for e in LOCAL}
    assert slave.replica.counters.stream_changes == 0
    assert not conn.transport.disconnected
    slave.clock.advance(10)  # the master never lets go: the close becomes an abort
    assert conn.transport.disconnected  # StringTransport's mark of abortConnection

    (tmp_path / "unmounted").rename(partition)
    conn.lose()
    slave.clock.advance(100)  # the retry
    conn = slave.conn
    conn.sync(LOCAL_DUMP)
    scans.run_all()
    assert slave.uplink.connected
    conn.feed(b'U01 MAILBOX "user.new" "be2!p" ""\r\n')  # the next resync applies lines again
    assert slave.stored()[b"user.new"] == active(b"user.new", b"be2!p")


def test_confirming_resync_closes_through_the_protocol_and_aborts_a_clinging_master(tmp_path):
    slave = SlaveRig(tmp_path, entries=PREVIOUS, retry_delay=100)
    slave.replica.remove_delay = 30
    slave.start()
    conn = slave.conn
    conn.sync(b'U01 MAILBOX "user.anne" "be2!p" "anne\tlrswipkxtecda\t"\r\n')
    assert slave.replica.counters.deferred_removals == 2  # bob and carl wait for a confirm
    slave.clock.advance(30)
    assert conn.closing
    conn.feed(b'U01 MAILBOX "user.late" "be2!p" ""\r\n')  # still open (TLS): not read
    assert b"user.late" not in slave.stored()
    slave.clock.advance(10)
    assert conn.transport.disconnected


def test_resync_judges_by_the_scan_alone_but_the_stream_still_looks_at_the_disk(tmp_path, events):
    partition = tmp_path / "p1"
    looked_up: list[bytes] = []
    legacy = make_on_disk([partition])

    def header_now(name: bytes) -> bool:
        looked_up.append(name)
        return legacy(name)

    write_header(partition, b"user.kept", "uuid")  # held as remote, and on our disk
    slave = SlaveRig(
        tmp_path,
        entries=[*LOCAL, active(b"user.kept", b"be2!p")],
        murder_mode="unified",
        heal=False,
        partitions=(("p1", partition),),
        retry_delay=100,
        header_now=header_now,
    )
    remote = b"".join(b'U01 MAILBOX "user.r%03d" "be2!p" ""\r\n' % i for i in range(50))
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP + remote)  # user.kept is not listed
    assert slave.uplink.connected
    assert looked_up == []  # the plan and the brake asked about 54 names: none by stat
    assert slave.stored()[b"user.kept"] == active(b"user.kept", b"be2!p")  # the scan found it
    assert len(slave.stored()) == 54

    # user.rem moves here since the scan, in the legacy layout; the master deletes it.
    write_header(partition, b"user.rem", "legacy")
    conn.feed(b'U01 DELETE "user.rem"\r\n')
    assert looked_up == [b"user.rem"]
    assert slave.stored()[b"user.rem"] == active(b"user.rem", b"be2!p")
    [refusal] = logged(events, LogLevel.error, "guard kept local mailbox", state="stream")
    assert refusal["mailbox"] == "user.rem"


def test_resync_fails_whole_when_the_partitions_cannot_be_scanned(tmp_path, events):
    partition = tmp_path / "p1"  # not there: an unmounted spool
    slave = SlaveRig(
        tmp_path,
        entries=LOCAL,
        murder_mode="unified",
        heal=False,
        partitions=(("p1", partition),),
    )
    slave.start()
    conn = slave.conn
    conn.sync(LOCAL_DUMP.split(b"\r\n", 2)[2])  # the master no longer lists user.loc*
    assert conn.closing
    conn.feed(b'U01 MAILBOX "user.late" "be1!p1" ""\r\n')  # the link may linger (TLS)
    assert slave.stored() == {e.name: e for e in LOCAL}  # nothing removed on a blind guess
    assert slave.replica.counters.resyncs == 0
    [error] = logged(events, LogLevel.error, "cannot scan the partitions")
    assert error["path"] == [str(partition)]
    [warned] = logged(events, LogLevel.warn, "connection to master {server} failed")
    assert "No such file or directory" in warned["reason"]

    partition.mkdir()
    conn.lose()
    assert_retry_after(slave, 20)
    slave.conn.sync(LOCAL_DUMP)
    assert slave.uplink.connected
    assert slave.replica.counters.resyncs == 1


# -- the read-only handler (§9.5) ----------------------------------------------------------

FIND_ANNE = (
    b'F0 MAILBOX "user.anne" "be2!p" "anne\tlrswipkxtecda\t"\r\nF0 OK "Search completed"\r\n'
)


def test_empty_slave_makes_readers_wait_for_the_first_sync(tmp_path):
    slave = SlaveRig(tmp_path)
    reader = slave.login()  # login does not wait
    assert reader.send(b'F0 FIND "user.anne"\r\nN1 NOOP\r\n') == b""
    slave.start()
    conn = slave.conn
    conn.login()
    conn.feed(b'U01 NO "x"\r\n')  # a failed sync does not make the slave ready
    assert reader.take() == b""
    assert not slave.handler.ready
    conn.lose()
    slave.clock.advance(20)
    slave.conn.sync(b'U01 MAILBOX "user.anne" "be2!p" "anne\tlrswipkxtecda\t"\r\n')
    assert slave.handler.ready
    assert reader.take() == FIND_ANNE + b'N1 OK "Noop done"\r\n'


def test_noop_is_answered_while_waiting_for_the_first_sync(tmp_path):
    slave = SlaveRig(tmp_path)
    reader = slave.login()
    assert reader.send(b"N0 NOOP\r\n") == b'N0 OK "Noop done"\r\n'


def test_slave_with_a_copy_answers_at_once(tmp_path):
    slave = SlaveRig(tmp_path, entries=PREVIOUS)  # uplink not even started
    reader = slave.login()
    assert reader.send(b'F0 FIND "user.anne"\r\n') == FIND_ANNE
    assert reader.send(b'F1 FIND "user.nobody"\r\n') == b'F1 OK "Search completed"\r\n'
    assert reader.send(b'L2 LIST "be3"\r\n') == (
        b'L2 RESERVE "user.carl" "be3!p"\r\nL2 OK "list complete"\r\n'
    )


@pytest.mark.parametrize(
    "command",
    [
        b'X1 RESERVE "user.z" "be1!p"',
        b'X1 ACTIVATE "user.z" "be1!p" ""',
        b'X1 DEACTIVATE "user.anne" "be2!p"',
        b'X1 DELETE "user.anne"',
    ],
)
def test_writes_are_refused_read_only(tmp_path, command):
    slave = SlaveRig(tmp_path, entries=PREVIOUS)
    reader = slave.login()
    assert reader.send(command + b"\r\n") == b'X1 BAD "read-only session"\r\n'
    assert slave.stored() == {e.name: e for e in PREVIOUS}
    assert not reader.closed


def test_chained_update_on_a_slave_gets_resync_changes(tmp_path):
    slave = SlaveRig(tmp_path, entries=PREVIOUS)
    chained = slave.login()
    assert chained.send(b"U01 UPDATE\r\n").endswith(b'U01 OK "streaming starts"\r\n')
    slave.start()
    slave.conn.sync(
        b'U01 MAILBOX "user.anne" "be2!p" "anne\tlrswipkxtecda\t"\r\n'
        b'U01 MAILBOX "user.bob" "be5!p" ""\r\n'
    )
    assert chained.take() == b'U01 MAILBOX "user.bob" "be5!p" ""\r\nU01 DELETE "user.carl"\r\n'

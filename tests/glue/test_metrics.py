"""Metrics and status of a master and a slave built on in-memory parts (issue 8, items 1, 3).

Each test drives a ``MasterRig`` or ``SlaveRig`` through the wire, scrapes the process's own
registry (``Metrics.exposition``, the bytes ``/metrics`` serves), parses the text format with
prometheus_client's parser and checks sample values; status documents are checked field by
field. Time moves only through the rig's ``Clock``, so latencies are exact.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.protocol import Protocol

from mupdate.config.tls_settings import ClientTls, ServerTls
from mupdate.metrics import Metrics, watch_master, watch_slave
from mupdate.model import EntryState, MailboxEntry
from mupdate.status import MasterStatus, ProcessFacts, SlaveStatus
from mupdate.tls import client_options, server_options
from tests.helpers.certs import Pki, session_pki  # noqa: F401 - fixture
from tests.helpers.glue import ADMIN, ManualRunner, MasterRig, quoted_b64
from tests.helpers.slaverig import SlaveRig
from tests.helpers.tlspipe import connect

Key = tuple[str, frozenset[tuple[str, str]]]


def scrape(metrics: Metrics) -> dict[Key, float]:
    """Every sample of the text exposition, by name and labels."""
    text = metrics.exposition().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Key, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def watched_master(tmp_path, **kw) -> MasterRig:
    rig = MasterRig(tmp_path, **kw)
    watch_master(rig.factory.metrics, rig.factory, rig.handler)
    return rig


def login_plain(password: str) -> bytes:
    return b'A01 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{password}") + b"\r\n"


def active(name: bytes, location: bytes) -> MailboxEntry:
    return MailboxEntry(name, EntryState.ACTIVE, location, b"")


# -- master: commands, outcomes, latency -------------------------------------------------


def test_commands_are_counted_by_name_and_outcome(tmp_path):
    rig = watched_master(tmp_path)
    conn = rig.login()
    conn.send(b'R1 RESERVE "user.a" "be1!p"\r\nR2 RESERVE "user.b" "be1!p"\r\n')
    conn.send(b'A3 ACTIVATE "user.a" "be1!p" ""\r\n')
    conn.send(b'R4 RESERVE "user.a" "be2!p"\r\n')  # another location: NO (rules)
    assert conn.send(b'D5 DELETE "user.none"\r\n').startswith(b"D5 NO")
    conn.send(b'F6 FIND "user.a"\r\nN7 NOOP\r\n')

    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_commands_total", command="AUTHENTICATE", outcome="ok") == 1
    assert value(s, "mupdate_commands_total", command="RESERVE", outcome="ok") == 2
    assert value(s, "mupdate_commands_total", command="RESERVE", outcome="no") == 1
    assert value(s, "mupdate_commands_total", command="ACTIVATE", outcome="ok") == 1
    assert value(s, "mupdate_commands_total", command="DELETE", outcome="no") == 1
    assert value(s, "mupdate_commands_total", command="FIND", outcome="ok") == 1
    assert value(s, "mupdate_commands_total", command="NOOP", outcome="ok") == 1
    assert value(s, "mupdate_command_seconds_count", command="RESERVE") == 3
    assert value(s, "mupdate_write_refusals_total", reason="rules") == 2
    assert value(s, "mupdate_write_refusals_total", reason="authority") == 0
    assert value(s, "mupdate_entries", state="active") == 1
    assert value(s, "mupdate_entries", state="reserved") == 1
    assert value(s, "mupdate_tombstones") == 0


def test_write_latency_and_batches_follow_the_commit(tmp_path):
    runner = ManualRunner()
    rig = watched_master(tmp_path, runner=runner)
    conn = rig.login()
    writer2 = rig.login()
    conn.send(b'R1 RESERVE "user.a" "be1!p"\r\n')  # commit 1 starts, held on the worker
    rig.clock.advance(0.25)
    writer2.send(b'R2 RESERVE "user.b" "be1!p"\r\n')  # both queue: batch 2
    conn.send(b'R3 RESERVE "user.c" "be1!p"\r\n')
    rig.clock.advance(0.25)
    runner.run_next()  # R1 durable at 0.5 s
    rig.clock.advance(0.5)
    runner.run_next()  # R2 (waited 0.75 s), R3 (0.5 s)
    assert conn.take() == b'R1 OK "done"\r\nR3 OK "done"\r\n'
    assert writer2.take() == b'R2 OK "done"\r\n'

    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_command_seconds_count", command="RESERVE") == 3
    assert value(s, "mupdate_command_seconds_sum", command="RESERVE") == pytest.approx(1.75)
    assert value(s, "mupdate_command_seconds_bucket", command="RESERVE", le="0.5") == 2
    assert value(s, "mupdate_command_seconds_bucket", command="RESERVE", le="1.0") == 3
    assert value(s, "mupdate_store_commit_batch_size_count") == 2
    assert value(s, "mupdate_store_commit_batch_size_sum") == 3
    assert value(s, "mupdate_store_commit_batch_size_bucket", le="1.0") == 1
    assert value(s, "mupdate_store_commit_seconds_count") == 2
    assert value(s, "mupdate_store_commit_seconds_sum") >= 0


def test_authority_refusals_are_counted_apart(tmp_path):
    rig = watched_master(tmp_path, authority={ADMIN: frozenset({"be1"})})
    conn = rig.login()
    assert conn.send(b'R1 RESERVE "user.a" "be2!p"\r\n').startswith(b"R1 NO")
    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_write_refusals_total", reason="authority") == 1
    assert value(s, "mupdate_commands_total", command="RESERVE", outcome="no") == 1


def test_engine_refusals_are_protocol_errors(tmp_path):
    rig = watched_master(tmp_path)
    conn = rig.connect()
    conn.take()
    assert conn.send(b"Y1 ZORK\r\n") == b'Y1 BAD "Unrecognized command"\r\n'
    assert conn.send(b'F1 FIND "a"\r\n') == b'F1 BAD "Please login first"\r\n'
    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_protocol_errors_total", outcome="bad") == 2
    assert ("mupdate_commands_total", frozenset({("command", "FIND"), ("outcome", "bad")})) not in s


# -- master: connections, streams, lag -----------------------------------------------------


def test_connections_by_state_and_a_stalled_stream_shows_its_lag(tmp_path):
    rig = watched_master(tmp_path)
    rig.connect()  # greeted, not logged in
    writer = rig.login()
    streamer = rig.login()
    streamer.send(b"U01 UPDATE\r\n")
    assert streamer.proto.output is not None
    streamer.proto.output.pauseProducing()  # the reader stops reading
    writer.send(b'R1 RESERVE "user.a" "be1!p"\r\nA2 ACTIVATE "user.a" "be1!p" ""\r\n')

    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_connections", state="not_authenticated") == 1
    assert value(s, "mupdate_connections", state="authenticated") == 1
    assert value(s, "mupdate_connections", state="streaming") == 1
    assert value(s, "mupdate_connections", state="closing") == 0
    assert value(s, "mupdate_connections_accepted_total") == 3
    assert value(s, "mupdate_streams") == 1
    assert value(s, "mupdate_stream_changes_total") == 2
    queued = value(s, "mupdate_stream_queued_bytes", peer="127.0.0.1:40000")
    streamer.proto.output.resumeProducing()
    sent = streamer.take()
    assert sent == b'U01 RESERVE "user.a" "be1!p"\r\nU01 MAILBOX "user.a" "be1!p" ""\r\n'
    assert queued == len(sent)
    assert value(scrape(rig.factory.metrics), "mupdate_stream_queued_bytes", peer="127.0.0.1:40000") == 0  # fmt: skip


def test_sasl_failures_by_mechanism(tmp_path):
    rig = watched_master(tmp_path)
    conn = rig.connect()
    conn.take()
    conn.send(login_plain("wrong"))
    rig.clock.advance(3)
    answers = conn.send(b'A02 AUTHENTICATE "CRAM-MD5"\r\n')
    rig.clock.advance(3)
    answers += conn.take()
    assert answers == (b'A01 NO "authentication failed"\r\nA02 NO "mechanism not available"\r\n')
    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_sasl_failures_total", mechanism="PLAIN") == 1
    assert value(s, "mupdate_sasl_failures_total", mechanism="none") == 1
    assert value(s, "mupdate_commands_total", command="AUTHENTICATE", outcome="no") == 2


@pytest.fixture
def pki(session_pki: Pki) -> Pki:  # noqa: F811 - the imported fixture
    return session_pki


def test_a_failed_tls_handshake_is_counted(tmp_path, pki):
    tls = ServerTls(cert=pki.server.cert, key=pki.server.key)
    rig = watched_master(tmp_path, tls=tls, loopback_plaintext=False)
    rig.factory.tls_options = server_options(rig.settings.tls)
    good = connect(rig.factory.buildProtocol(None), Protocol())
    good.flush()
    bad_proto = rig.factory.buildProtocol(None)
    bad = connect(bad_proto, Protocol())
    bad.client.write(b"S01 STARTTLS\r\n")
    bad.flush()
    bad.client.startTLS(client_options(replace(ClientTls(), ca_file=pki.other_ca), "127.0.0.1"))
    bad.flush()
    assert bad.server.lost
    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_tls_handshake_failures_total") == 1
    assert value(s, "mupdate_commands_total", command="STARTTLS", outcome="ok") == 1


# -- master: status ------------------------------------------------------------------------


def test_master_status_document(tmp_path):
    rig = watched_master(tmp_path)
    conn = rig.login()
    conn.send(b'R1 RESERVE "user.a" "be1!p"\r\nA2 ACTIVATE "user.b" "be1!p" ""\r\n')
    conn.send(b'D3 DELETE "user.b"\r\nU4 UPDATE\r\n')
    (tmp_path / "db.sqlite3").write_bytes(b"x" * 100)
    (tmp_path / "db.sqlite3-wal").write_bytes(b"x" * 20)
    now = 1_700_000_100.0
    facts = ProcessFacts("master", "master.test", "0.1.0", tmp_path / "db.sqlite3", 1_700_000_000.0, lambda: now)  # fmt: skip
    status = MasterStatus(facts, rig.factory, rig.handler)
    assert status.status() == {
        "role": "master",
        "version": "0.1.0",
        "servername": "master.test",
        "started": "2023-11-14T22:13:20+00:00",
        "uptime_seconds": 100.0,
        "store": {"path": str(tmp_path / "db.sqlite3"), "size_bytes": 120},
        "entries": {"total": 1, "active": 0, "reserved": 1},
        "tombstones": 1,
        "connections": {"not_authenticated": 0, "authenticated": 0, "streaming": 1, "closing": 0},
        "streams": 1,
    }
    assert status.health() == (True, "ok")


def test_master_health_follows_the_store(tmp_path):
    """503 while one commit runs past STUCK_COMMIT, and after a failed commit until the next
    one succeeds; 200 otherwise."""
    from mupdate.status import STUCK_COMMIT
    from tests.helpers.memstore import InMemoryStore

    runner, store = ManualRunner(), InMemoryStore()
    rig = watched_master(tmp_path, store=store, runner=runner)
    rig.handler.committer.now = rig.clock.seconds
    facts = ProcessFacts("master", "m", "0.1.0", tmp_path / "db", 0.0, rig.clock.seconds)
    status = MasterStatus(facts, rig.factory, rig.handler)
    conn = rig.login()
    conn.send(b'R1 RESERVE "user.a" "be1!p"\r\n')
    assert status.health() == (True, "ok")  # a commit that is running, not yet for long
    rig.clock.advance(STUCK_COMMIT)
    assert status.health() == (False, "a store commit has been running for 5 s")
    runner.run_all()
    assert b"R1 OK" in conn.transport.value()
    assert status.health() == (True, "ok")

    store.fail_next = True
    conn.send(b'R2 RESERVE "user.b" "be1!p"\r\n')
    runner.run_all()  # the commit fails, then the index is reloaded from the store
    assert b"R2 NO" in conn.transport.value()
    healthy, reason = status.health()
    assert not healthy
    assert reason.startswith("the last store commit failed: ")
    conn.send(b'R3 RESERVE "user.c" "be1!p"\r\n')
    runner.run_all()
    assert b"R3 OK" in conn.transport.value()
    assert status.health() == (True, "ok")


# -- slave --------------------------------------------------------------------------------


def watched_slave(tmp_path, **kw) -> SlaveRig:
    rig = SlaveRig(tmp_path, **kw)
    watch_slave(rig.factory.metrics, rig.factory, rig.replica, rig.uplink, rig.healer, rig.clock.seconds)  # fmt: skip
    return rig


def slave_status(rig: SlaveRig) -> SlaveStatus:
    facts = ProcessFacts("slave", "be1", "0.1.0", rig.settings.database_path, 0.0, rig.clock.seconds)  # fmt: skip
    return SlaveStatus(facts, rig.factory, rig.handler, rig.uplink, rig.healer)


def test_slave_resync_then_stream_then_lost_master(tmp_path):
    rig = watched_slave(tmp_path)
    status = slave_status(rig)
    assert status.health() == (
        False,
        "no copy to serve yet: first sync with master.test:3905 pending (disconnected)",
    )
    rig.start()
    rig.clock.advance(5)
    rig.conn.login()
    assert status.status()["sync"]["state"] == "syncing"  # type: ignore[index]
    rig.clock.advance(2)  # the dump takes 2 s
    rig.conn.feed(b'U01 MAILBOX "user.a" "be2!p" ""\r\nU01 RESERVE "user.b" "be2!p"\r\n')
    rig.conn.feed(b'U01 OK "streaming starts"\r\n')
    rig.conn.feed(b'U01 MAILBOX "user.c" "be2!p" ""\r\n')
    rig.clock.advance(20)  # the ping
    assert rig.conn.take() == b"N0 NOOP\r\n"
    rig.clock.advance(1)
    rig.conn.feed(b'N0 OK "Noop done"\r\n')  # the copy is current at 28 s
    rig.clock.advance(4)

    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_sync_state", state="synced") == 1
    assert value(s, "mupdate_sync_state", state="disconnected") == 0
    assert value(s, "mupdate_resyncs_total") == 1
    assert value(s, "mupdate_resync_changes_total") == 2
    assert value(s, "mupdate_resync_seconds_count") == 1
    assert value(s, "mupdate_resync_seconds_sum") == 2
    assert value(s, "mupdate_slave_stream_changes_total") == 1
    assert value(s, "mupdate_entries", state="active") == 2
    assert value(s, "mupdate_entries", state="reserved") == 1
    assert value(s, "mupdate_uplink_connected") == 1
    assert value(s, "mupdate_uplink_connections_total") == 1
    assert value(s, "mupdate_last_sync_timestamp_seconds") == 28
    assert value(s, "mupdate_sync_lag_seconds") == 4
    assert value(s, "mupdate_store_commit_batch_size_count") == 1  # the streamed change
    assert value(s, "mupdate_brake_held") == 0
    assert status.health() == (True, "ok")
    doc = status.status()
    assert doc["master"] == "master.test:3905"
    assert doc["entries"] == {"total": 3, "active": 2, "reserved": 1}
    assert doc["sync"] == {
        "state": "synced",
        "last_sync": "1970-01-01T00:00:28+00:00",
        "lag_seconds": 4.0,
        "resyncs": 1,
        "failures_in_a_row": 0,
    }
    assert doc["heal"] is None

    rig.conn.lose()
    rig.clock.advance(6)
    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_sync_state", state="disconnected") == 1
    assert value(s, "mupdate_uplink_connected") == 0
    assert value(s, "mupdate_sync_lag_seconds") == 10
    assert status.health() == (True, "ok")  # it still has a copy to serve


REMOTE_30 = [active(b"user.r%02d" % i, b"be2!p") for i in range(30)]


def test_brake_hold_and_guard_refusals_show(tmp_path):
    master = MasterRig(tmp_path)  # lost its database: lists nothing
    rig = watched_slave(tmp_path, master=master, entries=REMOTE_30, retry_delay=20)
    rig.start()
    rig.flush()
    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_brake_holds_total") == 1
    assert value(s, "mupdate_brake_held") == 1
    assert value(s, "mupdate_sync_state", state="held") == 1
    assert value(s, "mupdate_uplink_failures") == 1
    assert value(s, "mupdate_resyncs_total") == 0
    doc = slave_status(rig).status()
    assert doc["brake"]["held"].startswith("the master's list would remove 30 of our 30")  # type: ignore[index]
    assert doc["sync"]["state"] == "held"  # type: ignore[index]
    assert slave_status(rig).health() == (True, "ok")  # serving the last-known-good copy

    rig.release_brake()
    rig.clock.advance(40)
    rig.flush()
    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_brake_held") == 0
    assert value(s, "mupdate_brake_releases_total") == 1
    assert value(s, "mupdate_sync_state", state="synced") == 1


def test_unified_guard_refusals_and_heal_actions(tmp_path):
    from mupdate.slave.disk import header_path

    partition = tmp_path / "p1"
    header = header_path(partition, b"user.loc1")
    header.parent.mkdir(parents=True)
    header.write_bytes(b"\xa1\x02\x8b\x0dCyrus mailbox header\n")
    master = MasterRig(tmp_path)
    local = [active(b"user.loc1", b"be1!p1"), active(b"user.loc2", b"be1!p1")]
    rig = watched_slave(
        tmp_path,
        master=master,
        entries=local,
        murder_mode="unified",
        partitions=(("p1", partition),),
    )
    rig.start()
    rig.flush()
    s = scrape(rig.factory.metrics)
    assert value(s, "mupdate_guard_refusals_total") == 2  # both kept: local, master lacks them
    assert value(s, "mupdate_heal_actions_total", result="healed") == 1  # only the sure one
    assert value(s, "mupdate_heal_actions_total", result="conflict") == 0
    assert value(s, "mupdate_heal_actions_total", result="failed") == 0
    doc = slave_status(rig).status()
    assert doc["guard_refusals"] == 2
    assert doc["heal"] == {"healed": 1, "conflicts": 0, "failures": 0}
    assert doc["mode"] == "unified"


def test_each_process_has_its_own_registry(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = watched_master(tmp_path / "one")
    two = watched_master(tmp_path / "two")
    one.login()
    assert value(scrape(one.factory.metrics), "mupdate_connections_accepted_total") == 1
    assert value(scrape(two.factory.metrics), "mupdate_connections_accepted_total") == 0

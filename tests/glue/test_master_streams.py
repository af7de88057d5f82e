"""UPDATE streams, group commit, storage faults and connection limits on the master glue (§8)."""

from __future__ import annotations

import pytest

from mupdate.model import EntryState, MailboxEntry
from tests.helpers.glue import ManualRunner, MasterRig
from tests.helpers.memstore import InMemoryStore


@pytest.fixture
def rig(tmp_path):
    return MasterRig(
        tmp_path,
        store=InMemoryStore([MailboxEntry(b"user.s1", EntryState.ACTIVE, b"be1!default", b"")]),
    )


def test_update_dumps_then_streams_with_the_update_tag(rig):
    streamer = rig.login()
    assert streamer.send(b"U01 UPDATE\r\n") == (
        b'U01 MAILBOX "user.s1" "be1!default" ""\r\nU01 OK "streaming starts"\r\n'
    )
    writer = rig.login()
    assert writer.send(b'X0 RESERVE "user.s2" "be1!default"\r\n') == b'X0 OK "done"\r\n'
    assert streamer.take() == b'U01 RESERVE "user.s2" "be1!default"\r\n'
    writer.send(b'X1 ACTIVATE "user.s2" "be1!default" "a\tlrs\t"\r\nX2 DELETE "user.s1"\r\n')
    assert streamer.take() == (
        b'U01 MAILBOX "user.s2" "be1!default" "a\tlrs\t"\r\nU01 DELETE "user.s1"\r\n'
    )


def test_change_reaches_streams_before_the_writer_hears_ok(tmp_path):
    runner = ManualRunner()
    rig = MasterRig(tmp_path, runner=runner)
    streamer = rig.login()
    streamer.send(b"U01 UPDATE\r\n")
    writer = rig.login()
    assert writer.send(b'X0 RESERVE "user.a" "be1!p"\r\n') == b""
    assert streamer.take() == b""
    runner.run_all()
    assert streamer.take() == b'U01 RESERVE "user.a" "be1!p"\r\n'
    assert writer.take() == b'X0 OK "done"\r\n'


def test_noop_on_a_stream_follows_pending_lines(rig):
    streamer = rig.login()
    streamer.send(b"U01 UPDATE\r\n")
    writer = rig.login()
    streamer.transport.producer.pauseProducing()  # the slave stops reading for a moment
    writer.send(b'X0 ACTIVATE "user.s4" "be1!default" ""\r\n')
    streamer.proto.dataReceived(b"N1 NOOP\r\n")
    assert streamer.take() == b""
    streamer.transport.producer.resumeProducing()
    assert streamer.take() == b'U01 MAILBOX "user.s4" "be1!default" ""\r\nN1 OK "Noop done"\r\n'


def test_streaming_refuses_other_commands(rig):
    streamer = rig.login()
    streamer.send(b"U01 UPDATE\r\n")
    for command in (b"L1 LIST", b'F1 FIND "x"', b'R1 RESERVE "x" "y"', b"U2 UPDATE"):
        tag = command.split()[0]
        assert streamer.send(command + b"\r\n") == tag + b' BAD "not legal when streaming"\r\n'
    assert streamer.send(b"Q1 LOGOUT\r\n") == b'Q1 OK "bye-bye"\r\n'


def test_partial_update_follows_servers_in_and_out(rig):
    streamer = rig.login()
    assert streamer.send(b'U02 UPDATE "be2" "be7"\r\n') == b'U02 OK "streaming starts"\r\n'
    writer = rig.login()
    writer.send(b'X0 ACTIVATE "user.m" "be1!x" ""\r\n')
    assert streamer.take() == b""
    writer.send(b'X1 ACTIVATE "user.m" "be2!x" ""\r\n')
    assert streamer.take() == b'U02 MAILBOX "user.m" "be2!x" ""\r\n'
    writer.send(b'X2 ACTIVATE "user.m" "be3!x" ""\r\n')
    assert streamer.take() == b'U02 MAILBOX "user.m" "be3!x" ""\r\n'
    writer.send(b'X3 DELETE "user.m"\r\n')
    assert streamer.take() == b""


def test_writes_arriving_together_commit_together(tmp_path):
    runner = ManualRunner()
    store = InMemoryStore()
    rig = MasterRig(tmp_path, store=store, runner=runner)
    writers = [rig.login() for _ in range(4)]
    for i, writer in enumerate(writers):
        writer.proto.dataReceived(b'X0 RESERVE "user.%d" "be1!p"\r\n' % i)
    assert len(runner.calls) == 1  # the first write's commit is in flight
    runner.run_next()
    assert writers[0].take() == b'X0 OK "done"\r\n'
    assert [w.take() for w in writers[1:]] == [b""] * 3
    assert len(runner.calls) == 1  # the other three became one batch
    runner.run_next()
    assert [w.take() for w in writers[1:]] == [b'X0 OK "done"\r\n'] * 3
    assert [len(batch) for batch in store.batches] == [1, 3]


def test_unchanged_write_waits_for_earlier_commits(tmp_path):
    runner = ManualRunner()
    rig = MasterRig(tmp_path, runner=runner)
    first, replica = rig.login(), rig.login()
    first.proto.dataReceived(b'X0 RESERVE "user.r" "be1!p"\r\n')
    replica.proto.dataReceived(b'X0 RESERVE "user.r" "be1!p"\r\n')  # the replica's repeat
    assert replica.take() == b""
    runner.run_all()
    assert first.take() == b'X0 OK "done"\r\n'
    assert replica.take() == b'X0 OK "done"\r\n'


def test_storage_fault_answers_no_and_reloads_the_index(tmp_path):
    store = InMemoryStore(
        [MailboxEntry(b"user.keep", EntryState.ACTIVE, b"be1!p", b"")], fail_next=True
    )
    rig = MasterRig(tmp_path, store=store)
    conn = rig.login()
    assert conn.send(b'X0 DELETE "user.keep"\r\n') == b'X0 NO "storage failure"\r\n'
    assert conn.send(b'F FIND "user.keep"\r\n').startswith(b'F MAILBOX "user.keep"')
    assert conn.send(b'X1 DELETE "user.keep"\r\n') == b'X1 OK "done"\r\n'
    assert b"user.keep" not in store.entries


def test_stream_that_stops_reading_is_closed_with_bye(tmp_path):
    rig = MasterRig(tmp_path, stream_buffer_max=4096)
    streamer = rig.login()
    streamer.send(b"U01 UPDATE\r\n")
    streamer.transport.producer.pauseProducing()
    writer = rig.login()
    for i in range(200):
        writer.send(
            b'X%d ACTIVATE "user.flood.%d" "be1!default" "someone\tlrswipkxtecdan\t"\r\n' % (i, i)
        )
        if streamer.closed:
            break
    assert streamer.closed
    assert streamer.take().endswith(b'* BYE "' + b"output buffer full: reader too slow" + b'"\r\n')
    assert streamer.proto.output.queued_bytes == 0
    assert writer.send(b"N NOOP\r\n") == b'N OK "Noop done"\r\n'


def test_idle_connection_gets_bye(rig):
    conn = rig.login()  # before login, mupdate_login_timeout applies (test_sasl_scram.py)
    rig.clock.advance(rig.settings.idle_timeout - 1)
    assert not conn.closed
    conn.send(b"Q NOOP\r\n")  # any input resets the timer
    rig.clock.advance(rig.settings.idle_timeout - 1)
    assert not conn.closed
    rig.clock.advance(2)
    assert conn.take() == b'* BYE "idle for too long"\r\n'
    assert conn.closed


def test_connections_over_the_maximum_get_server_unable(tmp_path):
    rig = MasterRig(tmp_path, connections_max=2)
    rig.connect()
    rig.connect()
    third = rig.connect()
    assert third.take() == b'* BYE "Server Unable"\r\n\0'
    assert third.closed
    assert rig.factory.counters.refused_connections == 1


def test_unchanged_write_after_a_failed_commit_is_not_acknowledged(tmp_path):
    runner = ManualRunner()
    store = InMemoryStore(fail_next=True)
    rig = MasterRig(tmp_path, store=store, runner=runner)
    first, replica = rig.login(), rig.login()
    first.proto.dataReceived(b'X0 RESERVE "user.r" "be1!p"\r\n')
    replica.proto.dataReceived(b'X0 RESERVE "user.r" "be1!p"\r\n')  # relies on the first
    runner.run_all()
    assert first.take() == b'X0 NO "storage failure"\r\n'
    assert replica.take() == b'X0 NO "storage failure"\r\n'
    assert store.entries == {}


def test_unchanged_write_is_not_starved_by_a_steady_write_load(tmp_path):
    runner = ManualRunner()
    rig = MasterRig(tmp_path, runner=runner)
    busy, replica = rig.login(), rig.login()
    busy.proto.dataReceived(b'X0 RESERVE "user.r" "be1!p"\r\n')
    replica.proto.dataReceived(b'X0 RESERVE "user.r" "be1!p"\r\n')
    others = [rig.login() for _ in range(3)]
    for i, other in enumerate(others):
        other.proto.dataReceived(b'Y RESERVE "user.o%d" "be1!p"\r\n' % i)  # queued behind
    runner.run_next()  # only the first batch is durable; the queue is not empty
    assert replica.take() == b'X0 OK "done"\r\n'
    assert runner.calls  # the later writes are still waiting for their own commit

"""The master's control socket: an import lands as ONE commit batch and reaches the streams."""

from __future__ import annotations

import io

from twisted.internet.testing import StringTransport

from mupdate.db.export import export_entries
from mupdate.master.control import ControlProtocol, import_changes
from mupdate.model import EntryState, MailboxEntry
from tests.helpers.glue import ManualRunner, MasterRig
from tests.helpers.memstore import InMemoryStore

A = MailboxEntry(b"user.a", EntryState.ACTIVE, b"be1!p", b"a\tlrs\t")
B = MailboxEntry(b"user.b", EntryState.RESERVED, b"be1!p")
C = MailboxEntry(b"user.c", EntryState.ACTIVE, b"be2!p", b"")


def document(*entries: MailboxEntry) -> bytes:
    out = io.StringIO()
    export_entries(entries, out)
    return out.getvalue().encode()


def send(rig: MasterRig, data: bytes) -> StringTransport:
    proto = ControlProtocol(rig.handler, rig.clock.seconds)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(data)
    proto.readConnectionLost()
    return transport


def test_import_changes_by_set():
    changes = import_changes([A, B], [B, C], now=5.0)
    assert [(old, new) for _, old, new in changes] == [(None, C), (A, None)]


def test_import_is_one_batch_and_is_streamed(tmp_path):
    runner = ManualRunner()
    store = InMemoryStore([A, B])
    rig = MasterRig(tmp_path, store=store, runner=runner)
    streamer = rig.login()
    streamer.send(b"U01 UPDATE\r\n")
    busy = rig.login()
    busy.proto.dataReceived(b'X RESERVE "user.busy" "be3!p"\r\n')  # a commit is in flight
    changed_b = MailboxEntry(b"user.b", EntryState.ACTIVE, b"be1!p", b"b\tlrs\t")
    transport = send(rig, b"IMPORT\n" + document(changed_b, C))
    assert transport.value() == b""
    runner.run_all()
    # The busy write commits alone; the import (which also replaces that new entry) is
    # one batch: put b, put c, remove a, remove busy.
    assert [len(batch) for batch in store.batches] == [1, 4]
    assert transport.value() == b"OK 1 1 2\n"
    assert store.entries == {b"user.b": changed_b, b"user.c": C}
    lines = streamer.take()
    assert b'U01 DELETE "user.a"\r\n' in lines
    assert b'U01 MAILBOX "user.c" "be2!p" ""\r\n' in lines


def test_bad_import_changes_nothing(tmp_path):
    store = InMemoryStore([A])
    rig = MasterRig(tmp_path, store=store)
    transport = send(
        rig, b'IMPORT\n{"format": "mupdate-export", "version": 1, "entries": [{"name": ""}]}'
    )
    assert transport.value().startswith(b"NO import refused, nothing changed: ")
    assert store.entries == {b"user.a": A}
    assert send(rig, b"DROP\n").value() == b"NO unknown request; expected IMPORT\n"

"""The log events of the glue, as an observer sees them (style.md §9): field names, levels,
the audit namespace, progress of large dumps, and no secret in any event.

A list observer on the global publisher captures the events of real masters and slaves
(MasterRig, SlaveRig) driven over StringTransports with a Clock.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from mupdate.logs import AUDIT_NAMESPACE, VOCABULARY
from mupdate.model import EntryState, MailboxEntry
from mupdate.net.client import MupdateClientProtocol
from mupdate.sasl import ScramClient
from tests.helpers.glue import ADMIN, PASSWORD, MasterRig, quoted_b64
from tests.helpers.memstore import InMemoryStore
from tests.helpers.slaverig import SlaveRig

WRONG = "not-the-Password-42"


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    captured: list[LogEvent] = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


def logged(events: list[LogEvent], level: LogLevel, fragment: str, **fields: Any) -> list[LogEvent]:
    return [
        e
        for e in events
        if e.get("log_level") == level
        and fragment in (e.get("log_format") or "")
        and all(e.get(k) == v for k, v in fields.items())
    ]


def fields_of(event: LogEvent) -> set[str]:
    return {k for k in event if not k.startswith("log_")}


def shown(events: list[LogEvent]) -> str:
    """Everything an observer could print: formatted text and every field's value."""
    return "\n".join(formatEvent(e) + " " + repr(sorted(map(str, e.values()))) for e in events)


def active(name: bytes, location: bytes) -> MailboxEntry:
    return MailboxEntry(name, EntryState.ACTIVE, location, b"")


def secrets_of(password: str) -> list[str]:
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{ADMIN}\0{password}".encode()).decode(),
    ]


# -- failed logins ------------------------------------------------------------------------


def test_failed_plain_login_is_a_warning_with_user_peer_reason_and_no_password(
    tmp_path, events
) -> None:
    rig = MasterRig(tmp_path)
    conn = rig.connect()
    conn.take()
    conn.send(b'A01 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{WRONG}") + b"\r\n")
    rig.clock.advance(3)
    assert b"A01 NO" in conn.take()
    (event,) = logged(events, LogLevel.warn, "failed login")
    assert event["user"] == ADMIN
    assert event["peer"] == "127.0.0.1:40000"
    assert event["mechanism"] == "PLAIN"
    assert event["reason"] == "wrong password or unknown user"
    assert fields_of(event) <= VOCABULARY
    text = shown(events)
    for secret in secrets_of(WRONG):
        assert secret not in text


def test_failed_login_and_scram_logins_name_the_user_never_the_password(tmp_path, events) -> None:
    rig = MasterRig(tmp_path)
    conn = rig.connect()
    conn.take()
    conn.send(b'A01 AUTHENTICATE "LOGIN"\r\n')
    conn.send(base64.b64encode(ADMIN.encode()) + b"\r\n")
    conn.send(base64.b64encode(WRONG.encode()) + b"\r\n")
    rig.clock.advance(3)
    assert b"A01 NO" in conn.take()

    client = ScramClient("SCRAM-SHA-256", ADMIN, WRONG, "")
    first = client.initial()
    assert first is not None
    line = conn.send(b'A02 AUTHENTICATE "SCRAM-SHA-256" "' + base64.b64encode(first) + b'"\r\n')
    conn.send(base64.b64encode(client.respond(base64.b64decode(line.strip()))) + b"\r\n")
    rig.clock.advance(3)
    assert b"A02 NO" in conn.take()

    failed = logged(events, LogLevel.warn, "failed login")
    assert [(e["mechanism"], e["user"]) for e in failed] == [
        ("LOGIN", ADMIN),
        ("SCRAM-SHA-256", ADMIN),
    ]
    good = rig.login()
    good.send(b"X01 NOOP\r\n")
    assert logged(events, LogLevel.info, "logged in from", user=ADMIN, mechanism="PLAIN")
    text = shown(events)
    for secret in [*secrets_of(WRONG), *secrets_of(PASSWORD)]:
        assert secret not in text


# -- the audit namespace --------------------------------------------------------------------


def test_each_committed_write_is_one_audit_event_with_old_and_new_location(
    tmp_path, events
) -> None:
    rig = MasterRig(tmp_path)
    conn = rig.login()
    assert b"X1 OK" in conn.send(b'X1 RESERVE "user.a" "be1!p1"\r\n')
    assert b"X2 OK" in conn.send(b'X2 ACTIVATE "user.a" "be1!p1" "a\tlrs\t"\r\n')
    assert b"X3 OK" in conn.send(b'X3 ACTIVATE "user.a" "be2!p2" "a\tlrs\t"\r\n')
    assert b"X4 OK" in conn.send(b'X4 DELETE "user.a"\r\n')
    assert b"X5 NO" in conn.send(b'X5 DELETE "user.nobody"\r\n')  # refused: no event
    audited = [e for e in events if e.get("log_namespace") == AUDIT_NAMESPACE]
    assert [
        (e["command"], e["mailbox"], e["old_location"], e["location"], e["state"]) for e in audited
    ] == [
        ("RESERVE", "user.a", "-", "be1!p1", "reserved"),
        ("ACTIVATE", "user.a", "be1!p1", "be1!p1", "active"),
        ("ACTIVATE", "user.a", "be1!p1", "be2!p2", "active"),
        ("DELETE", "user.a", "be2!p2", "-", "deleted"),
    ]
    for event in audited:
        assert event["log_level"] is LogLevel.info
        assert event["user"] == ADMIN
        assert fields_of(event) <= VOCABULARY


def test_an_authority_refusal_is_audited_with_the_mailbox(tmp_path, events) -> None:
    rig = MasterRig(tmp_path, authority={ADMIN: frozenset({"be1"})})
    conn = rig.login()
    assert b"X1 NO" in conn.send(b'X1 RESERVE "user.b" "be2!p"\r\n')
    (event,) = [e for e in events if e.get("log_namespace") == AUDIT_NAMESPACE]
    assert event["log_level"] is LogLevel.warn
    assert (event["user"], event["command"], event["mailbox"], event["location"]) == (
        ADMIN,
        "RESERVE",
        "user.b",
        "be2!p",
    )
    assert event["reason"]


# -- the guard and the brake (slave) ----------------------------------------------------------


def test_a_guard_refusal_is_an_error_naming_the_mailbox(tmp_path, events) -> None:
    local = [active(b"user.loc", b"be1!p1"), active(b"user.rem", b"be2!p")]
    slave = SlaveRig(tmp_path, entries=local, murder_mode="unified", heal=False)
    slave.start()
    conn = slave.conn
    conn.sync(b'U01 MAILBOX "user.loc" "be1!p1" ""\r\nU01 MAILBOX "user.rem" "be2!p" ""\r\n')
    conn.feed(b'U01 DELETE "user.loc"\r\n')
    (event,) = logged(events, LogLevel.error, "guard kept local mailbox")
    assert event["mailbox"] == "user.loc"
    assert event["state"] == "stream"
    assert fields_of(event) <= VOCABULARY


def test_the_brake_is_critical(tmp_path, events) -> None:
    master = MasterRig(tmp_path)  # lists nothing
    entries = [active(b"user.r%02d" % i, b"be2!p") for i in range(30)]
    slave = SlaveRig(tmp_path, master=master, entries=entries)
    slave.start()
    slave.flush()
    (event,) = logged(events, LogLevel.critical, "mass-delete brake holds the resync")
    assert event["reason"]
    assert fields_of(event) <= VOCABULARY


# -- progress of large dumps ------------------------------------------------------------------


def test_large_resync_logs_progress_received_and_applied(tmp_path, events, monkeypatch) -> None:
    monkeypatch.setattr(MupdateClientProtocol, "progress_every", 4)
    monkeypatch.setattr("mupdate.slave.replica.LARGE_DUMP", 5)
    remote = [active(b"user.m%02d" % i, b"be2!p") for i in range(10)]
    master = MasterRig(tmp_path, store=InMemoryStore(remote))
    slave = SlaveRig(tmp_path, master=master)
    slave.start()
    slave.flush()
    assert len(slave.stored()) == 10
    received = logged(events, LogLevel.info, "received {count} entries")
    assert [e["count"] for e in received] == [4, 8]
    assert all(e["tag"] == "U01" and e["duration_ms"] >= 0 for e in received)
    (applying,) = logged(events, LogLevel.info, "applying {count} resync changes")
    assert applying["count"] == 10
    (sent,) = logged(events, LogLevel.info, "master {server} sent {count} entries in")
    assert sent["count"] == 10
    (applied,) = logged(events, LogLevel.info, "resync applied")
    assert (applied["count"], applied["added"], applied["kept"]) == (10, 10, 0)
    assert isinstance(applied["duration_ms"], int)


def test_master_logs_large_list_and_update_dumps(tmp_path, events, monkeypatch) -> None:
    monkeypatch.setattr("mupdate.master.service.LARGE_DUMP", 3)
    entries = [active(b"user.x%d" % i, b"be1!p") for i in range(3)]
    rig = MasterRig(tmp_path, store=InMemoryStore(entries))
    conn = rig.login()
    assert conn.send(b"L1 LIST\r\n").count(b"L1 MAILBOX") == 3
    assert b"U1 OK" in conn.send(b"U1 UPDATE\r\n")
    sent = logged(events, LogLevel.info, "sent {count} entries to {user}")
    assert [(e["command"], e["tag"], e["count"], e["peer"]) for e in sent] == [
        ("LIST", "L1", 3, "127.0.0.1:40000"),
        ("UPDATE", "U1", 3, "127.0.0.1:40000"),
    ]
    assert all(isinstance(e["duration_ms"], int) for e in sent)
    (tmp_path / "small").mkdir()
    small = MasterRig(tmp_path / "small", store=InMemoryStore(entries[:2]))
    before = len(events)
    small.login().send(b"L1 LIST\r\n")
    assert logged(events[before:], LogLevel.info, "sent {count} entries") == []

"""Logging of real `twistd mupdate-master` / `mupdate-slave` processes (style.md §9).

The config's mupdate_log_format, mupdate_log_level, mupdate_audit_log and mupdate_syslog*
are honoured under plain `twistd -n mupdate-master --config F` (the plugin hands twistd its
--logger), and no password, SASL payload or credential hash reaches any log, even at debug
level. Syslog goes to a unix datagram socket the test binds (mupdate_syslog_socket), read
back as the RFC 3164 datagrams a syslog daemon would get.
No sleeps: every wait is the helpers' bounded readiness poll or a blocking read.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mupdate.sasl import ScramClient
from tests.helpers.ourmaster import OurMaster, our_master_available
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import MupdateClient, literal

pytestmark = pytest.mark.skipif(
    our_master_available() is not None, reason=str(our_master_available())
)

MASTER_PASSWORD = "Master-Pw-7f3a9c"
SLAVE_PASSWORD = "Slave-Pw-2b8e41"
WRONG_PASSWORD = "Wrong-Pw-c0ffee"
JSON_DEBUG = {"mupdate_log_format": "json", "mupdate_log_level": "debug"}


def json_records(path: Path) -> list[dict[str, object]]:
    """Every line the process wrote (stdout and stderr) as JSON; the helper's own
    '---- start' header lines excepted."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("---- start "):
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line in {path.name}: {line!r}") from None
    return records


def raw_line(client: MupdateClient) -> bytes:
    return client._read_line(time.monotonic() + client.timeout).rstrip(b"\r\n")


def login_login(client: MupdateClient, user: str, password: str) -> bytes:
    client.send_raw(b'L01 AUTHENTICATE "LOGIN"\r\n')
    assert base64.b64decode(raw_line(client)) == b"Username:"
    client.send_raw(base64.b64encode(user.encode()) + b"\r\n")
    assert base64.b64decode(raw_line(client)) == b"Password:"
    client.send_raw(base64.b64encode(password.encode()) + b"\r\n")
    return client.read_until_tagged(b"L01").raw


def scram_login(client: MupdateClient, user: str, password: str) -> bytes:
    scram = ScramClient("SCRAM-SHA-256", user, password, "")
    first = scram.initial()
    assert first is not None
    client.send_raw(
        b'S01 AUTHENTICATE "SCRAM-SHA-256" ' + literal(base64.b64encode(first)) + b"\r\n"
    )
    server_first = base64.b64decode(raw_line(client))
    client.send_raw(base64.b64encode(scram.respond(server_first)) + b"\r\n")
    final = base64.b64decode(raw_line(client))
    assert scram.respond(final) == b""  # the server proved it knows our keys
    client.send_raw(b"\r\n")
    return client.read_until_tagged(b"S01").raw


def hash_strings(credentials: Path) -> list[str]:
    """Every salt, hash and key of a credentials file, and each verifier whole."""
    found = []
    for line in credentials.read_text().splitlines():
        if line.startswith("#") or ":" not in line:
            continue
        for verifier in line.split(":", 1)[1].split(":"):
            found.append(verifier)
            found += [part for part in verifier.split("$")[2:] if len(part) >= 8]
    assert found
    return found


def secret_forms(password: str, user: str = "admin") -> list[str]:
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
    ]


def test_json_stdout_and_one_audit_line_per_committed_write(tmp_path: Path) -> None:
    audit = tmp_path / "audit" / "audit.jsonl"
    master = OurMaster(
        tmp_path / "master",
        extra_config={"mupdate_log_format": "json", "mupdate_audit_log": str(audit)},
    )
    master.start()
    try:
        with MupdateClient.connect(master.host, master.port) as client:
            client.authenticate_plain(master.admin, master.password)
            assert client.command("RESERVE", "user.a", "be1!p1").ok
            assert client.command("ACTIVATE", "user.a", "be1!p1", "a\tlrs\t").ok
            assert client.command("ACTIVATE", "user.a", "be2!p2", "a\tlrs\t").ok
            assert client.command("DELETE", "user.a").ok
            assert not client.command("DELETE", "user.none").ok  # refused: not audited
            client.logout()
    finally:
        master.stop()
    records = json_records(master.log_path)
    assert {"time", "level", "namespace", "text"} <= set(records[0])
    assert any(r.get("mechanism") == "PLAIN" and r.get("user") == "admin" for r in records)
    assert all(r["level"] != "debug" for r in records)  # the default level is info
    audited = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [
        (r["command"], r["mailbox"], r["old_location"], r["location"], r["state"]) for r in audited
    ] == [
        ("RESERVE", "user.a", "-", "be1!p1", "reserved"),
        ("ACTIVATE", "user.a", "be1!p1", "be1!p1", "active"),
        ("ACTIVATE", "user.a", "be1!p1", "be2!p2", "active"),
        ("DELETE", "user.a", "be2!p2", "-", "deleted"),
    ]
    assert all(r["namespace"] == "mupdate.audit" and r["user"] == "admin" for r in audited)


def test_no_secret_reaches_any_log_even_at_debug(tmp_path: Path) -> None:
    audit = tmp_path / "master-audit.jsonl"
    master = OurMaster(
        tmp_path / "master",
        password=MASTER_PASSWORD,
        extra_config={**JSON_DEBUG, "mupdate_audit_log": str(audit)},
    )
    master.start()
    slave = OurSlave(
        tmp_path / "slave",
        master_address=master.address,
        master_password=MASTER_PASSWORD,
        password=SLAVE_PASSWORD,
        extra_config=JSON_DEBUG,
    )
    try:
        with MupdateClient.connect(master.host, master.port) as client:
            client.authenticate_plain("admin", MASTER_PASSWORD)
            assert client.command("RESERVE", "user.s", "be1!p").ok
            assert client.command("ACTIVATE", "user.s", "be1!p", "s\tlrs\t").ok
        with MupdateClient.connect(master.host, master.port) as client:
            assert b"L01 OK" in login_login(client, "admin", MASTER_PASSWORD)
        with MupdateClient.connect(master.host, master.port) as client:
            assert b"S01 OK" in scram_login(client, "admin", MASTER_PASSWORD)
        with MupdateClient.connect(master.host, master.port) as client:
            client.send_raw(
                b'A01 AUTHENTICATE "PLAIN" '
                + literal(base64.b64encode(f"\0admin\0{WRONG_PASSWORD}".encode()))
                + b"\r\n"
            )
            assert b"A01 NO" in client.read_until_tagged(b"A01").raw
        slave.start()  # ready once it has synced with the master (its greeting says so)
        with MupdateClient.connect(slave.host, slave.port) as client:
            client.authenticate_plain("admin", SLAVE_PASSWORD)
            assert client.find("user.s") is not None
    finally:
        slave.stop()
        master.stop()

    logs = {p.name: p for p in (master.log_path, slave.log_path, audit)}
    master_records = json_records(master.log_path)
    json_records(slave.log_path)
    # The logins happened and were logged, at debug level, as JSON.
    logged_in = {(r.get("mechanism"), r.get("user")) for r in master_records}
    assert {("PLAIN", "admin"), ("LOGIN", "admin"), ("SCRAM-SHA-256", "admin")} <= logged_in
    (failed,) = [r for r in master_records if str(r.get("text", "")).startswith("failed login")]
    assert (failed["level"], failed["user"]) == ("warn", "admin")
    assert len(audit.read_text().splitlines()) == 2

    secrets = [
        *secret_forms(MASTER_PASSWORD),
        *secret_forms(SLAVE_PASSWORD),
        *secret_forms(WRONG_PASSWORD),
        *hash_strings(master.credentials_path),
        *hash_strings(slave.credentials_path),
    ]
    for name, path in logs.items():
        content = path.read_text(encoding="utf-8")
        for secret in secrets:
            assert secret not in content, f"{name} shows a secret"


SYSLOG_LINE = re.compile(
    rb"<(?P<pri>\d+)>[A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d (?P<ident>[\w.-]+)\[(?P<pid>\d+)\]: "
    rb"(?P<message>.*)",
    re.S,
)


class SyslogDaemon:
    """A unix datagram socket where a syslog daemon would listen (sun_path is short), read
    by a thread as a daemon reads it: a datagram socket queues only ~10 unread messages."""

    def __init__(self, tmp_path: Path) -> None:
        directory = tmp_path if len(str(tmp_path)) < 90 else Path(tempfile.mkdtemp(dir="/tmp"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(directory / "dev-log"))
        self.sock.settimeout(0.2)  # how often the reader looks at `stopping`
        self.path = self.sock.getsockname()
        self.received: list[bytes] = []
        self.stopping = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                self.received.append(self.sock.recv(65536))
            except TimeoutError:
                if self.stopping.is_set():
                    return  # the sender has exited and the queue is empty

    def stop(self) -> list[bytes]:
        self.stopping.set()
        self.reader.join(timeout=10)
        assert not self.reader.is_alive()
        self.sock.close()
        return self.received


def test_syslog_from_a_real_master_reaches_the_socket_with_facility_ident_and_no_secret(
    tmp_path: Path,
) -> None:
    syslogd = SyslogDaemon(tmp_path)
    master = OurMaster(
        tmp_path / "master",
        password=MASTER_PASSWORD,
        extra_config={
            "mupdate_syslog": "yes",  # facility not set: mail, as Cyrus logs
            "mupdate_syslog_socket": syslogd.path,
            "mupdate_log_level": "debug",
            "failedloginpause": "0",
        },
    )
    try:
        master.start()
        with MupdateClient.connect(master.host, master.port) as client:
            client.send_raw(
                b'A01 AUTHENTICATE "PLAIN" '
                + literal(base64.b64encode(f"\0admin\0{WRONG_PASSWORD}".encode()))
                + b"\r\n"
            )
            assert b"A01 NO" in client.read_until_tagged(b"A01").raw
        with MupdateClient.connect(master.host, master.port) as client:
            assert b"L01 OK" in login_login(client, "admin", MASTER_PASSWORD)
            assert client.command("RESERVE", "user.sys", "be1!p1").ok
            assert client.command("ACTIVATE", "user.sys", "be1!p1", "sys\tlrs\t").ok
        pid = master.proc.pid if master.proc is not None else -1
    finally:
        master.stop()
        received = syslogd.stop()

    messages = []
    for data in received:
        match = SYSLOG_LINE.fullmatch(data)
        assert match is not None, data
        facility, severity = divmod(int(match["pri"]), 8)
        assert facility == 2, data  # LOG_MAIL
        assert (match["ident"], int(match["pid"])) == (b"mupdate-master", pid)
        messages.append((severity, match["message"].decode()))
    assert any(sev == 6 and text.startswith("mupdate master ") for sev, text in messages)
    assert (4, "failed login from") in {(sev, text[:17]) for sev, text in messages}
    assert (6, "admin RESERVE user.sys: - -> be1!p1 (reserved)") in messages  # the audit line
    assert (6, "admin ACTIVATE user.sys: be1!p1 -> be1!p1 (active)") in messages
    assert any(sev == 7 for sev, _ in messages)  # debug reaches syslog at mupdate_log_level
    everything = b"\n".join(received)
    for secret in secret_forms(MASTER_PASSWORD) + secret_forms(WRONG_PASSWORD):
        assert secret.encode() not in everything
    assert b"Master-Pw" not in everything
    assert b"Wrong-Pw" not in everything

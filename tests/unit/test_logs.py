"""mupdate/logs.py and the logging settings: format selection, levels, redaction, syslog,
the audit file, the twistd wiring, and a scan of every log call in mupdate/ (style.md §9)."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from mupdate import logs
from mupdate.config.imapdconf import parse_imapd_conf
from mupdate.config.log_settings import LogSettings, LogSettingsError, log_settings
from mupdate.config.settings import SettingsError, last_values
from mupdate.logs import (
    AUDIT_NAMESPACE,
    REDACTED,
    VOCABULARY,
    address,
    build_observer,
    event_record,
    is_secret_field,
    text,
    twistd_observer,
    use_for_twistd,
)

PACKAGE = Path(logs.__file__).parent


def publisher_for(settings: LogSettings, **kwargs: object) -> tuple[LogPublisher, io.StringIO]:
    out = io.StringIO()
    publisher = LogPublisher(build_observer(settings, out, **kwargs))  # type: ignore[arg-type]
    return publisher, out


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


# -- settings ---------------------------------------------------------------------------


def settings_of(conf: str) -> LogSettings:
    return log_settings(last_values(parse_imapd_conf(conf, "l.conf")))


def test_defaults() -> None:
    assert settings_of("") == LogSettings(
        "text", "info", False, "mail", Path("/dev/log"), None, False
    )


def test_every_key_is_read() -> None:
    conf = (
        "mupdate_log_format: JSON\nmupdate_log_level: warning\nmupdate_syslog: yes\n"
        "mupdate_syslog_facility: local3\nmupdate_syslog_socket: /run/log.sock\n"
        "mupdate_audit_log: /var/log/a.jsonl\nmupdate_audit_fsync: on\n"
    )
    assert settings_of(conf) == LogSettings(
        "json", "warn", True, "local3", Path("/run/log.sock"), Path("/var/log/a.jsonl"), True
    )
    assert settings_of("mupdate_audit_log:\n").audit_log is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("mupdate_log_format: xml", "l.conf:1: mupdate_log_format: expected one of text, json"),
        ("mupdate_log_level: loud", "l.conf:1: mupdate_log_level: expected one of debug, info"),
        ("mupdate_syslog: maybe", "l.conf:1: mupdate_syslog: expected yes or no"),
        (
            "mupdate_syslog_facility: kern",
            "l.conf:1: mupdate_syslog_facility: expected one of mail",
        ),
        ("mupdate_audit_fsync: 2", "l.conf:1: mupdate_audit_fsync: expected yes or no"),
        (
            "mupdate_syslog_socket: dev/log",
            "l.conf:1: mupdate_syslog_socket: expected the absolute path of a unix socket",
        ),
    ],
)
def test_bad_values_name_file_line_and_key(line: str, message: str) -> None:
    with pytest.raises(LogSettingsError) as info:
        settings_of(line + "\n")
    assert str(info.value).startswith(message)


def test_server_settings_carry_the_log_settings() -> None:
    from mupdate.config.settings import master_settings

    records = parse_imapd_conf("admins: a\nmupdate_log_format: json\n", "m.conf")
    settings = master_settings(records, default_servername="m", default_configdirectory=Path("d"))
    assert settings.log.format == "json"
    with pytest.raises(SettingsError, match=r"m\.conf:1: mupdate_log_level"):
        master_settings(
            parse_imapd_conf("mupdate_log_level: x\n", "m.conf"),
            default_servername="m",
            default_configdirectory=Path("d"),
        )


# -- format selection and levels ----------------------------------------------------------


def test_text_format_is_twisteds_line_format() -> None:
    publisher, out = publisher_for(LogSettings())
    Logger(namespace="mupdate.x", observer=publisher).info(
        "{user} did {count} things", user="alice", count=3
    )
    (line,) = lines(out)
    assert line.endswith("[mupdate.x#info] alice did 3 things")


def test_json_format_is_one_object_a_line_with_the_schema() -> None:
    publisher, out = publisher_for(LogSettings(format="json"))
    log = Logger(namespace="mupdate.x", observer=publisher)
    log.warn("failed login from {peer} as {user}", peer="127.0.0.1:4000", user="bob")
    log.info("entry {mailbox} at {location}", mailbox=text(b"user.\xff\n"), location=b"be1!p")
    first, second = (json.loads(line) for line in lines(out))
    assert list(first)[:4] == ["time", "level", "namespace", "text"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["level"] == "warn"
    assert first["namespace"] == "mupdate.x"
    assert first["text"] == "failed login from 127.0.0.1:4000 as bob"
    assert (first["peer"], first["user"]) == ("127.0.0.1:4000", "bob")
    assert second["mailbox"] == "user.\\xff\\n"
    assert second["location"] == "be1!p"  # bytes become text in the JSON too


def test_json_carries_a_failure_as_its_traceback() -> None:
    publisher, out = publisher_for(LogSettings(format="json"))
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        Logger(namespace="mupdate.x", observer=publisher).failure("commit failed", Failure())
    (record,) = (json.loads(line) for line in lines(out))
    assert record["level"] == "critical"
    assert "RuntimeError: disk on fire" in record["failure"]


def test_odd_values_still_make_valid_json() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("no")

    record = event_record(
        {
            "log_format": "x",
            "log_level": LogLevel.info,
            "log_time": 0,
            "thing": Unprintable(),
            "nan": float("nan"),
            "many": (b"a", {1: b"b"}),
        }
    )
    assert json.loads(json.dumps(record))["thing"] == "<unprintable>"
    assert record["nan"] == "nan"
    assert record["many"] == ["a", {"1": "b"}]


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["debug", "info", "warn", "error", "critical"]),
        ("info", ["info", "warn", "error", "critical"]),
        ("error", ["error", "critical"]),
    ],
)
def test_level_selection(level: str, shown: list[str]) -> None:
    publisher, out = publisher_for(LogSettings(format="json", level=level))
    log = Logger(namespace="mupdate.x", observer=publisher)
    for name in ("debug", "info", "warn", "error", "critical"):
        getattr(log, name)("at {state}", state=name)
    assert [json.loads(line)["level"] for line in lines(out)] == shown


# -- redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["password", "mupdate_password", "secret", "sasl_payload", "client_response", "Credential"],
)
def test_secret_field_names(name: str) -> None:
    assert is_secret_field(name)


def test_vocabulary_holds_no_secret_name() -> None:
    assert not [name for name in VOCABULARY if is_secret_field(name)]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_fields_are_redacted_in_text_and_fields(fmt: str) -> None:
    audit_out = io.StringIO()
    publisher, out = publisher_for(LogSettings(format=fmt, level="debug"), audit_out=audit_out)
    Logger(namespace=AUDIT_NAMESPACE, observer=publisher).debug(
        "user {user} password {password} data {sasl_payload} {response}",
        user="alice",
        password="hunter2-Secret",
        sasl_payload=b"\0alice\0hunter2-Secret",
        response="aHVudGVyMi1TZWNyZXQ=",
    )
    for written in (out.getvalue(), audit_out.getvalue()):
        assert "alice" in written
        assert "hunter2" not in written
        assert "aHVudGVyMi1TZWNyZXQ=" not in written
        assert REDACTED in written


def test_redaction_does_not_change_the_event_other_observers_see() -> None:
    seen: list[dict[str, object]] = []
    publisher, _ = publisher_for(LogSettings())
    publisher.addObserver(seen.append)
    Logger(observer=publisher).info("x", password="p")
    assert seen[0]["password"] == "p"


# -- syslog -------------------------------------------------------------------------------
#
# A real unix socket bound in tmp_path stands in for /dev/log: the observer writes to it
# exactly what it writes to /dev/log (mupdate_syslog_socket), and the test reads the bytes.

SYSLOG_LINE = re.compile(
    rb"<(?P<pri>\d+)>(?P<stamp>[A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d) "
    rb"(?P<ident>[\w.-]+)\[(?P<pid>\d+)\]: (?P<message>.*)",
    re.S,
)


def syslog_socket(directory: Path, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket bound where a syslog daemon would listen (a short path: sun_path is small)."""
    path = short_dir(directory) / "log"
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


def short_dir(directory: Path) -> Path:
    if len(str(directory)) < 90:
        return directory
    return Path(tempfile.mkdtemp(prefix="log", dir="/tmp"))


def datagrams(sock: socket.socket) -> list[bytes]:
    """Everything queued on the socket now (the observer has already sent it)."""
    found = []
    sock.setblocking(False)
    try:
        while True:
            found.append(sock.recv(65536))
    except BlockingIOError:
        return found
    finally:
        sock.settimeout(5)


def parsed(data: bytes) -> tuple[int, int, str, int, str]:
    """(facility, severity, ident, pid, message) of one RFC 3164 datagram."""
    match = SYSLOG_LINE.fullmatch(data)
    assert match is not None, data
    pri = int(match["pri"])
    return pri >> 3, pri & 7, match["ident"].decode(), int(match["pid"]), match["message"].decode()


def test_syslog_datagrams_carry_facility_severity_ident_pid_one_message_a_line(
    tmp_path: Path,
) -> None:
    sock = syslog_socket(tmp_path)
    publisher, out = publisher_for(
        LogSettings(
            syslog=True,
            syslog_facility="local3",
            syslog_socket=Path(sock.getsockname()),
            level="debug",
        ),
        ident="mupdate-master",
    )
    log = Logger(namespace="mupdate.x", observer=publisher)
    log.debug("wire {tag}", tag="A1")
    log.info("started {count}", count=2)
    log.warn("failed login from {peer}", peer="p", password="pw-Never-Shown")
    log.error("guard {reason}", reason="local")
    log.critical("brake\nholds")
    received = datagrams(sock)
    assert [parsed(d)[:2] for d in received] == [
        (19, 7),
        (19, 6),
        (19, 4),
        (19, 3),
        (19, 2),
        (19, 2),
    ]
    assert {parsed(d)[2:4] for d in received} == {("mupdate-master", os.getpid())}
    assert [parsed(d)[4] for d in received] == [
        "wire A1",
        "started 2",
        "failed login from p",
        "guard local",
        "brake",
        "holds",
    ]
    assert not any(b"pw-Never-Shown" in d for d in received)
    assert len(lines(out)) == 6  # stdout as well


def test_syslog_timestamp_is_the_events_local_time_as_syslog3_writes_it() -> None:
    when = time.mktime((2024, 3, 5, 7, 8, 9, 0, 0, -1))
    assert logs.syslog_line(22, when, "mupdate-slave", 42, "x") == (
        b"<22>Mar  5 07:08:09 mupdate-slave[42]: x"
    )
    assert len(logs.syslog_line(22, when, "m", 1, "y" * 20000)) == logs.SYSLOG_MAX_BYTES


def test_syslog_facility_codes_are_syslog3s() -> None:
    import syslog

    assert logs.facility_code("local6") == syslog.LOG_LOCAL6
    assert logs.facility_code("mail") == syslog.LOG_MAIL
    assert logs.facility_code("authpriv") == syslog.LOG_AUTHPRIV


def test_syslog_without_a_daemon_drops_and_later_reconnects(tmp_path: Path) -> None:
    path = short_dir(tmp_path) / "log"
    observer = logs.SyslogObserver("mupdate-master", "mail", path)
    log = Logger(namespace="mupdate.x", observer=observer)
    log.info("nobody listens")  # no socket yet: dropped, no exception
    assert observer.socket.dropped == 1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    log.info("now {state}", state="listening")
    assert parsed(datagrams(sock)[0])[4] == "now listening"
    sock.close()  # the daemon restarts: a new socket at the same path
    path.unlink()
    again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    again.bind(str(path))
    log.info("after {state}", state="restart")
    assert [parsed(d)[4] for d in datagrams(again)] == ["after restart"]
    assert observer.socket.dropped == 1
    again.close()


def test_syslog_waits_for_a_slow_daemon_in_a_burst(tmp_path: Path) -> None:
    """A datagram socket holds ~10 unread messages; a burst longer than that waits for the
    daemon (here a thread reading as fast as it can) instead of losing lines."""
    sock = syslog_socket(tmp_path)
    got: list[bytes] = []

    def daemon() -> None:
        while len(got) < 60:
            got.append(sock.recv(65536))

    reader = threading.Thread(target=daemon)
    reader.start()
    observer = logs.SyslogObserver("mupdate-master", "mail", Path(sock.getsockname()))
    observer.socket.wait = 10  # a bound for a loaded machine; the reader keeps up long before
    log = Logger(namespace="mupdate.x", observer=observer)
    for n in range(60):
        log.info("line {count}", count=n)
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert [parsed(d)[4] for d in got] == [f"line {n}" for n in range(60)]
    assert observer.socket.dropped == 0


def test_syslog_drops_rather_than_block_on_a_stuck_daemon(tmp_path: Path) -> None:
    sock = syslog_socket(tmp_path)  # bound, never read: a stuck daemon
    observer = logs.SyslogObserver("mupdate-master", "mail", Path(sock.getsockname()))
    observer.socket.wait = 0.05
    log = Logger(namespace="mupdate.x", observer=observer)
    started = time.monotonic()
    for n in range(40):
        log.info("line {count}", count=n)
    assert time.monotonic() - started < 5  # one bounded wait, then no more waiting
    kept = datagrams(sock)
    assert 0 < len(kept) < 40
    assert observer.socket.dropped == 40 - len(kept)
    log.info("after {state}", state="catching up")  # the daemon read: sent again
    assert [parsed(d)[4] for d in datagrams(sock)] == ["after catching up"]


def test_syslog_event_lines_share_one_wait_budget(tmp_path: Path) -> None:
    """A many-line event (a traceback) waits at most one budget in all, not one per line:
    once its deadline has passed, a full socket drops at once instead of waiting again."""
    sock = syslog_socket(tmp_path)  # bound, never read
    writer = logs.SyslogSocket(Path(sock.getsockname()), wait=30)
    sent = 0
    while writer.send(b"<22>fill", deadline=time.monotonic()) and sent < 1000:
        sent += 1  # fills the queue without waiting (a deadline of now)
    assert 0 < sent < 1000
    writer._stuck = False  # a daemon that was only slow so far
    started = time.monotonic()
    assert not writer.send(b"<22>late", deadline=time.monotonic() - 1)
    assert time.monotonic() - started < 5  # no 30 s wait: the event's budget was spent


def test_syslog_on_a_stream_socket_sends_nul_terminated_messages(tmp_path: Path) -> None:
    server = syslog_socket(tmp_path, socket.SOCK_STREAM)
    server.listen(1)
    observer = logs.SyslogObserver("mupdate-slave", "daemon", Path(server.getsockname()))
    log = Logger(namespace="mupdate.x", observer=observer)
    log.warn("one")
    conn, _ = server.accept()
    log.info("two")
    conn.settimeout(5)
    data = b""
    while data.count(b"\0") < 2:
        chunk = conn.recv(4096)
        assert chunk, data
        data += chunk
    first, second, rest = data.split(b"\0")
    assert (parsed(first)[:2], parsed(first)[4]) == ((3, 4), "one")
    assert (parsed(second)[:2], parsed(second)[4]) == ((3, 6), "two")
    assert rest == b""
    conn.close()
    server.close()


# -- the audit file ---------------------------------------------------------------------------


def test_audit_events_go_to_their_own_file_as_json_lines_whatever_the_level(tmp_path) -> None:
    path = tmp_path / "log" / "audit.jsonl"
    path.parent.mkdir()
    path.write_text('{"earlier": true}\n')
    publisher, out = publisher_for(
        LogSettings(format="text", level="error", audit_log=path, audit_fsync=True)
    )
    Logger(namespace=AUDIT_NAMESPACE, observer=publisher).info(
        "{user} {command} {mailbox}: {old_location} -> {location}",
        user="be1",
        command="ACTIVATE",
        mailbox="user.a",
        old_location="be1!p1",
        location="be2!p2",
        state="active",
    )
    Logger(namespace="mupdate.other", observer=publisher).error("not audit {reason}", reason="x")
    first, second = path.read_text().splitlines()
    assert json.loads(first) == {"earlier": True}  # appended
    record = json.loads(second)
    assert record["namespace"] == AUDIT_NAMESPACE
    assert record["text"] == "be1 ACTIVATE user.a: be1!p1 -> be2!p2"
    assert (record["old_location"], record["location"], record["state"]) == (
        "be1!p1",
        "be2!p2",
        "active",
    )
    (shown,) = lines(out)  # the main log at level error: only the error
    assert shown.endswith("not audit x")


def test_an_audit_log_that_cannot_be_opened_stops_with_its_name(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"cannot open the audit log .*file/audit"):
        build_observer(LogSettings(audit_log=blocker / "audit"), io.StringIO())


# -- twistd wiring --------------------------------------------------------------------------


class FakeOptions(dict[str, object]):
    pass


def test_use_for_twistd_sets_the_logger_option_unless_the_operator_gave_one(monkeypatch) -> None:
    monkeypatch.setattr(logs, "_twistd_setup", {})
    sub = FakeOptions()
    sub.parent = FakeOptions(logger=None, nodaemon=True, logfile=None)  # type: ignore[attr-defined]
    use_for_twistd(sub, LogSettings(format="json"), "mupdate-master")  # type: ignore[arg-type]
    assert sub.parent["logger"] == "mupdate.logs.twistd_observer"  # type: ignore[attr-defined]
    own = FakeOptions()
    own.parent = FakeOptions(logger="my.observer")  # type: ignore[attr-defined]
    use_for_twistd(own, LogSettings(), "mupdate-master")  # type: ignore[arg-type]
    assert own.parent["logger"] == "my.observer"  # type: ignore[attr-defined]
    use_for_twistd(FakeOptions(), LogSettings(), "x")  # type: ignore[arg-type]  # not under twistd


def test_twistd_observer_writes_json_to_stdout_under_n(monkeypatch) -> None:
    monkeypatch.setattr(logs, "_twistd_setup", {})
    sub = FakeOptions()
    sub.parent = FakeOptions(logger=None, nodaemon=True, logfile=None)  # type: ignore[attr-defined]
    use_for_twistd(sub, LogSettings(format="json"), "mupdate-master")  # type: ignore[arg-type]
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    observer = twistd_observer()
    Logger(namespace="mupdate.x", observer=observer).info("hello {user}", user="u")
    assert json.loads(out.getvalue())["user"] == "u"


def test_twistd_observer_writes_to_the_logfile(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(logs, "_twistd_setup", {})
    sub = FakeOptions()
    logfile = tmp_path / "twistd.log"
    sub.parent = FakeOptions(logger=None, nodaemon=False, logfile=str(logfile))  # type: ignore[attr-defined]
    use_for_twistd(sub, LogSettings(format="json"), "mupdate-master")  # type: ignore[arg-type]
    observer = twistd_observer()
    Logger(namespace="mupdate.x", observer=observer).info("hello {user}", user="u")
    assert json.loads(logfile.read_text())["text"] == "hello u"


def test_the_plugin_options_hand_twistd_our_logger(tmp_path, monkeypatch) -> None:
    from twisted.scripts.twistd import ServerOptions

    monkeypatch.setattr(logs, "_twistd_setup", {})
    conf = tmp_path / "m.conf"
    conf.write_text(f"admins: admin\nconfigdirectory: {tmp_path}\nmupdate_log_format: json\n")
    options = ServerOptions()
    options.parseOptions(["-n", "mupdate-master", "--config", str(conf)])
    assert options["logger"] is twistd_observer
    assert logs._twistd_setup["settings"].format == "json"


# -- helpers --------------------------------------------------------------------------------


def test_address_is_host_port() -> None:
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    assert address(IPv4Address("TCP", "10.0.0.1", 3905)) == "10.0.0.1:3905"
    assert address(IPv6Address("TCP", "::1", 3905)) == "[::1]:3905"
    assert address(UNIXAddress(b"/run/s")) == "unix:/run/s"
    assert address("?") == "?"


# -- every log call in mupdate/ ----------------------------------------------------------------

LEVEL_METHODS = {"debug", "info", "warn", "error", "critical", "failure"}


def log_calls() -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVEL_METHODS
            ):
                target = ast.unparse(node.func.value)
                if target.endswith("log") or target == "audit":
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                    found.append((where, node))
    return found


def test_the_scan_finds_the_log_calls() -> None:
    assert len(log_calls()) > 40


def test_every_log_call_has_a_constant_template_and_named_vocabulary_fields() -> None:
    problems = []
    for where, call in log_calls():
        template = call.args[0] if call.args else None
        fields = {k.arg for k in call.keywords} - {"level", "failure"}
        if None in fields:
            problems.append(f"{where}: **kwargs")
        if not (isinstance(template, ast.Constant) and isinstance(template.value, str)):
            problems.append(f"{where}: the template is built, not a constant")
            continue
        named = set(re.findall(r"{(\w*)[^}]*}", template.value))
        if named - fields:
            problems.append(f"{where}: {sorted(named - fields)} in the template but not given")
        if fields - VOCABULARY:
            problems.append(f"{where}: {sorted(fields - VOCABULARY)} not in logs.VOCABULARY")
    assert problems == []


def test_no_log_call_passes_a_secret_by_position() -> None:
    # Values only as keywords: a second positional argument would be a failure object.
    for where, call in log_calls():
        if call.func.attr != "failure":  # type: ignore[attr-defined]
            assert len(call.args) == 1, where

"""Logging: bytes to text that cannot fail, the audit logger, and the observers (style.md §9).

Events are ``twisted.logger`` events with named fields from ``VOCABULARY``. Where they go is
set by the config (``mupdate/config/log_settings.py``) and built here::

    RedactingObserver                       secret-named fields become "[redacted]"
      +- level filter (mupdate_log_level)
      |    +- text (twisted's format) or JSON lines, to stdout or twistd's --logfile
      |    +- syslog (mupdate_syslog, mupdate_syslog_facility, mupdate_syslog_socket):
      |       RFC 3164 datagrams written here, not through syslog(3) (see SyslogSocket)
      +- namespace filter "mupdate.audit"   every level, whatever mupdate_log_level says
           +- JSON lines appended to mupdate_audit_log (fsync with mupdate_audit_fsync)

Under twistd the plugin's options hand this chain to twistd as its ``--logger`` (the
observer factory ``twistd_observer``), unless the operator gave a ``--logger`` of their own;
twistd's ``-n`` and ``--logfile`` choose stdout or a file as usual.

JSON schema, one object per line: ``time`` (ISO 8601, UTC, milliseconds), ``level``
(debug, info, warn, error, critical), ``namespace`` (the emitting class, or
``mupdate.audit``), ``text`` (the formatted message), then every field of the event by name
(values as JSON scalars; bytes already turned into text), and ``failure`` (the traceback)
when the event carries one.

Passwords, SASL payloads and AUTHENTICATE lines are never passed to a logger anywhere; the
redaction is the second line of defence.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

from mupdate.config.log_settings import LogSettings

#: One event per committed change to the mailbox list: who, command, mailbox, old and new location.
AUDIT_NAMESPACE: Final = "mupdate.audit"
audit: Final = Logger(namespace=AUDIT_NAMESPACE)

#: Field names a log call may use (style.md §9, extended where the first twelve fell short).
VOCABULARY: Final = frozenset(
    {
        # style.md §9
        "peer",
        "user",
        "tag",
        "command",
        "mailbox",
        "location",
        "old_location",
        "server",
        "count",
        "duration_ms",
        "reason",
        "state",
        # extensions
        "mechanism",  # a SASL mechanism name
        "authzid",  # the identity a login acts as, when not the credential's own
        "added",  # counts of a resync or import
        "updated",
        "removed",
        "kept",  # entries the guard kept
        "servername",  # our own servername (the config key)
        "path",  # a file or directory
        "endpoint",  # listening endpoints
        "pid",  # a child process (cyr_dbtool)
        "mailboxes",  # a bounded list of mailbox names (what a held resync would remove)
    }
)

#: A field whose name contains one of these is never shown (RedactingObserver).
SECRET_WORDS: Final = (
    "password",
    "passwd",
    "secret",
    "response",
    "payload",
    "credential",
    "authenticate",
)
REDACTED: Final = "[redacted]"

#: Larger LIST/UPDATE dumps and resyncs log their size and duration; received dumps log
#: progress every this many entries.
LARGE_DUMP: Final = 10_000
PROGRESS_EVERY: Final = 100_000

_MAX: Final = 300


def text(value: bytes | None) -> str:
    """Readable, bounded and lossless enough for logs: odd bytes become \\xNN."""
    if value is None:
        return "-"
    shown = value[:_MAX].decode("utf-8", "backslashreplace")
    shown = shown.replace("\r", "\\r").replace("\n", "\\n").replace("\0", "\\0")
    return shown + ("..." if len(value) > _MAX else "")


def address(addr: object) -> str:
    """A peer for the ``peer`` field: ``HOST:PORT`` (``[V6]:PORT``), a UNIX path, or repr."""
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(addr, "name", None)
    if isinstance(name, bytes | str):
        return "unix:" + (
            name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
        )
    return str(addr)


def milliseconds(seconds: float) -> int:
    """A duration in seconds as the whole ``duration_ms`` of a log field."""
    return round(seconds * 1000)


# -- redaction -------------------------------------------------------------------------


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


@implementer(ILogObserver)
class RedactingObserver:
    """Passes on a copy of each event in which every secret-named field is ``[redacted]``,
    so neither the formatted text nor the JSON fields can show it."""

    def __init__(self, downstream: ILogObserver) -> None:
        self.downstream = downstream

    def __call__(self, event: LogEvent) -> None:
        secret = [k for k in event if not k.startswith("log_") and is_secret_field(k)]
        if secret:
            event = dict(event)
            for key in secret:
                event[key] = REDACTED
        self.downstream(event)


# -- JSON lines ------------------------------------------------------------------------

#: Keys of legacy (twisted.python.log) events that the schema does not repeat.
_LEGACY_KEYS: Final = frozenset(
    {"format", "message", "system", "isError", "why", "failure", "time"}
)
_SCHEMA_KEYS: Final = ("time", "level", "namespace", "text", "failure")


def _json_value(value: object, depth: int = 0) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, bytes | bytearray):
        return text(bytes(value))
    if depth < 3 and isinstance(value, list | tuple | set | frozenset):
        return [_json_value(v, depth + 1) for v in value]
    if depth < 3 and isinstance(value, Mapping):
        return {str(k): _json_value(v, depth + 1) for k, v in value.items()}
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


def event_record(event: LogEvent) -> dict[str, object]:
    """The JSON schema of one event (see the module docstring)."""
    level = event.get("log_level")
    when = event.get("log_time")
    stamp = datetime.fromtimestamp(when if isinstance(when, int | float) else 0, UTC)
    record: dict[str, object] = {
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": str(event.get("log_namespace", "-")),
        "text": formatEvent(event),
    }
    for key in sorted(event):
        if key.startswith("log_") or key in _LEGACY_KEYS or key in _SCHEMA_KEYS:
            continue
        record[key] = _json_value(event[key])
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = repr(failure.value)
    return record


def event_as_json(event: LogEvent) -> str:
    return json.dumps(event_record(event), ensure_ascii=True, sort_keys=False)


@implementer(ILogObserver)
class JsonLinesObserver:
    """One JSON object a line, flushed per event; ``fsync`` makes each line durable."""

    def __init__(self, out: IO[str], fsync: bool = False) -> None:
        self.out = out
        self.fsync = fsync

    def __call__(self, event: LogEvent) -> None:
        self.out.write(event_as_json(event) + "\n")
        self.out.flush()
        if self.fsync:
            os.fsync(self.out.fileno())


# -- syslog ----------------------------------------------------------------------------
#
# Our own writer, not the stdlib's syslog(3): the same RFC 3164 line that glibc's syslog(3)
# sends, "<PRI>Mmm dd hh:mm:ss IDENT[PID]: MESSAGE", as one datagram to a unix socket that
# the config names (mupdate_syslog_socket, default /dev/log where journald, rsyslog or
# syslog-ng listen on Debian). syslog(3) can only ever write to /dev/log, so a chroot, a
# container with the socket elsewhere, or a test could not point it anywhere else. A syslog
# daemon that is down, restarting or slow never blocks the reactor and never raises into
# the log chain: the message is dropped and counted, and the next one reconnects.

#: RFC 3164 facility numbers (the PRI is facility * 8 + severity).
FACILITIES: Final = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
#: RFC 3164 severities of our levels (critical, error, warning, informational, debug).
SEVERITIES: Final = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
#: Longer messages are cut (a datagram must fit the socket's buffer; lines are short anyway).
SYSLOG_MAX_BYTES: Final = 8192


def facility_code(name: str) -> int:
    """The facility as syslog(3)'s ``LOG_*`` constants give it (already shifted by 3)."""
    return FACILITIES[name.lower()] << 3


def syslog_line(priority: int, when: float, ident: str, pid: int, message: str) -> bytes:
    """One RFC 3164 message as glibc writes it to /dev/log (local time, English month)."""
    t = time.localtime(when)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    data = f"<{priority}>{stamp} {ident}[{pid}]: {message}".encode("utf-8", "backslashreplace")
    return data[:SYSLOG_MAX_BYTES]


class SyslogSocket:
    """A non-blocking connection to a local syslog socket: datagrams, or NUL-terminated
    messages on a stream socket (what glibc falls back to when the socket is not a datagram
    one). ``send`` never raises.

    A datagram socket queues only a few messages (Linux: ``net.unix.max_dgram_qlen``, 10)
    until the daemon reads them, so a burst (a traceback is one message a line) fills it.
    Like syslog(3), ``send`` then waits for room, but at most until its ``deadline`` (one
    budget of ``wait`` seconds for a whole event, however many lines it has); once a wait
    has timed out (a daemon that is stuck, not slow) it drops without waiting until a
    message goes through again, so the reactor is never held up for long."""

    def __init__(self, path: Path, wait: float = 0.5) -> None:
        self.path = path
        self.wait = wait
        self.dropped = 0  # messages lost to a missing, restarting or stuck syslog daemon
        self._sock: socket.socket | None = None
        self._stream = False
        self._stuck = False

    def send(self, data: bytes, deadline: float | None = None) -> bool:
        """Send one message, waiting for room until ``deadline`` (``time.monotonic()``;
        default: ``wait`` seconds from now)."""
        if deadline is None:
            deadline = time.monotonic() + self.wait
        for _ in range(2):  # a socket that went stale (syslogd restarted): reconnect once
            sock = self._sock or self._connect()
            if sock is None:
                break
            payload = data + b"\0" if self._stream else data
            try:
                sent = self._send(sock, payload, deadline)
            except OSError:
                self.close()
                continue
            if sent is None:
                break
            if sent != len(payload):  # a stream cut mid-message: start a fresh one
                self.close()
            return True
        self.dropped += 1
        return False

    def _send(self, sock: socket.socket, payload: bytes, deadline: float) -> int | None:
        """Bytes sent, or None when the daemon did not make room in time."""
        try:
            sent = sock.send(payload)
        except BlockingIOError:
            if self._stuck or not self._writable(sock, deadline - time.monotonic()):
                self._stuck = True
                return None
            try:
                sent = sock.send(payload)
            except BlockingIOError:
                self._stuck = True
                return None
        self._stuck = False
        return sent

    @staticmethod
    def _writable(sock: socket.socket, seconds: float) -> bool:
        # poll, not select: select refuses descriptors >= 1024, which a busy daemon reaches
        if seconds <= 0:
            return False
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(seconds * 1000))

    def _connect(self) -> socket.socket | None:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EPROTOTYPE:
                    continue  # a stream socket: try again as one
                return None
            self._sock, self._stream = sock, kind == socket.SOCK_STREAM
            return sock
        return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@implementer(ILogObserver)
class SyslogObserver:
    """The formatted text to syslog, one message a line (a traceback is several), at the
    severity of the event's level, as ``IDENT[PID]`` with the configured facility."""

    def __init__(self, ident: str, facility: str, path: Path) -> None:
        self.ident = ident
        self.facility = FACILITIES[facility.lower()]
        self.socket = SyslogSocket(path)

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level", LogLevel.info)
        priority = self.facility * 8 + SEVERITIES.get(level, 6)
        when = event.get("log_time")
        when = when if isinstance(when, int | float) else time.time()
        message = formatEvent(event)
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            message += "\n" + failure.getTraceback()
        pid = os.getpid()  # read each time: twistd forks after building the observer
        deadline = time.monotonic() + self.socket.wait  # one budget for all the lines
        for line in message.splitlines() or [""]:
            line = line.replace("\0", "\\0")
            self.socket.send(syslog_line(priority, when, self.ident, pid, line), deadline)


# -- the chain -------------------------------------------------------------------------


@implementer(ILogObserver)
class _Fanout:
    def __init__(self, observers: Iterable[ILogObserver]) -> None:
        self.observers = tuple(observers)

    def __call__(self, event: LogEvent) -> None:
        for observer in self.observers:
            observer(event)


@implementer(ILogFilterPredicate)
class _AuditOnly:
    def __call__(self, event: LogEvent) -> PredicateResult:
        audited = event.get("log_namespace") == AUDIT_NAMESPACE
        result: PredicateResult = PredicateResult.yes if audited else PredicateResult.no
        return result


@implementer(ILogFilterPredicate)
class _Wanted:
    """Events some branch keeps: at or above the level, or audit lines (at any level).
    Checked before the redaction pass, so a filtered-out debug event (a command trace, one
    per command) costs only this test."""

    def __init__(self, level: LogLevel) -> None:
        self._levels = LogLevelFilterPredicate(defaultLogLevel=level)

    def __call__(self, event: LogEvent) -> PredicateResult:
        result: PredicateResult
        if event.get("log_namespace") == AUDIT_NAMESPACE:
            result = PredicateResult.yes
        elif self._levels(event) is PredicateResult.no:
            result = PredicateResult.no
        else:
            result = PredicateResult.maybe
        return result


def open_audit_log(path: Path) -> IO[str]:
    """Append-only, created 0640; a failure names the file (twistd then exits)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except OSError as exc:
        raise SystemExit(f"mupdate: cannot open the audit log {path}: {exc.strerror}") from None
    return os.fdopen(fd, "a", encoding="utf-8")


def build_observer(
    settings: LogSettings,
    out: IO[str] | None,
    ident: str = "mupdate",
    audit_out: IO[str] | None = None,
) -> ILogObserver:
    """The whole chain for ``settings``; ``out`` None means syslog only (twistd --syslog)."""
    outputs: list[ILogObserver] = []
    if out is not None:
        outputs.append(
            JsonLinesObserver(out) if settings.format == "json" else textFileLogObserver(out)
        )
    if settings.syslog:
        outputs.append(SyslogObserver(ident, settings.syslog_facility, settings.syslog_socket))
    level = LogLevel.levelWithName(settings.level)
    branches: list[ILogObserver] = [
        FilteringLogObserver(_Fanout(outputs), [LogLevelFilterPredicate(defaultLogLevel=level)])
    ]
    if settings.audit_log is not None or audit_out is not None:
        sink = audit_out or open_audit_log(settings.audit_log)  # type: ignore[arg-type]
        branches.append(
            FilteringLogObserver(JsonLinesObserver(sink, settings.audit_fsync), [_AuditOnly()])
        )
    return FilteringLogObserver(RedactingObserver(_Fanout(branches)), [_Wanted(level)])


# -- twistd ----------------------------------------------------------------------------

_twistd_setup: dict[str, Any] = {}


def use_for_twistd(options: usage.Options, settings: LogSettings, ident: str) -> None:
    """From a plugin's ``postOptions``: make twistd log through ``build_observer``.

    twistd reads its ``--logger`` option (a fully qualified observer factory) after the
    plugin's options are parsed, so setting it here is the same as the operator passing
    ``--logger mupdate.logs.twistd_observer``; an operator's own ``--logger`` wins.
    """
    parent = getattr(options, "parent", None)
    if parent is None or parent.get("logger"):
        return
    _twistd_setup.clear()
    _twistd_setup.update(
        settings=settings,
        ident=ident,
        logfile=parent.get("logfile") or "",
        nodaemon=bool(parent.get("nodaemon")),
        syslog=bool(parent.get("syslog")),
    )
    parent["logger"] = f"{__name__}.twistd_observer"


def twistd_observer() -> ILogObserver:
    """twistd's ``--logger`` factory: stdout under ``-n`` (or ``--logfile -``), else
    ``--logfile`` (default twistd.log, rotated as twistd rotates it); with twistd's own
    ``--syslog``, syslog only."""
    setup = dict(_twistd_setup) or {"settings": LogSettings(), "ident": "mupdate"}
    settings: LogSettings = setup["settings"]
    out: IO[str] | None
    logfile: str = setup.get("logfile", "")
    if setup.get("syslog"):
        out = None
        settings = replace(settings, syslog=True)
    elif logfile == "-" or (setup.get("nodaemon", True) and not logfile):
        out = sys.stdout
    else:
        out = _rotating_file(logfile or "twistd.log")
    return build_observer(settings, out, setup["ident"])


def _rotating_file(name: str) -> IO[str]:
    logfile: Any = LogFile.fromFullPath(name)  # type: ignore[no-untyped-call]
    if not signal.getsignal(signal.SIGUSR1):  # as twistd: SIGUSR1 rotates

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logfile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    result: IO[str] = logfile  # a file-like object: write and flush
    return result

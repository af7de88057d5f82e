"""Logging: bytes to text that cannot fail, the audit logger, and the observers (style.md §9).

Events are ``twisted.logger`` events with named fields from ``VOCABULARY``. Where they go is
set by the config (``mupdate/config/log_settings.py``) and built here::

    RedactingObserver                       secret-named fields become "[redacted]"
      +- level filter (mupdate_log_level)
      |    +- text (twisted's format) or JSON lines, to stdout or twistd's --logfile
      |    +- syslog (mupdate_syslog, mupdate_syslog_facility)
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

import json
import os
import signal
import sys
import syslog as _syslog
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Protocol

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

_PRIORITIES: Final = {
    LogLevel.debug: _syslog.LOG_DEBUG,
    LogLevel.info: _syslog.LOG_INFO,
    LogLevel.warn: _syslog.LOG_WARNING,
    LogLevel.error: _syslog.LOG_ERR,
    LogLevel.critical: _syslog.LOG_CRIT,
}


class SyslogApi(Protocol):
    def openlog(self, ident: str, logoption: int, facility: int) -> None: ...

    def syslog(self, priority: int, message: str) -> None: ...


class _StdlibSyslog:
    def openlog(self, ident: str, logoption: int, facility: int) -> None:
        _syslog.openlog(ident, logoption, facility)

    def syslog(self, priority: int, message: str) -> None:
        _syslog.syslog(priority, message)


def facility_code(name: str) -> int:
    code: int = getattr(_syslog, "LOG_" + name.upper())
    return code


@implementer(ILogObserver)
class SyslogObserver:
    """The formatted text to syslog(3), one message a line (a traceback is several), at the
    priority of the event's level, as ``IDENT[PID]`` with the configured facility."""

    def __init__(self, ident: str, facility: str, api: SyslogApi | None = None) -> None:
        self.api = api or _StdlibSyslog()
        self.api.openlog(ident, _syslog.LOG_PID, facility_code(facility))

    def __call__(self, event: LogEvent) -> None:
        priority = _PRIORITIES.get(event.get("log_level", LogLevel.info), _syslog.LOG_INFO)
        message = formatEvent(event)
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            message += "\n" + failure.getTraceback()
        for line in message.splitlines() or [""]:
            self.api.syslog(priority, line.replace("\0", "\\0"))


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
    syslog_api: SyslogApi | None = None,
    audit_out: IO[str] | None = None,
) -> ILogObserver:
    """The whole chain for ``settings``; ``out`` None means syslog only (twistd --syslog)."""
    outputs: list[ILogObserver] = []
    if out is not None:
        outputs.append(
            JsonLinesObserver(out) if settings.format == "json" else textFileLogObserver(out)
        )
    if settings.syslog:
        outputs.append(SyslogObserver(ident, settings.syslog_facility, syslog_api))
    level = LogLevel.levelWithName(settings.level)
    branches: list[ILogObserver] = [
        FilteringLogObserver(_Fanout(outputs), [LogLevelFilterPredicate(defaultLogLevel=level)])
    ]
    if settings.audit_log is not None or audit_out is not None:
        sink = audit_out or open_audit_log(settings.audit_log)  # type: ignore[arg-type]
        branches.append(
            FilteringLogObserver(JsonLinesObserver(sink, settings.audit_fsync), [_AuditOnly()])
        )
    return RedactingObserver(_Fanout(branches))


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

"""Where log events go and how they look (style.md §9): values only, no Twisted.

``mupdate_log_format`` (text | json), ``mupdate_log_level`` (debug | info | warn | error |
critical), ``mupdate_syslog`` with ``mupdate_syslog_facility`` (Cyrus sites read syslog;
Cyrus logs to facility mail) and ``mupdate_syslog_socket`` (the local syslog socket, /dev/log
as for Cyrus, or another path where a chroot or container puts it), and ``mupdate_audit_log`` (the ``mupdate.audit`` namespace as
JSON lines in a file of its own) with ``mupdate_audit_fsync``. The observers are built in
``mupdate/logs.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from mupdate.config.imapdconf import ConfigRecord
from mupdate.config.values import SettingsError, parse_bool
from mupdate.config.values import where as _where

LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warn", "error", "critical")
#: The facilities a daemon may use (syslog(3)); Cyrus logs to mail.
SYSLOG_FACILITIES: Final = (
    "mail",
    "daemon",
    "user",
    "auth",
    "authpriv",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
)


class LogSettingsError(SettingsError):
    """A logging value that cannot be used; the message names file, line and key."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = "text"
    level: str = "info"
    syslog: bool = False
    syslog_facility: str = "mail"
    syslog_socket: Path = Path("/dev/log")
    audit_log: Path | None = None
    audit_fsync: bool = False


def _choice(record: ConfigRecord, choices: tuple[str, ...], aliases: Mapping[str, str]) -> str:
    value = record.value.strip().lower()
    value = aliases.get(value, value)
    if value not in choices:
        raise LogSettingsError(
            f"{_where(record)}: expected one of {', '.join(choices)}, got {record.value!r}"
        )
    return value


def _bool(record: ConfigRecord) -> bool:
    return parse_bool(record, LogSettingsError)


def log_settings(values: Mapping[str, ConfigRecord]) -> LogSettings:
    """The logging keys of one config file (master and slave read the same ones)."""
    fields: dict[str, object] = {}
    if "mupdate_log_format" in values:
        fields["format"] = _choice(values["mupdate_log_format"], LOG_FORMATS, {})
    if "mupdate_log_level" in values:
        fields["level"] = _choice(
            values["mupdate_log_level"], LOG_LEVELS, {"warning": "warn", "err": "error"}
        )
    if "mupdate_syslog" in values:
        fields["syslog"] = _bool(values["mupdate_syslog"])
    if "mupdate_syslog_facility" in values:
        fields["syslog_facility"] = _choice(
            values["mupdate_syslog_facility"], SYSLOG_FACILITIES, {}
        )
    if "mupdate_syslog_socket" in values:
        record = values["mupdate_syslog_socket"]
        if not record.value.strip().startswith("/"):
            raise LogSettingsError(
                f"{_where(record)}: expected the absolute path of a unix socket, "
                f"got {record.value!r}"
            )
        fields["syslog_socket"] = Path(record.value.strip())
    if "mupdate_audit_log" in values:
        value = values["mupdate_audit_log"].value.strip()
        fields["audit_log"] = Path(value) if value else None
    if "mupdate_audit_fsync" in values:
        fields["audit_fsync"] = _bool(values["mupdate_audit_fsync"])
    return replace(LogSettings(), **fields)  # type: ignore[arg-type]  # checked above

"""Turn config records into a frozen settings object per role (protocol doc §13).

Values are converted as Cyrus converts them (its boolean spellings; unit suffixes only on
options Cyrus types as durations) and every error names file, line and key. Keys we do not
use are skipped quietly, so one imapd.conf can serve Cyrus and us.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from mupdate.config.cyrus_store_settings import (
    CyrusStoreSettings,
    cyrus_store_settings,
    kick_socket_path,
)
from mupdate.config.imapdconf import ConfigRecord
from mupdate.config.log_settings import LogSettings, log_settings
from mupdate.config.tls_settings import (
    ClientTls,
    ServerTls,
    client_tls,
    server_tls,
)
from mupdate.config.values import SettingsError as SettingsError  # re-exported
from mupdate.config.values import parse_bool as parse_bool  # re-exported
from mupdate.config.values import where as _where
from mupdate.protocol.limits import ProtocolLimits
from mupdate.sasl.mechanisms import SUPPORTED_MECHANISMS

DEFAULT_PORT: Final = 3905
DEFAULT_LISTEN: Final = f"tcp:{DEFAULT_PORT}:interface=127.0.0.1"
#: Offered by default, strongest first: SCRAM (``-PLUS`` only under TLS, where the channel
#: binding exists), then PLAIN and LOGIN (only where plaintext passwords are allowed).
DEFAULT_MECHANISMS: Final = SUPPORTED_MECHANISMS
#: How PLAIN and LOGIN passwords are checked (Cyrus/libsasl ``sasl_pwcheck_method``, tried in
#: order until one accepts): ``auxprop`` is our credentials file, ``saslauthd`` the daemon.
PWCHECK_METHODS: Final = ("auxprop", "saslauthd")
DEFAULT_SASLAUTHD_PATH: Final = Path("/var/run/saslauthd/mux")  # libsasl's on Debian

_DURATION: Final = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_int(record: ConfigRecord, minimum: int = 0) -> int:
    try:
        value = int(record.value)
    except ValueError:
        raise SettingsError(
            f"{_where(record)}: expected a whole number, got {record.value!r}"
        ) from None
    if value < minimum:
        raise SettingsError(f"{_where(record)}: must be at least {minimum}, got {value}")
    return value


def parse_duration(record: ConfigRecord) -> float:
    """Cyrus durations: a number of seconds, or ``1d2h3m4s`` style parts."""
    match = _DURATION.match(record.value.strip().lower())
    if not match or not record.value.strip():
        raise SettingsError(
            f"{_where(record)}: expected a duration like 30, 30s, 5m, 3h, 1d; got {record.value!r}"
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def parse_positive_duration(record: ConfigRecord) -> float:
    """A duration that must not be 0 (a timeout of nothing would fail everything at once)."""
    seconds = parse_duration(record)
    if seconds <= 0:
        raise SettingsError(f"{_where(record)}: must be above 0")
    return seconds


def parse_words(record: ConfigRecord) -> tuple[str, ...]:
    return tuple(record.value.split())


def parse_pwcheck(record: ConfigRecord) -> tuple[str, ...]:
    words = tuple(dict.fromkeys(w.lower() for w in record.value.split()))
    unknown = [w for w in words if w not in PWCHECK_METHODS]
    if not words or unknown:
        raise SettingsError(
            f"{_where(record)}: expected {' and/or '.join(PWCHECK_METHODS)} (tried in the order "
            f"given), got {record.value!r}"
        )
    return words


def parse_size(record: ConfigRecord) -> int:
    """Bytes, with an optional K, M or G suffix (binary multiples)."""
    text = record.value.strip().upper()
    factor = 1
    for suffix, mult in (("K", 1024), ("M", 1024**2), ("G", 1024**3)):
        if text.endswith(suffix):
            text, factor = text[:-1], mult
            break
    try:
        value = int(text) * factor
    except ValueError:
        raise SettingsError(
            f"{_where(record)}: expected a size like 65536, 64K or 16M, got {record.value!r}"
        ) from None
    if value <= 0:
        raise SettingsError(f"{_where(record)}: must be positive")
    return value


def last_values(records: Iterable[ConfigRecord]) -> dict[str, ConfigRecord]:
    """One record per key. A key given twice is an error, as in Cyrus ("option was
    specified twice"): silently taking either line would hide an operator's mistake."""
    result: dict[str, ConfigRecord] = {}
    for record in records:
        first = result.get(record.key)
        if first is not None:
            raise SettingsError(
                f"{_where(record)}: given twice (first at {first.source}:{first.line})"
            )
        result[record.key] = record
    return result


def parse_metrics_listen(record: ConfigRecord, listen: object) -> tuple[str, ...]:
    """Twisted endpoint strings for the HTTP status listener; empty or ``none``: no listener.
    Each must name its endpoint type (``tcp:9105``, ``unix:/run/m.sock``) and none may be a
    MUPDATE listener too (one port cannot serve both)."""
    words = parse_words(record)
    if [w.lower() for w in words] == ["none"]:
        return ()
    for word in words:
        kind, sep, rest = word.partition(":")
        if not (sep and rest and kind.isalnum()):
            raise SettingsError(
                f"{_where(record)}: expected Twisted endpoints like "
                f"tcp:9105:interface=127.0.0.1, got {word!r}"
            )
        if isinstance(listen, tuple) and word in listen:
            raise SettingsError(f"{_where(record)}: {word} is also in mupdate_listen")
    if len(set(words)) != len(words):
        raise SettingsError(f"{_where(record)}: an endpoint is given twice")
    return words


def parse_authority(record: ConfigRecord) -> dict[str, frozenset[str]]:
    """``USER=SERVER[,SERVER...]`` or ``USER=readonly``, space separated (design.md,
    "Authorisation"). Server names compare case-insensitively, as Cyrus's do."""
    out: dict[str, frozenset[str]] = {}
    for word in parse_words(record):
        user, sep, servers = word.partition("=")
        names = [s for s in servers.split(",") if s]
        if not sep or not user or not names or len(names) != servers.count(",") + 1:
            raise SettingsError(
                f"{_where(record)}: expected USER=SERVER[,SERVER...] or USER=readonly, got {word!r}"
            )
        if user in out:
            raise SettingsError(f"{_where(record)}: {user} is bound twice")
        if [n.lower() for n in names] == ["readonly"]:
            out[user] = frozenset()
        elif "readonly" in (n.lower() for n in names):
            raise SettingsError(f"{_where(record)}: {user}: readonly stands alone")
        else:
            out[user] = frozenset(n.lower() for n in names)
    return out


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What every MUPDATE listener needs, master or slave."""

    servername: str
    configdirectory: Path
    admins: frozenset[str] = frozenset()
    credentials: Path | None = None
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    allow_plaintext: bool = False
    loopback_plaintext: bool = True
    mechanisms: tuple[str, ...] = DEFAULT_MECHANISMS
    pwcheck: tuple[str, ...] = ("auxprop",)  # sasl_pwcheck_method (PLAIN and LOGIN only)
    saslauthd_path: Path = DEFAULT_SASLAUTHD_PATH  # sasl_saslauthd_path: its socket
    saslauthd_timeout: float = 10.0  # mupdate_saslauthd_timeout: connect to reply
    failed_login_pause: float = 3.0
    auth_attempts_max: int = 3  # failed AUTHENTICATEs per connection, then * BYE
    login_timeout: float = 60.0  # seconds from connect to a successful login, then * BYE
    connections_max: int = 128
    idle_timeout: float = 180 * 60.0
    stream_buffer_max: int = 16 * 1024 * 1024
    limits: ProtocolLimits = field(default_factory=ProtocolLimits)
    tls: ServerTls = field(default_factory=ServerTls)
    log: LogSettings = field(default_factory=LogSettings)  # mupdate_log_*, mupdate_syslog*
    metrics_listen: tuple[str, ...] = ()  # mupdate_metrics_listen: /metrics, /status, /health

    @property
    def credentials_path(self) -> Path:
        return self.credentials or self.configdirectory / "credentials"


@dataclass(frozen=True, slots=True)
class MasterSettings(ServerSettings):
    tombstone_window: float = 24 * 3600.0
    database: Path | None = None
    #: mupdate_authority: credential (authcid) -> the servernames it may write for,
    #: lower-cased; an empty set is a read-only credential. Users not listed are unbound.
    authority: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def database_path(self) -> Path:
        return self.database or self.configdirectory / "mupdate.sqlite3"


def _limits(values: Mapping[str, ConfigRecord]) -> ProtocolLimits:
    limits = ProtocolLimits()
    changes: dict[str, int] = {}
    for key, attr in (
        ("mupdate_max_line", "max_line"),
        ("mupdate_max_literal", "max_literal"),
        ("mupdate_max_command", "max_command"),
        ("mupdate_max_args", "max_args"),
    ):
        if key in values:
            changes[attr] = (
                parse_size(values[key]) if attr != "max_args" else parse_int(values[key], 1)
            )
    return replace(limits, **changes)


def server_fields(values: Mapping[str, ConfigRecord], default_servername: str) -> dict[str, object]:
    """The ServerSettings fields found in the file, converted."""
    out: dict[str, object] = {"servername": default_servername, "limits": _limits(values)}
    if "servername" in values:
        if not values["servername"].value:
            raise SettingsError(f"{_where(values['servername'])}: must not be empty")
        out["servername"] = values["servername"].value
    if "configdirectory" in values:
        out["configdirectory"] = Path(values["configdirectory"].value)
    if "admins" in values:
        out["admins"] = frozenset(parse_words(values["admins"]))
    if "mupdate_credentials" in values:
        out["credentials"] = Path(values["mupdate_credentials"].value)
    if "mupdate_listen" in values:
        out["listen"] = parse_words(values["mupdate_listen"])
    if "allowplaintext" in values:
        out["allow_plaintext"] = parse_bool(values["allowplaintext"])
    if "mupdate_loopback_plaintext" in values:
        out["loopback_plaintext"] = parse_bool(values["mupdate_loopback_plaintext"])
    if "sasl_mech_list" in values:
        mechs = tuple(m.upper() for m in parse_words(values["sasl_mech_list"]))
        if not mechs:
            raise SettingsError(
                f"{_where(values['sasl_mech_list'])}: no mechanism listed: nobody could log in"
            )
        unknown = [m for m in mechs if m not in DEFAULT_MECHANISMS]
        if unknown:
            raise SettingsError(
                f"{_where(values['sasl_mech_list'])}: unsupported mechanism(s) {' '.join(unknown)}; "
                f"supported: {' '.join(DEFAULT_MECHANISMS)}"
            )
        out["mechanisms"] = mechs
    if "sasl_pwcheck_method" in values:
        out["pwcheck"] = parse_pwcheck(values["sasl_pwcheck_method"])
    if "sasl_saslauthd_path" in values:
        out["saslauthd_path"] = Path(values["sasl_saslauthd_path"].value)
    if "mupdate_saslauthd_timeout" in values:
        out["saslauthd_timeout"] = parse_positive_duration(values["mupdate_saslauthd_timeout"])
    if "failedloginpause" in values:
        out["failed_login_pause"] = parse_duration(values["failedloginpause"])
    if "mupdate_auth_attempts_max" in values:
        out["auth_attempts_max"] = parse_int(values["mupdate_auth_attempts_max"], 1)
    if "mupdate_login_timeout" in values:
        out["login_timeout"] = parse_positive_duration(values["mupdate_login_timeout"])
    if "mupdate_connections_max" in values:
        out["connections_max"] = parse_int(values["mupdate_connections_max"], 1)
    if "mupdate_idle_timeout" in values:
        out["idle_timeout"] = parse_duration(values["mupdate_idle_timeout"])
    if "mupdate_stream_buffer_max" in values:
        out["stream_buffer_max"] = parse_size(values["mupdate_stream_buffer_max"])
    if "mupdate_metrics_listen" in values:
        out["metrics_listen"] = parse_metrics_listen(
            values["mupdate_metrics_listen"], out.get("listen", (DEFAULT_LISTEN,))
        )
    out["tls"] = server_tls(values)  # tls_server_cert, ..., mupdate_tls_required
    out["log"] = log_settings(values)  # mupdate_log_format, ..., mupdate_audit_log
    return out


def master_settings(
    records: Iterable[ConfigRecord],
    *,
    default_servername: str,
    default_configdirectory: Path,
    overrides: Mapping[str, object] | None = None,
) -> MasterSettings:
    """Defaults, then the file, then ``overrides`` (the twistd options)."""
    values = last_values(records)
    mode = values.get("mupdate_config")
    if mode is not None and mode.value.lower() not in ("standard", "unified", "replicated"):
        raise SettingsError(f"{_where(mode)}: expected standard, unified or replicated")
    if mode is not None and mode.value.lower() == "unified" and "mupdate_server" in values:
        # Cyrus refuses too (§7.2): a unified server runs a slave, never the master.
        raise SettingsError(f"{_where(mode)}: cannot run the mupdate master on a unified server")
    fields = server_fields(values, default_servername)
    fields.setdefault("configdirectory", default_configdirectory)
    if "mupdate_tombstone_window" in values:
        fields["tombstone_window"] = parse_duration(values["mupdate_tombstone_window"])
    if "mupdate_database" in values:
        fields["database"] = Path(values["mupdate_database"].value)
    if "mupdate_authority" in values:
        fields["authority"] = parse_authority(values["mupdate_authority"])
    fields.update(overrides or {})
    settings = MasterSettings(**fields)  # type: ignore[arg-type]  # fields are checked above
    if not settings.servername:
        raise SettingsError("servername must not be empty")
    return settings


@dataclass(frozen=True, slots=True)
class SlaveSettings(ServerSettings):
    """A slave: who it follows, how it logs in, and what it must never lose (design.md)."""

    mupdate_server: str = ""
    mupdate_port: int = DEFAULT_PORT
    username: str = ""  # SASL authorization id (Cyrus: mupdate_username)
    authname: str = ""
    password: str = ""
    realm: str = ""
    retry_delay: float = 20.0  # ping interval, NOOP deadline and reconnect base (§9.4)
    retry_max: float = 300.0  # cap on the reconnect delay after repeated failures
    murder_mode: str = "standard"  # standard | unified
    partitions: tuple[tuple[str, Path], ...] = ()
    # Where Cyrus keeps cyrus.header when not on the data partition (slave.disk.header_roots).
    metapartitions: tuple[tuple[str, Path], ...] = ()
    metapartition_files: frozenset[str] = frozenset()
    header_metadirs: tuple[tuple[str, Path], ...] = ()  # Cyrus's metadir-header-NAME
    hashimapspool: bool = False  # Cyrus's spool layout (legacy directories), for the guard
    fulldirhash: bool = False
    local_servernames: frozenset[str] = frozenset()
    heal: bool | None = None  # None: on in unified mode, off otherwise
    brake_share: float = 0.5
    brake_minimum: int = 10
    brake_release: bool = False
    database: Path | None = None
    client_tls: ClientTls = field(default_factory=ClientTls)  # the link to the master
    cyrus_store: CyrusStoreSettings | None = None  # None: the copy is our SQLite file
    kick_socket: Path | None = None  # Cyrus's mupdate.target (§9.6)
    kick_timeout: float = 10.0
    remove_delay: float = 0.0  # a resync's removals wait this long for a confirming resync

    @property
    def database_path(self) -> Path:
        return self.database or self.configdirectory / "mupdate-slave.sqlite3"

    @property
    def unified(self) -> bool:
        return self.murder_mode == "unified"

    @property
    def healing(self) -> bool:
        return self.unified if self.heal is None else self.heal

    @property
    def master_address(self) -> tuple[str, int]:
        """``host``, ``host:port`` or ``[v6]:port``; without a port, ``mupdate_port``."""
        text = self.mupdate_server.split("/", 1)[0]
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            return host, int(rest[1:]) if rest.startswith(":") else self.mupdate_port
        if text.count(":") == 1:
            host, port = text.split(":")
            return host, int(port)
        return text, self.mupdate_port

    @property
    def own_servernames(self) -> frozenset[str]:
        """Names that make a location ours, compared case-insensitively as Cyrus does."""
        return frozenset(n.lower() for n in {self.servername, *self.local_servernames})


METAPARTITION_FILES: Final = frozenset(
    {"header", "index", "cache", "expunge", "squat", "annotations", "lock", "dav", "archivecache"}
)
"""Cyrus 3.6's ``metapartition_files`` values (lib/imapoptions); any other word is fatal there."""


def _named_paths(values: Mapping[str, ConfigRecord], prefix: str) -> tuple[tuple[str, Path], ...]:
    """``PREFIXNAME: path`` keys as (NAME, path), sorted; empty values left out."""
    return tuple(
        (key[len(prefix) :], Path(record.value))
        for key, record in sorted(values.items())
        if key.startswith(prefix) and record.value
    )


def _metapartition_files(record: ConfigRecord) -> frozenset[str]:
    files = frozenset(record.value.split())
    unknown = files - METAPARTITION_FILES
    if unknown:
        raise SettingsError(
            f"{_where(record)}: unknown metadata file {', '.join(sorted(unknown))} (Cyrus "
            f"knows {' '.join(sorted(METAPARTITION_FILES))})"
        )
    return files


def slave_settings(
    records: Iterable[ConfigRecord],
    *,
    default_servername: str,
    default_configdirectory: Path,
    overrides: Mapping[str, object] | None = None,
) -> SlaveSettings:
    values = last_values(records)
    fields = server_fields(values, default_servername)
    fields.setdefault("configdirectory", default_configdirectory)
    if "mupdate_server" not in values or not values["mupdate_server"].value:
        raise SettingsError(
            "mupdate_server is required: the master this slave follows (host or host:port)"
        )
    fields["mupdate_server"] = values["mupdate_server"].value
    if "mupdate_port" in values:
        fields["mupdate_port"] = parse_int(values["mupdate_port"], 1)
    for key, attr in (
        ("mupdate_username", "username"),
        ("mupdate_authname", "authname"),
        ("mupdate_password", "password"),
        ("mupdate_realm", "realm"),
    ):
        if key in values:
            fields[attr] = values[key].value
    if "mupdate_password_file" in values:
        record = values["mupdate_password_file"]
        try:
            fields["password"] = (
                Path(record.value).read_text(encoding="utf-8").splitlines()[0].strip()
            )
        except (OSError, IndexError) as exc:
            raise SettingsError(
                f"{_where(record)}: cannot read a password from {record.value}: {exc}"
            ) from None
    if "mupdate_retry_delay" in values:
        # Any value >= 0 (Cyrus divides by zero for 0 and 1, §9.4).
        fields["retry_delay"] = parse_duration(values["mupdate_retry_delay"])
    if "mupdate_retry_max" in values:
        fields["retry_max"] = parse_duration(values["mupdate_retry_max"])
    if "mupdate_config" in values:
        mode = values["mupdate_config"].value.lower()
        if mode not in ("standard", "unified"):
            raise SettingsError(
                f"{_where(values['mupdate_config'])}: a slave runs in standard or unified mode"
            )
        fields["murder_mode"] = mode
    fields["partitions"] = _named_paths(values, "partition-")
    fields["metapartitions"] = _named_paths(values, "metapartition-")
    fields["header_metadirs"] = _named_paths(values, "metadir-header-")
    if "metapartition_files" in values:
        fields["metapartition_files"] = _metapartition_files(values["metapartition_files"])
    for key in ("hashimapspool", "fulldirhash"):
        if key in values:
            fields[key] = parse_bool(values[key])
    if "mupdate_local_servernames" in values:
        fields["local_servernames"] = frozenset(parse_words(values["mupdate_local_servernames"]))
    if "mupdate_heal" in values:
        fields["heal"] = parse_bool(values["mupdate_heal"])
    if "mupdate_brake_share" in values:
        record = values["mupdate_brake_share"]
        try:
            share = float(record.value.rstrip("%")) / (100 if record.value.endswith("%") else 1)
        except ValueError:
            raise SettingsError(f"{_where(record)}: expected a share like 0.5 or 50%") from None
        if not 0 < share <= 1:
            raise SettingsError(f"{_where(record)}: must be above 0 and at most 1 (100%)")
        fields["brake_share"] = share
    if "mupdate_brake_minimum" in values:
        fields["brake_minimum"] = parse_int(values["mupdate_brake_minimum"], 0)
    if "mupdate_brake_release" in values:
        fields["brake_release"] = parse_bool(values["mupdate_brake_release"])
    if "mupdate_slave_database" in values:
        fields["database"] = Path(values["mupdate_slave_database"].value)
    fields["client_tls"] = client_tls(values)  # mupdate_starttls, tls_server_ca_file, ...
    fields["cyrus_store"] = cyrus_store_settings(values, parse_positive_duration)
    fields["kick_socket"] = kick_socket_path(values, fields["cyrus_store"])  # type: ignore[arg-type]
    if "mupdate_resync_remove_delay" in values:
        fields["remove_delay"] = parse_duration(values["mupdate_resync_remove_delay"])
    if "mupdate_kick_timeout" in values:
        fields["kick_timeout"] = parse_duration(values["mupdate_kick_timeout"])
    fields.update(overrides or {})
    settings = SlaveSettings(**fields)  # type: ignore[arg-type]  # fields are checked above
    if not settings.authname:
        raise SettingsError(
            "mupdate_authname is required: the user this slave logs in to the master as"
        )
    if settings.retry_max < settings.retry_delay:
        raise SettingsError("mupdate_retry_max must not be below mupdate_retry_delay")
    return settings

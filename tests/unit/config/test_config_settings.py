"""Records to MasterSettings: Cyrus value spellings, precedence, errors naming file:line: key.

Also checks the sample ``etc/mupdate-master.conf`` against what settings.py reads
(style.md §8: every key we read appears in ``etc/`` and a test parses each sample).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import mupdate.config.settings as settings_module
from mupdate.config.imapdconf import ConfigRecord, parse_imapd_conf, read_imapd_conf
from mupdate.config.settings import (
    DEFAULT_LISTEN,
    DEFAULT_MECHANISMS,
    DEFAULT_PORT,
    MasterSettings,
    SettingsError,
    last_values,
    master_settings,
    parse_bool,
    parse_duration,
    parse_int,
    parse_size,
    parse_words,
)
from mupdate.protocol.limits import ProtocolLimits

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "etc" / "mupdate-master.conf"
SETTINGS_SOURCE = Path(settings_module.__file__)

HOST = "host.example"
DATA = Path("data-dir")


def rec(key: str, value: str, line: int = 7, source: str = "m.conf") -> ConfigRecord:
    return ConfigRecord(key, value, source, line)


def settings_from(text: str, **overrides: object) -> MasterSettings:
    return master_settings(
        parse_imapd_conf(text, "m.conf"),
        default_servername=HOST,
        default_configdirectory=DATA,
        overrides=overrides or None,
    )


def error_of(text: str) -> str:
    with pytest.raises(SettingsError) as info:
        settings_from(text)
    return str(info.value)


# --- value conversions -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "yes", "on", "true", "t", "y", "YES", "On", "True"])
def test_bool_true_spellings(value: str) -> None:
    assert parse_bool(rec("allowplaintext", value)) is True


@pytest.mark.parametrize("value", ["0", "no", "off", "false", "f", "n", "NO", "Off", "FALSE"])
def test_bool_false_spellings(value: str) -> None:
    assert parse_bool(rec("allowplaintext", value)) is False


@pytest.mark.parametrize("value", ["", "2", "yeah", "enabled", "o"])
def test_bool_other_values_name_file_line_key(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_bool(rec("allowplaintext", value))
    assert str(info.value) == f"m.conf:7: allowplaintext: expected yes or no, got {value!r}"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("3", 3.0),
        ("3s", 3.0),
        ("5m", 300.0),
        ("3h", 10800.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("1h30", 3630.0),
        ("90M", 5400.0),
        (" 20s ", 20.0),
    ],
)
def test_durations(value: str, seconds: float) -> None:
    result = parse_duration(rec("failedloginpause", value))
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize("value", ["", "  ", "s", "5x", "-1", "1.5h", "1m1h", "5 m", "3ss", "d"])
def test_bad_durations_name_file_line_key(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_duration(rec("failedloginpause", value))
    assert str(info.value) == (
        f"m.conf:7: failedloginpause: expected a duration like 30, 30s, 5m, 3h, 1d; got {value!r}"
    )


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1", 1),
        ("65536", 65536),
        ("64K", 65536),
        ("64k", 65536),
        ("16M", 16 * 1024 * 1024),
        ("2g", 2 * 1024**3),
    ],
)
def test_sizes(value: str, size: int) -> None:
    assert parse_size(rec("mupdate_max_line", value)) == size


@pytest.mark.parametrize("value", ["", "K", "1.5M", "16MB", "64 KiB", "lots"])
def test_bad_sizes_name_file_line_key(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_size(rec("mupdate_max_line", value))
    assert str(info.value) == (
        f"m.conf:7: mupdate_max_line: expected a size like 65536, 64K or 16M, got {value!r}"
    )


@pytest.mark.parametrize("value", ["0", "0K", "-1", "-4M"])
def test_sizes_must_be_positive(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_size(rec("mupdate_max_line", value))
    assert str(info.value) == "m.conf:7: mupdate_max_line: must be positive"


def test_int_and_its_minimum() -> None:
    assert parse_int(rec("mupdate_connections_max", "0")) == 0
    assert parse_int(rec("mupdate_connections_max", "12"), 1) == 12
    with pytest.raises(SettingsError) as info:
        parse_int(rec("mupdate_connections_max", "0"), 1)
    assert str(info.value) == "m.conf:7: mupdate_connections_max: must be at least 1, got 0"
    with pytest.raises(SettingsError) as info:
        parse_int(rec("mupdate_connections_max", "12k"))
    assert str(info.value) == (
        "m.conf:7: mupdate_connections_max: expected a whole number, got '12k'"
    )


def test_words() -> None:
    assert parse_words(rec("admins", "  a  b\tc ")) == ("a", "b", "c")
    assert parse_words(rec("admins", "")) == ()


def test_last_values_refuses_a_key_given_twice() -> None:
    first, second, other = rec("admins", "a", 1), rec("admins", "b", 2), rec("x", "y", 3)
    assert last_values([first, other]) == {"admins": first, "x": other}
    with pytest.raises(SettingsError) as info:
        last_values([first, other, second])
    assert str(info.value) == "m.conf:2: admins: given twice (first at m.conf:1)"


# --- master_settings ---------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    settings = master_settings([], default_servername=HOST, default_configdirectory=DATA)
    assert settings == MasterSettings(servername=HOST, configdirectory=DATA)
    assert settings.admins == frozenset()
    assert settings.credentials is None
    assert settings.credentials_path == DATA / "credentials"
    assert settings.database is None
    assert settings.database_path == DATA / "mupdate.sqlite3"
    assert settings.listen == (DEFAULT_LISTEN,)
    assert f"tcp:{DEFAULT_PORT}:interface=127.0.0.1" == DEFAULT_LISTEN
    assert DEFAULT_PORT == 3905
    assert settings.allow_plaintext is False
    assert settings.loopback_plaintext is True
    assert settings.mechanisms == DEFAULT_MECHANISMS
    assert DEFAULT_MECHANISMS[-2:] == ("PLAIN", "LOGIN")
    assert (settings.auth_attempts_max, settings.login_timeout) == (3, 60.0)
    assert settings.authority == {}
    assert settings.failed_login_pause == 3.0
    assert settings.connections_max == 128
    assert settings.idle_timeout == 10800.0
    assert settings.stream_buffer_max == 16 * 1024 * 1024
    assert settings.limits == ProtocolLimits()
    assert settings.tombstone_window == 86400.0


def test_settings_are_frozen() -> None:
    settings = settings_from("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.servername = "other"  # type: ignore[misc]


def test_file_overrides_defaults_and_overrides_win_over_file() -> None:
    text = "servername: from-file\nconfigdirectory: /from/file\nadmins: filer\n"
    assert settings_from(text).servername == "from-file"
    assert settings_from(text).configdirectory == Path("/from/file")
    settings = settings_from(
        text, servername="from-option", configdirectory=Path("/opt"), listen=("tcp:1",)
    )
    assert settings.servername == "from-option"
    assert settings.configdirectory == Path("/opt")
    assert settings.listen == ("tcp:1",)
    assert settings.admins == frozenset({"filer"})


def test_a_key_given_twice_in_the_file_is_refused() -> None:
    assert (
        error_of("servername: one\nservername: two\n")
        == "m.conf:2: servername: given twice (first at m.conf:1)"
    )


def test_keys_are_case_insensitive() -> None:
    assert settings_from("ServerName: m\nAllowPlainText: yes\n").allow_plaintext is True


def test_unknown_keys_are_ignored() -> None:
    text = (
        "partition-default: /var/spool/imap\nsasl_minimum_layer: 0\n"
        "tls_session_timeout: x\nmupdate_retry_delay: nonsense\n"
    )
    assert settings_from(text) == MasterSettings(servername=HOST, configdirectory=DATA)


def test_error_names_file_line_and_key() -> None:
    text = "servername: m\n\n# c\nmupdate_connections_max: many\n"
    assert error_of(text) == (
        "m.conf:4: mupdate_connections_max: expected a whole number, got 'many'"
    )


def test_repeated_key_is_refused_even_when_one_value_is_bad() -> None:
    text = "failedloginpause: bad\nfailedloginpause: 7s\n"
    assert error_of(text) == "m.conf:2: failedloginpause: given twice (first at m.conf:1)"


def test_connections_max_must_be_positive() -> None:
    assert error_of("mupdate_connections_max: 0") == (
        "m.conf:1: mupdate_connections_max: must be at least 1, got 0"
    )


def test_mechanism_list_is_upper_cased() -> None:
    assert settings_from("sasl_mech_list: login plain").mechanisms == ("LOGIN", "PLAIN")


def test_unsupported_mechanism_is_refused() -> None:
    assert error_of("sasl_mech_list: PLAIN cram-md5 GSSAPI") == (
        "m.conf:1: sasl_mech_list: unsupported mechanism(s) CRAM-MD5 GSSAPI; supported: "
        "SCRAM-SHA-512-PLUS SCRAM-SHA-256-PLUS SCRAM-SHA-1-PLUS SCRAM-SHA-512 SCRAM-SHA-256 "
        "SCRAM-SHA-1 PLAIN LOGIN"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("be1=be1", {"be1": frozenset({"be1"})}),
        ("be1=BE1,be1b  tool=READONLY", {"be1": frozenset({"be1", "be1b"}), "tool": frozenset()}),
        ("", {}),
    ],
)
def test_authority_syntax(text: str, expected: dict[str, frozenset[str]]) -> None:
    assert settings_from(f"mupdate_authority: {text}").authority == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("be1", "expected USER=SERVER[,SERVER...] or USER=readonly, got 'be1'"),
        ("be1=", "expected USER=SERVER[,SERVER...] or USER=readonly, got 'be1='"),
        ("=be1", "expected USER=SERVER[,SERVER...] or USER=readonly, got '=be1'"),
        ("be1=a,,b", "expected USER=SERVER[,SERVER...] or USER=readonly, got 'be1=a,,b'"),
        ("be1=a be1=b", "be1 is bound twice"),
        ("be1=a,readonly", "be1: readonly stands alone"),
    ],
)
def test_authority_errors(text: str, reason: str) -> None:
    assert error_of(f"mupdate_authority: {text}") == f"m.conf:1: mupdate_authority: {reason}"


def test_abuse_limits() -> None:
    settings = settings_from("mupdate_auth_attempts_max: 1\nmupdate_login_timeout: 1m")
    assert (settings.auth_attempts_max, settings.login_timeout) == (1, 60.0)
    assert error_of("mupdate_auth_attempts_max: 0") == (
        "m.conf:1: mupdate_auth_attempts_max: must be at least 1, got 0"
    )
    assert error_of("mupdate_login_timeout: 0") == (
        "m.conf:1: mupdate_login_timeout: must be above 0"
    )


def test_limits_from_the_file() -> None:
    text = (
        "mupdate_max_line: 1K\nmupdate_max_literal: 2k\nmupdate_max_command: 1M\n"
        "mupdate_max_args: 5\n"
    )
    assert settings_from(text).limits == ProtocolLimits(
        max_line=1024, max_literal=2048, max_command=1024 * 1024, max_args=5
    )


def test_max_args_is_a_count_not_a_size() -> None:
    assert error_of("mupdate_max_args: 4K") == (
        "m.conf:1: mupdate_max_args: expected a whole number, got '4K'"
    )
    assert error_of("mupdate_max_args: 0") == (
        "m.conf:1: mupdate_max_args: must be at least 1, got 0"
    )


def test_paths() -> None:
    text = (
        "configdirectory: /srv/m\nmupdate_credentials: /etc/m/creds\n"
        "mupdate_database: /db/m.sqlite3\n"
    )
    settings = settings_from(text)
    assert settings.credentials_path == Path("/etc/m/creds")
    assert settings.database_path == Path("/db/m.sqlite3")
    settings = settings_from("configdirectory: /srv/m\n")
    assert settings.credentials_path == Path("/srv/m/credentials")
    assert settings.database_path == Path("/srv/m/mupdate.sqlite3")


@pytest.mark.parametrize("mode", ["standard", "replicated", "unified", "Standard", "REPLICATED"])
def test_murder_modes_accepted_without_mupdate_server(mode: str) -> None:
    assert settings_from(f"mupdate_config: {mode}\n") == settings_from("")


@pytest.mark.parametrize("mode", ["standard", "replicated"])
def test_master_with_mupdate_server_in_standard_or_replicated_mode(mode: str) -> None:
    text = f"mupdate_server: m.example\nmupdate_config: {mode}\n"
    assert settings_from(text) == settings_from("")


def test_unified_with_mupdate_server_is_refused() -> None:
    text = "servername: m\nmupdate_server: m.example\nmupdate_config: Unified\n"
    assert error_of(text) == (
        "m.conf:3: mupdate_config: cannot run the mupdate master on a unified server"
    )


def test_unknown_murder_mode_is_refused() -> None:
    assert error_of("mupdate_config: murder\n") == (
        "m.conf:1: mupdate_config: expected standard, unified or replicated"
    )


def test_empty_servername_is_refused() -> None:
    assert error_of("servername:\n") == "m.conf:1: servername: must not be empty"
    with pytest.raises(SettingsError) as info:
        settings_from("", servername="")
    assert str(info.value) == "servername must not be empty"


# --- the sample configuration ------------------------------------------------------------

Getter = Callable[[MasterSettings], object]

# key -> (how to read it back, value in the sample, another value, what that other value gives)
SAMPLE_KEYS: dict[str, tuple[Getter, object, str, object]] = {
    "servername": (lambda s: s.servername, "mupdate.example.test", "x.test", "x.test"),
    "configdirectory": (
        lambda s: s.configdirectory,
        Path("/var/lib/mupdate"),
        "/srv/m",
        Path("/srv/m"),
    ),
    "admins": (lambda s: s.admins, frozenset({"admin"}), "a b", frozenset({"a", "b"})),
    "mupdate_credentials": (
        lambda s: s.credentials_path,
        Path("/var/lib/mupdate/credentials"),
        "/etc/c",
        Path("/etc/c"),
    ),
    "mupdate_listen": (
        lambda s: s.listen,
        ("tcp:3905:interface=127.0.0.1",),
        "tcp:1 unix:/s",
        ("tcp:1", "unix:/s"),
    ),
    "allowplaintext": (lambda s: s.allow_plaintext, False, "yes", True),
    "mupdate_loopback_plaintext": (lambda s: s.loopback_plaintext, True, "no", False),
    "sasl_mech_list": (
        lambda s: s.mechanisms,
        (
            "SCRAM-SHA-512-PLUS",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-512",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1",
            "PLAIN",
            "LOGIN",
        ),
        "LOGIN",
        ("LOGIN",),
    ),
    "failedloginpause": (lambda s: s.failed_login_pause, 3.0, "10s", 10.0),
    "mupdate_auth_attempts_max": (lambda s: s.auth_attempts_max, 3, "5", 5),
    "mupdate_login_timeout": (lambda s: s.login_timeout, 60.0, "2m", 120.0),
    "mupdate_authority": (
        lambda s: s.authority,
        {},
        "be1=be1,BE1b ro=readonly",
        {"be1": frozenset({"be1", "be1b"}), "ro": frozenset()},
    ),
    "mupdate_connections_max": (lambda s: s.connections_max, 128, "7", 7),
    "mupdate_idle_timeout": (lambda s: s.idle_timeout, 10800.0, "5m", 300.0),
    "mupdate_stream_buffer_max": (lambda s: s.stream_buffer_max, 16 * 1024**2, "1K", 1024),
    "mupdate_max_line": (lambda s: s.limits.max_line, 64 * 1024, "3K", 3072),
    "mupdate_max_literal": (lambda s: s.limits.max_literal, 128 * 1024, "5K", 5120),
    "mupdate_max_command": (lambda s: s.limits.max_command, 1024**2, "9K", 9216),
    "mupdate_max_args": (lambda s: s.limits.max_args, 40, "9", 9),
    "mupdate_tombstone_window": (lambda s: s.tombstone_window, 86400.0, "2h", 7200.0),
    "tls_client_certs": (lambda s: s.tls.client_certs, "optional", "require", "require"),
    "tls_versions": (
        lambda s: s.tls.versions,
        ("tls1_2", "tls1_3"),
        "tls1_3",
        ("tls1_3",),
    ),
    "mupdate_log_format": (lambda s: s.log.format, "text", "JSON", "json"),
    "mupdate_log_level": (lambda s: s.log.level, "info", "warning", "warn"),
    "mupdate_syslog": (lambda s: s.log.syslog, False, "yes", True),
    "mupdate_syslog_facility": (lambda s: s.log.syslog_facility, "mail", "local6", "local6"),
    "mupdate_syslog_socket": (
        lambda s: s.log.syslog_socket,
        Path("/dev/log"),
        "/run/systemd/journal/dev-log",
        Path("/run/systemd/journal/dev-log"),
    ),
    "mupdate_audit_fsync": (lambda s: s.log.audit_fsync, False, "yes", True),
}
# Read only to refuse a unified master; not a field of the settings.
SAMPLE_CHECK_ONLY = {"mupdate_config"}


def sample_settings(text: str | None = None) -> MasterSettings:
    records = read_imapd_conf(SAMPLE) if text is None else parse_imapd_conf(text, str(SAMPLE))
    return master_settings(
        records, default_servername="unused", default_configdirectory=Path("unused")
    )


def test_sample_keys_are_all_keys_we_read() -> None:
    keys = [record.key for record in read_imapd_conf(SAMPLE)]
    assert len(keys) == len(set(keys)), "a key is given twice in the sample"
    assert set(keys) == set(SAMPLE_KEYS) | SAMPLE_CHECK_ONLY


def test_sample_parses_to_its_values() -> None:
    settings = sample_settings()
    for key, (get, expected, _, _) in SAMPLE_KEYS.items():
        assert get(settings) == expected, key


def test_sample_database_defaults_to_the_config_directory() -> None:
    assert sample_settings().database_path == Path("/var/lib/mupdate/mupdate.sqlite3")


@pytest.mark.parametrize("key", sorted(SAMPLE_KEYS))
def test_every_sample_key_is_reflected_in_the_settings(key: str) -> None:
    get, expected, other_text, other_value = SAMPLE_KEYS[key]
    assert other_value != expected
    text = SAMPLE.read_text(encoding="utf-8")
    changed, count = re.subn(rf"(?m)^{re.escape(key)}:.*$", f"{key}: {other_text}", text)
    assert count == 1
    settings = sample_settings(changed)
    assert get(settings) == other_value
    # Nothing else moved.
    for other_key, (other_get, other_expected, _, _) in SAMPLE_KEYS.items():
        if other_key != key:
            assert other_get(settings) == other_expected, other_key


def test_sample_mupdate_config_is_read() -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    changed = text.replace("mupdate_config: standard", "mupdate_config: bogus")
    line = next(r.line for r in read_imapd_conf(SAMPLE) if r.key == "mupdate_config")
    with pytest.raises(SettingsError) as info:
        sample_settings(changed)
    assert str(info.value) == (
        f"{SAMPLE}:{line}: mupdate_config: expected standard, unified or replicated"
    )


def test_sample_values_are_the_defaults_where_it_says_so() -> None:
    settings = sample_settings()
    defaults = MasterSettings(servername="x", configdirectory=Path("/var/lib/mupdate"))
    for key in SAMPLE_KEYS.keys() - {"servername", "admins", "mupdate_credentials"}:
        get = SAMPLE_KEYS[key][0]
        assert get(settings) == get(defaults), key
    # mupdate_credentials in the sample is the default path under configdirectory.
    assert settings.credentials_path == defaults.credentials_path


# The functions of settings.py that build MasterSettings (slave_settings has its own keys),
# and of tls_settings.py the one that server_fields calls (client_tls is the slave's).
MASTER_FUNCTIONS = ("_limits", "server_fields", "master_settings")
TLS_SOURCE = SETTINGS_SOURCE.with_name("tls_settings.py")
TLS_FUNCTIONS = ("server_tls",)
LOG_SOURCE = SETTINGS_SOURCE.with_name("log_settings.py")
LOG_FUNCTIONS = ("log_settings",)


def keys_read_by_settings() -> set[str]:
    """Every config key the master's settings functions look up: ``"k" in values``,
    ``values["k"]``, ``values.get("k")`` and the ``("mupdate_...", attr)`` limits table."""
    functions = []
    for source, names in (
        (SETTINGS_SOURCE, MASTER_FUNCTIONS),
        (TLS_SOURCE, TLS_FUNCTIONS),
        (LOG_SOURCE, LOG_FUNCTIONS),
    ):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
        assert sorted(f.name for f in found) == sorted(names)
        functions += found
    keys: set[str] = set()
    for node in (n for function in functions for n in ast.walk(function)):
        if (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str)
            and any(isinstance(op, ast.In) for op in node.ops)
            and any(isinstance(c, ast.Name) and c.id == "values" for c in node.comparators)
        ):
            keys.add(node.left.value)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "values"
            and isinstance(node.slice, ast.Constant)
        ):
            keys.add(node.slice.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "values"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            keys.add(node.args[0].value)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"mupdate_[a-z_]+", node.value)
        ):
            keys.add(node.value)
    return keys


def test_the_key_scan_finds_the_keys() -> None:
    found = keys_read_by_settings()
    assert {"servername", "allowplaintext", "mupdate_max_line", "mupdate_config"} <= found
    assert {"mupdate_server", "mupdate_database"} <= found


def test_every_key_read_appears_in_the_sample() -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    # A key is documented by a line "key: default", active or commented out.
    documented = set(re.findall(r"(?m)^#?\s*([a-z][a-z0-9_-]*):", text))
    read = keys_read_by_settings()
    # mupdate_server is read only to refuse "unified" on a master; the sample names it in
    # the mupdate_config comment rather than giving it a line of its own.
    assert read - documented == {"mupdate_server"}
    assert re.search(r"\bmupdate_server\b", text)
    # And the sample documents nothing we do not read (besides the example command line).
    assert documented - read == set()

"""``twistd mupdate-master`` options: config file, --port, --data-dir, first-start credential."""

from __future__ import annotations

import io
import re
import socket
import stat
from pathlib import Path

import pytest
from twisted.python.usage import UsageError

from mupdate.config.settings import DEFAULT_LISTEN, MasterSettings, SettingsError
from mupdate.master.tap import (
    DEFAULT_ADMIN,
    DEFAULT_DATA_DIR,
    Options,
    build_settings,
    ensure_default_credential,
)
from mupdate.sasl.credentials import CredentialsFile, hash_password, write_credentials

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "etc" / "mupdate-master.conf"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imapd.conf"
    path.write_text(text, encoding="utf-8")
    return path


def parse(*argv: str) -> MasterSettings:
    options = Options()
    options.parseOptions(list(argv))
    settings = options["settings"]
    assert isinstance(settings, MasterSettings)
    return settings


def usage_error(*argv: str) -> str:
    with pytest.raises(UsageError) as info:
        Options().parseOptions(list(argv))
    return str(info.value)


def test_no_options_is_the_embedded_default() -> None:
    assert parse() == MasterSettings(
        servername=socket.gethostname(),
        configdirectory=DEFAULT_DATA_DIR,
        admins=frozenset({DEFAULT_ADMIN}),
    )
    assert Path("mupdate-data") == DEFAULT_DATA_DIR
    assert DEFAULT_ADMIN == "admin"
    assert parse().listen == (DEFAULT_LISTEN,)


def test_config_file(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "servername: m.example\nconfigdirectory: /srv/m\nadmins: alice bob\n"
        "mupdate_listen: tcp:4000 tcp:4001\nfailedloginpause: 1s\n",
    )
    settings = parse("--config", str(config))
    assert settings == MasterSettings(
        servername="m.example",
        configdirectory=Path("/srv/m"),
        admins=frozenset({"alice", "bob"}),
        listen=("tcp:4000", "tcp:4001"),
        failed_login_pause=1.0,
    )
    assert parse("-c", str(config)) == settings


def test_config_file_admins_are_not_mixed_with_the_default_admin(tmp_path: Path) -> None:
    config = write_config(tmp_path, "admins: alice\n")
    assert parse("--config", str(config)).admins == frozenset({"alice"})


def test_sample_config_parses() -> None:
    settings = parse("--config", str(SAMPLE))
    assert settings.servername == "mupdate.example.test"
    assert settings.configdirectory == Path("/var/lib/mupdate")
    assert settings.admins == frozenset({"admin"})


def test_port_is_repeatable_and_overrides_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "admins: a\nmupdate_listen: tcp:4000\n")
    settings = parse("--config", str(config), "--port", "tcp:1", "-p", "ssl:2", "--port=tcp:3")
    assert settings.listen == ("tcp:1", "ssl:2", "tcp:3")
    assert parse("--config", str(config)).listen == ("tcp:4000",)


def test_port_without_a_config() -> None:
    assert parse("--port", "tcp:0:interface=127.0.0.1").listen == ("tcp:0:interface=127.0.0.1",)


def test_data_dir_overrides_configdirectory(tmp_path: Path) -> None:
    config = write_config(tmp_path, "admins: a\nconfigdirectory: /from/file\n")
    assert parse("--config", str(config)).configdirectory == Path("/from/file")
    settings = parse("--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert settings.configdirectory == tmp_path / "d"
    assert settings.database_path == tmp_path / "d" / "mupdate.sqlite3"
    assert settings.credentials_path == tmp_path / "d" / "credentials"
    assert parse("-d", "rel").configdirectory == Path("rel")


def test_data_dir_does_not_move_explicit_paths(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "admins: a\nmupdate_database: /db/m.sqlite3\nmupdate_credentials: /etc/creds\n",
    )
    settings = parse("--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert settings.database_path == Path("/db/m.sqlite3")
    assert settings.credentials_path == Path("/etc/creds")


def test_bad_config_line_is_a_usage_error_with_file_and_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "admins: a\nthis is not a setting\n")
    assert usage_error("--config", str(config)) == (
        f"{config}:2: expected 'key: value', got 'this is not a setting'"
    )


def test_bad_config_value_is_a_usage_error_with_file_line_and_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "admins: a\n# c\nfailedloginpause: soon\n")
    assert usage_error("--config", str(config)) == (
        f"{config}:3: failedloginpause: expected a duration like 30, 30s, 5m, 3h, 1d; got 'soon'"
    )


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "absent.conf"
    assert usage_error("--config", str(config)) == (
        f"{config}: cannot read config file: No such file or directory"
    )


def test_config_without_admins_is_a_usage_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "servername: m\n")
    assert usage_error("--config", str(config)) == (
        "admins is empty: nobody could log in (set 'admins: USER ...')"
    )


def test_unified_master_is_a_usage_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "admins: a\nmupdate_server: m.example\nmupdate_config: unified\n"
    )
    assert usage_error("--config", str(config)) == (
        f"{config}:3: mupdate_config: cannot run the mupdate master on a unified server"
    )


def test_unknown_option_is_a_usage_error() -> None:
    assert usage_error("--nonsense") == "option --nonsense not recognized"


def test_build_settings_directly(tmp_path: Path) -> None:
    assert build_settings(None, str(tmp_path), ["tcp:9"]) == MasterSettings(
        servername=socket.gethostname(),
        configdirectory=tmp_path,
        admins=frozenset({"admin"}),
        listen=("tcp:9",),
    )
    config = write_config(tmp_path, "admins:\n")
    with pytest.raises(SettingsError) as info:
        build_settings(str(config), None, [])
    assert str(info.value) == "admins is empty: nobody could log in (set 'admins: USER ...')"


# --- the first-start credential ----------------------------------------------------------

SHOWN = re.compile(
    r"\Amupdate-master: generated admin credential \(shown once, stored hashed in (?P<path>.+)\):\n"
    r"  user: admin\n  password: (?P<password>[A-Za-z0-9_-]{24})\n\Z"
)


def test_default_credential_is_written_once_and_shown_once(tmp_path: Path) -> None:
    settings = build_settings(None, str(tmp_path / "data"), [])
    out = io.StringIO()
    ensure_default_credential(settings, out)
    path = tmp_path / "data" / "credentials"
    match = SHOWN.match(out.getvalue())
    assert match is not None, out.getvalue()
    assert match["path"] == str(path)
    password = match["password"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="utf-8")
    assert password not in text
    creds = CredentialsFile(path)
    assert creds.users() == ["admin"]
    assert creds.verify("admin", password.encode()) is True
    assert creds.verify("admin", b"not-it") is False

    again = io.StringIO()
    ensure_default_credential(settings, again)
    assert again.getvalue() == ""
    assert path.read_text(encoding="utf-8") == text


def test_existing_credentials_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": hash_password("a", iterations=1000)})
    before = path.read_bytes()
    settings = build_settings(None, str(tmp_path), [])
    out = io.StringIO()
    ensure_default_credential(settings, out)
    assert out.getvalue() == ""
    assert path.read_bytes() == before


def test_default_credential_honours_mupdate_credentials(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "creds"
    settings = MasterSettings(servername="m", configdirectory=tmp_path / "data", credentials=target)
    out = io.StringIO()
    ensure_default_credential(settings, out)
    match = SHOWN.match(out.getvalue())
    assert match is not None
    assert match["path"] == str(target)
    assert CredentialsFile(target).users() == ["admin"]
    assert not (tmp_path / "data").exists()


def test_each_first_start_gets_its_own_password(tmp_path: Path) -> None:
    passwords = []
    for name in ("one", "two"):
        out = io.StringIO()
        ensure_default_credential(build_settings(None, str(tmp_path / name), []), out)
        match = SHOWN.match(out.getvalue())
        assert match is not None
        passwords.append(match["password"])
    assert passwords[0] != passwords[1]

"""The slave's store and kick socket keys: ``mupdate_slave_store``, ``mupdate_cyrus_*``,
``mupdate_kick_socket`` (design.md "Slave", protocol doc §9.6, §9.7)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from mupdate.config import SettingsError, parse_imapd_conf, slave_settings
from mupdate.config.cyrus_store_settings import (
    DEFAULT_DBTOOL,
    CyrusStoreSettings,
)

BASE = "mupdate_server: m1.test:3905\nmupdate_authname: admin\nmupdate_password: secret\n"


def settings_of(text: str):
    return slave_settings(
        parse_imapd_conf(BASE + text, "s.conf"),
        default_servername="host",
        default_configdirectory=Path("/data"),
    )


def error_of(text: str) -> str:
    with pytest.raises(SettingsError) as info:
        settings_of(text)
    return str(info.value)


@pytest.fixture
def cyrus_conf(tmp_path: Path) -> Path:
    """A Cyrus imapd.conf with only its configdirectory; tests append to it."""
    conf = tmp_path / "imapd.conf"
    conf.write_text(f"configdirectory: {tmp_path / 'lib'}\npartition-default: /spool\n")
    return conf


def cyrus_of(conf: Path, extra: str = "") -> str:
    return f"mupdate_slave_store: cyrus\nmupdate_cyrus_config: {conf}\n{extra}"


def test_sqlite_is_the_default_with_no_kick_socket():
    settings = settings_of("")
    assert settings.cyrus_store is None
    assert settings.kick_socket is None
    assert settings.kick_timeout == 10.0


def test_sqlite_by_name_and_an_explicit_kick_socket():
    settings = settings_of("mupdate_slave_store: SQLite\nmupdate_kick_socket: /run/k.sock\n")
    assert settings.cyrus_store is None
    assert settings.kick_socket == Path("/run/k.sock")


def test_bad_store_name_is_refused():
    assert error_of("mupdate_slave_store: lmdb\n") == (
        "s.conf:4: mupdate_slave_store: expected sqlite or cyrus, got 'lmdb'"
    )


def test_cyrus_store_reads_cyrus_own_config(tmp_path, cyrus_conf):
    settings = settings_of(cyrus_of(cyrus_conf))
    assert settings.cyrus_store == CyrusStoreSettings(
        imapd_conf=cyrus_conf,
        configdirectory=tmp_path / "lib",
        database=tmp_path / "lib" / "mailboxes.db",
        backend="twoskip",
        dbtool=DEFAULT_DBTOOL,
        user="cyrus",
        timeout=60.0,
    )
    assert settings.kick_socket == tmp_path / "lib" / "socket" / "mupdate.target"


def test_cyrus_database_backend_and_path_come_from_cyrus(tmp_path, cyrus_conf):
    with cyrus_conf.open("a") as f:
        f.write("mboxlist_db: skiplist\nmboxlist_db_path: /var/db/mboxes.db\n")
    store = settings_of(cyrus_of(cyrus_conf)).cyrus_store
    assert store is not None
    assert store.backend == "skiplist"
    assert store.database == Path("/var/db/mboxes.db")
    assert store.configdirectory == tmp_path / "lib"


def test_cyrus_store_own_keys(cyrus_conf):
    settings = settings_of(
        cyrus_of(
            cyrus_conf,
            "mupdate_cyrus_dbtool: /opt/cyrus/cyr_dbtool\nmupdate_cyrus_user: imap\n"
            "mupdate_cyrus_timeout: 2m\nmupdate_kick_timeout: 3\n",
        )
    )
    store = settings.cyrus_store
    assert store is not None
    assert (store.dbtool, store.user, store.timeout) == (
        Path("/opt/cyrus/cyr_dbtool"),
        "imap",
        120.0,
    )
    assert settings.kick_timeout == 3.0


def test_cyrus_timeout_must_be_positive(cyrus_conf):
    assert error_of(cyrus_of(cyrus_conf, "mupdate_cyrus_timeout: 0\n")) == (
        "s.conf:6: mupdate_cyrus_timeout: must be above 0"
    )


@pytest.mark.parametrize("off", ["off", "OFF", "no", "none", ""])
def test_kick_socket_off(cyrus_conf, off):
    settings = settings_of(cyrus_of(cyrus_conf, f"mupdate_kick_socket: {off}\n"))
    assert settings.cyrus_store is not None
    assert settings.kick_socket is None


def test_kick_socket_elsewhere(cyrus_conf):
    settings = settings_of(cyrus_of(cyrus_conf, "mupdate_kick_socket: /run/cyrus/kick\n"))
    assert settings.kick_socket == Path("/run/cyrus/kick")


def test_reverseacls_is_refused_with_the_reason(cyrus_conf):
    with cyrus_conf.open("a") as f:
        f.write("reverseacls: yes\n")
    assert error_of(cyrus_of(cyrus_conf)) == (
        f"{cyrus_conf}:3: reverseacls: reverseacls is on; this slave does not keep "
        "Cyrus's $RACL records, so it cannot write this mailboxes.db"
    )


def test_reverseacls_off_is_fine(cyrus_conf):
    with cyrus_conf.open("a") as f:
        f.write("reverseacls: false\n")
    assert settings_of(cyrus_of(cyrus_conf)).cyrus_store is not None


def test_missing_cyrus_config_is_named(tmp_path):
    missing = tmp_path / "nope.conf"
    message = error_of(cyrus_of(missing))
    assert message.startswith(f"mupdate_cyrus_config: cannot read Cyrus's {missing}: ")


def test_cyrus_config_without_configdirectory_is_refused(tmp_path):
    conf = tmp_path / "imapd.conf"
    conf.write_text("partition-default: /spool\n")
    assert error_of(cyrus_of(conf)) == (
        f"{conf}: configdirectory is not set: where is mailboxes.db?"
    )


def test_run_as_the_cyrus_user(tmp_path):
    store = CyrusStoreSettings(tmp_path / "c", tmp_path, tmp_path / "m.db")
    if os.geteuid() != 0:
        assert store.run_as() is None
        return
    cyrus = pwd.getpwnam("cyrus")
    assert store.run_as() == (cyrus.pw_uid, cyrus.pw_gid)
    nobody = CyrusStoreSettings(tmp_path / "c", tmp_path, tmp_path / "m.db", user="no-such-u")
    with pytest.raises(SettingsError, match="no such user 'no-such-u'"):
        nobody.run_as()

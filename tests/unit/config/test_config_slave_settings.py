"""SlaveSettings from imapd.conf records: the master link, retry, guard and brake keys (§9, §13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mupdate.config import SettingsError, parse_imapd_conf, slave_settings

ETC = Path(__file__).resolve().parents[3] / "etc"
BASE = "mupdate_server: m1.test:3905\nmupdate_authname: admin\nmupdate_password: secret\n"


def settings_of(text: str, **overrides: object):
    return slave_settings(
        parse_imapd_conf(text, "s.conf"),
        default_servername="host",
        default_configdirectory=Path("/data"),
        overrides=overrides,
    )


def error_of(text: str) -> str:
    with pytest.raises(SettingsError) as info:
        settings_of(text)
    return str(info.value)


@pytest.mark.parametrize("sample", ["mupdate-slave-frontend.conf", "mupdate-slave-unified.conf"])
def test_sample_configs_load(sample):
    settings = slave_settings(
        parse_imapd_conf((ETC / sample).read_text(), sample),
        default_servername="host",
        default_configdirectory=Path("/data"),
    )
    assert settings.master_address == ("mupdate.example.test", 3905)
    assert settings.authname == "admin"
    assert settings.retry_delay == 20.0
    assert settings.brake_share == 0.5
    assert settings.brake_minimum == 10
    assert settings.brake_release is False


def test_unified_sample_declares_what_is_local():
    settings = slave_settings(
        parse_imapd_conf((ETC / "mupdate-slave-unified.conf").read_text(), "u.conf"),
        default_servername="host",
        default_configdirectory=Path("/data"),
    )
    assert settings.unified
    assert settings.healing
    assert settings.own_servernames == frozenset({"be1.example.test", "be1-replica.example.test"})
    assert settings.partitions == (("default", Path("/var/spool/cyrus/mail")),)


@pytest.mark.parametrize(
    ("server", "port_key", "expected"),
    [
        ("m1.test", "", ("m1.test", 3905)),
        ("m1.test", "mupdate_port: 4000\n", ("m1.test", 4000)),
        ("m1.test:17390", "mupdate_port: 4000\n", ("m1.test", 17390)),
        ("127.0.0.1:17390/tls", "", ("127.0.0.1", 17390)),
        ("[::1]:17390", "", ("::1", 17390)),
        ("[::1]", "", ("::1", 3905)),
    ],
)
def test_master_address_forms(server, port_key, expected):
    text = f"mupdate_server: {server}\n{port_key}mupdate_authname: admin\n"
    assert settings_of(text).master_address == expected


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("1", 1.0), ("2", 2.0), ("1m", 60.0)])
def test_any_retry_delay_from_zero_is_accepted(value, seconds):
    assert (
        settings_of(BASE + f"mupdate_retry_delay: {value}\nmupdate_retry_max: 2m\n").retry_delay
        == seconds
    )


def test_required_keys_are_named():
    assert "mupdate_server is required" in error_of("mupdate_authname: admin\n")
    assert "mupdate_authname is required" in error_of("mupdate_server: m1\n")


def test_slave_refuses_replicated_mode_and_bad_shares():
    assert error_of(BASE + "mupdate_config: replicated\n") == (
        "s.conf:4: mupdate_config: a slave runs in standard or unified mode"
    )
    assert error_of(BASE + "mupdate_brake_share: 0\n").startswith(
        "s.conf:4: mupdate_brake_share: must be above 0"
    )
    assert settings_of(BASE + "mupdate_brake_share: 25%\n").brake_share == 0.25


def test_retry_max_below_delay_is_refused():
    assert error_of(BASE + "mupdate_retry_delay: 30\nmupdate_retry_max: 10\n") == (
        "mupdate_retry_max must not be below mupdate_retry_delay"
    )


def test_password_file_is_read_and_never_required_inline(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    text = f"mupdate_server: m1\nmupdate_authname: admin\nmupdate_password_file: {secret}\n"
    assert settings_of(text).password == "from-file"
    missing = (
        f"mupdate_server: m1\nmupdate_authname: admin\nmupdate_password_file: {tmp_path / 'none'}\n"
    )
    assert error_of(missing).startswith("s.conf:3: mupdate_password_file: cannot read a password")


def test_heal_defaults_follow_the_mode_and_can_be_switched():
    assert not settings_of(BASE).healing
    assert settings_of(BASE + "mupdate_config: unified\n").healing
    assert not settings_of(BASE + "mupdate_config: unified\nmupdate_heal: no\n").healing


def test_own_servernames_are_case_folded():
    settings = settings_of(BASE + "servername: BE1.Test\nmupdate_local_servernames: Alias.Test\n")
    assert settings.own_servernames == frozenset({"be1.test", "alias.test"})


def test_spool_hashing_keys_are_cyrus_booleans():
    assert (settings_of(BASE).hashimapspool, settings_of(BASE).fulldirhash) == (False, False)
    both = settings_of(BASE + "hashimapspool: true\nfulldirhash: 1\n")
    assert (both.hashimapspool, both.fulldirhash) == (True, True)
    assert "hashimapspool" in error_of(BASE + "hashimapspool: maybe\n")


def test_metapartition_keys_are_read_as_cyrus_names_them():
    settings = settings_of(
        BASE + "partition-default: /spool/a\npartition-b: /spool/b\n"
        "metapartition-default: /meta/a\nmetapartition_files: header  index\n"
        "metadir-header-b: /fast/b\n"
    )
    assert settings.partitions == (("b", Path("/spool/b")), ("default", Path("/spool/a")))
    assert settings.metapartitions == (("default", Path("/meta/a")),)
    assert settings.metapartition_files == frozenset({"header", "index"})
    assert settings.header_metadirs == (("b", Path("/fast/b")),)
    unset = settings_of(BASE + "partition-default: /spool/a\nmetapartition_files:\n")
    assert (unset.metapartitions, unset.metapartition_files, unset.header_metadirs) == (
        (),
        frozenset(),
        (),
    )


def test_unknown_metapartition_file_is_refused_as_cyrus_does():
    assert error_of(BASE + "metapartition_files: header Index\n") == (
        "s.conf:4: metapartition_files: unknown metadata file Index (Cyrus knows "
        "annotations archivecache cache dav expunge header index lock squat)"
    )


def test_realm_is_read_as_given():
    # Kept for the same imapd.conf as Cyrus; the slave warns at start that it has no effect.
    assert settings_of(BASE + "mupdate_realm: EXAMPLE.TEST\n").realm == "EXAMPLE.TEST"
    assert settings_of(BASE).realm == ""

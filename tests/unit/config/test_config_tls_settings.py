"""TLS keys of the master and slave settings: defaults, conversion, file:line errors (§13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mupdate.config import SettingsError, master_settings, parse_imapd_conf, slave_settings
from mupdate.config.tls_settings import DEFAULT_TLS_VERSIONS, ClientTls, ServerTls

SLAVE = "mupdate_server: m1.test\nmupdate_authname: admin\n"


def master_of(text: str):
    return master_settings(
        parse_imapd_conf(text, "m.conf"), default_servername="h", default_configdirectory=Path("/d")
    )


def slave_of(text: str):
    return slave_settings(
        parse_imapd_conf(SLAVE + text, "s.conf"),
        default_servername="h",
        default_configdirectory=Path("/d"),
    )


def error_of(make, text: str) -> str:
    with pytest.raises(SettingsError) as info:
        make(text)
    return str(info.value)


def test_defaults_are_no_tls_and_tls12_minimum():
    assert master_of("").tls == ServerTls()
    assert not ServerTls().enabled
    assert DEFAULT_TLS_VERSIONS == ("tls1_2", "tls1_3")
    assert slave_of("").client_tls == ClientTls()
    assert ClientTls().starttls == "auto"
    assert ClientTls().verify


def test_server_keys_are_read():
    tls = master_of(
        "tls_server_cert: /c.pem\ntls_server_key: /c.key\ntls_client_ca_file: /ca.pem\n"
        "tls_client_certs: REQUIRE\ntls_versions: tls1_3 tls1_2\ntls_ciphers: HIGH\n"
        "mupdate_tls_listen: tcp:3906 ssl:3907\nmupdate_tls_required: yes\n"
        "mupdate_external_map: be1=admin be2=admin\n"
    ).tls
    assert tls.enabled
    assert tls.verifies_clients
    assert tls.client_certs == "require"
    assert tls.versions == ("tls1_2", "tls1_3")
    assert tls.listen == ("tcp:3906", "ssl:3907")
    assert tls.required
    assert tls.external_user("be1") == "admin"
    assert tls.external_user("other") == "other"


def test_disabled_certificate_is_unset_as_in_cyrus():
    assert not master_of("tls_server_cert: disabled\ntls_server_key: disabled\n").tls.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_cert: /c.pem\n", "m.conf:1: tls_server_cert: needs tls_server_key as well"),
        ("tls_versions: ssl3\n", "m.conf:1: tls_versions: expected TLS versions from"),
        ("tls_client_certs: maybe\n", "m.conf:1: tls_client_certs: expected one of require"),
        ("mupdate_tls_required: yes\n", "m.conf:1: mupdate_tls_required: TLS cannot be required"),
        ("mupdate_tls_listen: tcp:3906\n", "m.conf:1: mupdate_tls_listen: implicit TLS needs"),
        ("mupdate_external_map: be1\n", "m.conf:1: mupdate_external_map: expected CN=USER"),
        ("mupdate_tls_required: sometimes\n", "m.conf:1: mupdate_tls_required: expected yes or no"),
    ],
)
def test_server_errors_name_file_line_and_key(text, message):
    assert error_of(master_of, text).startswith(message)


def test_client_keys_are_read():
    tls = slave_of(
        "mupdate_starttls: required\nmupdate_tls_verify: no\ntls_server_ca_file: /ca.pem\n"
        "tls_client_cert: /me.pem\ntls_client_key: /me.key\nallowplaintext: yes\n"
        "mupdate_loopback_plaintext: no\n"
    ).client_tls
    assert tls.starttls == "required"
    assert tls.tls_required
    assert not tls.verify
    assert tls.ca_file == Path("/ca.pem")
    assert tls.cert == Path("/me.pem")
    assert tls.allow_plaintext
    assert not tls.loopback_plaintext


def test_tls_suffix_of_mupdate_server_means_implicit_tls():
    settings = slave_settings(
        parse_imapd_conf("mupdate_server: m1.test:3906/tls\nmupdate_authname: a\n", "s.conf"),
        default_servername="h",
        default_configdirectory=Path("/d"),
    )
    assert settings.client_tls.implicit
    assert settings.master_address == ("m1.test", 3906)


def test_client_errors_name_file_line_and_key():
    assert error_of(slave_of, "mupdate_starttls: maybe\n").startswith(
        "s.conf:3: mupdate_starttls: expected one of auto, required, off"
    )
    assert error_of(slave_of, "tls_client_key: /k\n").startswith(
        "s.conf:3: tls_client_key: needs tls_client_cert as well"
    )

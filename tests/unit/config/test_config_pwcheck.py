"""sasl_pwcheck_method, sasl_saslauthd_path, mupdate_saslauthd_timeout (Cyrus/libsasl names
where they exist; design: PLAIN and LOGIN through saslauthd, SCRAM from the file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mupdate.config import SettingsError, parse_imapd_conf
from mupdate.config.settings import DEFAULT_SASLAUTHD_PATH, master_settings, slave_settings


def master(text: str):
    return master_settings(
        parse_imapd_conf(text, "m.conf"), default_servername="m", default_configdirectory=Path("d")
    )


def test_defaults_check_passwords_against_the_credentials_file_only() -> None:
    settings = master("")
    assert settings.pwcheck == ("auxprop",)
    assert settings.saslauthd_path == DEFAULT_SASLAUTHD_PATH == Path("/var/run/saslauthd/mux")
    assert settings.saslauthd_timeout == 10.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("saslauthd", ("saslauthd",)),
        ("auxprop saslauthd", ("auxprop", "saslauthd")),
        ("SASLAUTHD  auxprop", ("saslauthd", "auxprop")),  # the order is the operator's
        ("saslauthd saslauthd", ("saslauthd",)),
    ],
)
def test_pwcheck_methods_keep_their_order(value: str, expected: tuple[str, ...]) -> None:
    assert master(f"sasl_pwcheck_method: {value}\n").pwcheck == expected


@pytest.mark.parametrize("value", ["pwcheck", "auxprop alwaystrue", ""])
def test_a_pwcheck_method_we_cannot_run_is_refused(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        master(f"servername: m\nsasl_pwcheck_method: {value}\n")
    assert str(info.value).startswith("m.conf:2: sasl_pwcheck_method: expected auxprop and/or")


def test_saslauthd_path_and_timeout() -> None:
    settings = master(
        "sasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: /run/sasl/mux\n"
        "mupdate_saslauthd_timeout: 2m\n"
    )
    assert settings.saslauthd_path == Path("/run/sasl/mux")
    assert settings.saslauthd_timeout == 120.0


def test_a_zero_saslauthd_timeout_is_refused() -> None:
    with pytest.raises(SettingsError) as info:
        master("mupdate_saslauthd_timeout: 0\n")
    assert str(info.value) == "m.conf:1: mupdate_saslauthd_timeout: must be above 0"


def test_a_slave_reads_the_same_keys_for_its_readers() -> None:
    text = "mupdate_server: m:3905\nmupdate_authname: fe1\nsasl_pwcheck_method: saslauthd\n"
    settings = slave_settings(
        parse_imapd_conf(text, "s.conf"), default_servername="s", default_configdirectory=Path("d")
    )
    assert settings.pwcheck == ("saslauthd",)

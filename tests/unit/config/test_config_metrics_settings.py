"""``mupdate_metrics_listen``: the HTTP /metrics, /status, /health endpoints (issue 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mupdate.config.imapdconf import parse_imapd_conf
from mupdate.config.settings import SettingsError, master_settings, slave_settings

SLAVE = "mupdate_server: m:3905\nmupdate_authname: a\n"


def master(text: str):
    return master_settings(
        parse_imapd_conf(text, "m.conf"),
        default_servername="h",
        default_configdirectory=Path("d"),
    )


def test_default_is_no_http_listener():
    assert master("").metrics_listen == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tcp:9105:interface=127.0.0.1", ("tcp:9105:interface=127.0.0.1",)),
        ("tcp:9105 unix:/run/m.sock", ("tcp:9105", "unix:/run/m.sock")),
        ("none", ()),
        ("NONE", ()),
        ("", ()),
    ],
)
def test_endpoints_are_read(value, expected):
    assert master(f"mupdate_metrics_listen: {value}\n").metrics_listen == expected


@pytest.mark.parametrize("value", ["9105", "tcp", ":9105", "localhost 9105", "tcp:"])
def test_a_word_that_is_not_an_endpoint_names_file_line_and_key(value):
    with pytest.raises(SettingsError) as info:
        master(f"admins: a\nmupdate_metrics_listen: {value}\n")
    assert str(info.value).startswith(
        "m.conf:2: mupdate_metrics_listen: expected Twisted endpoints like "
        "tcp:9105:interface=127.0.0.1, got "
    )


def test_the_mupdate_port_cannot_serve_http_too():
    with pytest.raises(SettingsError) as info:
        master("mupdate_listen: tcp:3905\nmupdate_metrics_listen: tcp:3905\n")
    assert str(info.value) == "m.conf:2: mupdate_metrics_listen: tcp:3905 is also in mupdate_listen"


def test_an_endpoint_given_twice_is_refused():
    with pytest.raises(SettingsError) as info:
        master("mupdate_metrics_listen: tcp:9 tcp:9\n")
    assert str(info.value) == "m.conf:1: mupdate_metrics_listen: an endpoint is given twice"


def test_a_slave_reads_it_too():
    settings = slave_settings(
        parse_imapd_conf(SLAVE + "mupdate_metrics_listen: tcp:9106\n", "s.conf"),
        default_servername="h",
        default_configdirectory=Path("d"),
    )
    assert settings.metrics_listen == ("tcp:9106",)


@pytest.mark.parametrize(
    "sample", ["mupdate-master.conf", "mupdate-slave-frontend.conf", "mupdate-slave-unified.conf"]
)
def test_each_sample_documents_the_key_and_its_default(sample):
    text = (Path(__file__).resolve().parents[3] / "etc" / sample).read_text(encoding="utf-8")
    assert "# mupdate_metrics_listen: tcp:" in text
    assert "Default: none" in text

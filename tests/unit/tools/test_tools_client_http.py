"""``mupdate-client status --status-url``: URL forms and how a /status document is shown."""

from __future__ import annotations

import json

import pytest

from mupdate.tools.client_http import status_json, status_text, status_url
from mupdate.tools.connect import EXIT_USAGE, ToolError


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("127.0.0.1:9105", "http://127.0.0.1:9105/status"),
        ("http://h:9105", "http://h:9105/status"),
        ("http://h:9105/", "http://h:9105/status"),
        ("https://h/mupdate/status", "https://h/mupdate/status"),
        ("[::1]:9105", "http://[::1]:9105/status"),
    ],
)
def test_status_url_forms(typed, url):
    assert status_url(typed) == url


@pytest.mark.parametrize("typed", ["ftp://h/status", "http://", ""])
def test_a_bad_status_url_is_a_usage_error(typed):
    with pytest.raises(ToolError) as info:
        status_url(typed)
    assert info.value.code == EXIT_USAGE


RECORD = {
    "role": "slave",
    "uptime_seconds": 12.5,
    "sync": {"state": "synced", "last_sync": None},
    "brake": {"held": None, "holds": 0},
    "heal": None,
}


def test_status_text_flattens_nested_keys_and_aligns():
    assert status_text(RECORD) == [
        "role:           slave",
        "uptime_seconds: 12.5",
        "sync.state:     synced",
        "sync.last_sync: -",
        "brake.held:     -",
        "brake.holds:    0",
        "heal:           -",
    ]


def test_status_json_is_one_line_with_its_kind():
    line = status_json(RECORD)
    assert "\n" not in line
    assert json.loads(line) == {"kind": "status", **RECORD}

"""imapd.conf records: ``key: value`` lines with their file and line (style.md §8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mupdate.config.imapdconf import (
    ConfigFileError,
    ConfigRecord,
    parse_imapd_conf,
    read_imapd_conf,
)


def test_records_keep_source_and_line_numbers() -> None:
    text = "# comment\n\nservername: m.example\n   # indented comment\nadmins: a b\n"
    assert parse_imapd_conf(text, "x.conf") == [
        ConfigRecord("servername", "m.example", "x.conf", 3),
        ConfigRecord("admins", "a b", "x.conf", 5),
    ]


def test_default_source_name() -> None:
    assert parse_imapd_conf("a: b") == [ConfigRecord("a", "b", "<string>", 1)]


def test_key_is_lower_cased_and_value_kept_as_written() -> None:
    assert parse_imapd_conf("ServerName:  Mixed.Case  ") == [
        ConfigRecord("servername", "Mixed.Case", "<string>", 1)
    ]


def test_value_may_hold_colons() -> None:
    records = parse_imapd_conf("mupdate_listen: tcp:3905:interface=127.0.0.1")
    assert records == [
        ConfigRecord("mupdate_listen", "tcp:3905:interface=127.0.0.1", "<string>", 1)
    ]


def test_no_space_after_colon_and_dashed_keys() -> None:
    assert parse_imapd_conf("partition-default:/var/spool") == [
        ConfigRecord("partition-default", "/var/spool", "<string>", 1)
    ]


def test_empty_value_is_a_record() -> None:
    assert parse_imapd_conf("admins:") == [ConfigRecord("admins", "", "<string>", 1)]


def test_crlf_line_endings() -> None:
    assert parse_imapd_conf("a: 1\r\nb: 2\r\n", "w.conf") == [
        ConfigRecord("a", "1", "w.conf", 1),
        ConfigRecord("b", "2", "w.conf", 2),
    ]


def test_repeated_keys_are_all_returned_in_order() -> None:
    assert parse_imapd_conf("a: 1\na: 2") == [
        ConfigRecord("a", "1", "<string>", 1),
        ConfigRecord("a", "2", "<string>", 2),
    ]


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("no colon here", "'no colon here'"),
        (": value", "': value'"),
        ("two words: value", "'two words: value'"),
        ("  tab\tkey: v", "'  tab\\tkey: v'"),
    ],
)
def test_malformed_line_names_file_and_line(line: str, shown: str) -> None:
    text = f"# ok\nservername: a\n{line}\n"
    with pytest.raises(ConfigFileError) as info:
        parse_imapd_conf(text, "/etc/imapd.conf")
    assert str(info.value) == f"/etc/imapd.conf:3: expected 'key: value', got {shown}"


def test_config_file_error_is_a_value_error() -> None:
    assert issubclass(ConfigFileError, ValueError)


def test_read_file_uses_the_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "imapd.conf"
    path.write_text("servername: m\n\nadmins: admin\n", encoding="utf-8")
    assert read_imapd_conf(path) == [
        ConfigRecord("servername", "m", str(path), 1),
        ConfigRecord("admins", "admin", str(path), 3),
    ]
    assert read_imapd_conf(str(path)) == read_imapd_conf(path)


def test_read_file_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "imapd.conf"
    path.write_text("servername: m\nbroken\n", encoding="utf-8")
    with pytest.raises(ConfigFileError) as info:
        read_imapd_conf(path)
    assert str(info.value) == f"{path}:2: expected 'key: value', got 'broken'"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.conf"
    with pytest.raises(ConfigFileError) as info:
        read_imapd_conf(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as info:
        read_imapd_conf(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read config file: Is a directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"servername: caf\xe9\n")
    with pytest.raises(ConfigFileError) as info:
        read_imapd_conf(path)
    assert str(info.value).startswith(f"{path}: not UTF-8 text: ")
    assert "0xe9" in str(info.value)

"""``mupdate-admin export|import|verify`` on a real SqliteStore, with the directory lock."""

from __future__ import annotations

import io
import json
import re
import sqlite3
from pathlib import Path

import pytest

from mupdate.db.lock import DirectoryLock
from mupdate.db.sqlite import SqliteStore
from mupdate.model import EntryState, MailboxEntry
from mupdate.tools.admin import main

ENTRIES = [
    MailboxEntry(b"user.alice", EntryState.ACTIVE, b"be1!default", b"alice\tlrswipkxtecdan\t"),
    MailboxEntry(b"user.bob", EntryState.RESERVED, b"be2!p"),
    MailboxEntry(b"user.\xe9t\xe9", EntryState.ACTIVE, b"be1!\xff", b"anyone\tlrs\t"),
]


def by_name(entries: list[MailboxEntry]) -> list[MailboxEntry]:
    return sorted(entries, key=lambda e: e.name)


def make_store(directory: Path, entries: list[MailboxEntry]) -> Path:
    path = directory / "mupdate.sqlite3"
    store = SqliteStore(path)
    try:
        store.replace_all(entries)
    finally:
        store.close()
    return path


def entries_at(path: Path) -> list[MailboxEntry]:
    store = SqliteStore(path)
    try:
        return by_name(store.load_entries())
    finally:
        store.close()


def admin(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_export_import_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    make_store(source, ENTRIES)
    code, document = admin("--data-dir", str(source), "export")
    assert code == 0
    assert capsys.readouterr().err == "mupdate-admin: exported 3 entries\n"
    parsed = json.loads(document)
    assert (parsed["format"], parsed["version"]) == ("mupdate-export", 1)
    assert len(parsed["entries"]) == 3

    assert admin("--data-dir", str(target), "import", stdin=document) == (0, "")
    database = target / "mupdate.sqlite3"
    assert capsys.readouterr().err == f"mupdate-admin: imported 3 entries into {database}\n"
    assert entries_at(database) == by_name(ENTRIES)
    # The lock was released: a second import goes through.
    assert admin("--data-dir", str(target), "import", stdin=document) == (0, "")


def test_import_replaces_the_whole_list(tmp_path: Path) -> None:
    database = make_store(
        tmp_path, [MailboxEntry(b"user.old", EntryState.ACTIVE, b"be9!p", b"x\tl\t")]
    )
    document = (
        '{"format": "mupdate-export", "version": 1, "entries": [\n'
        '{"name": "user.new", "state": "reserved", "location": "be1!p", "acl": ""}\n]}\n'
    )
    assert admin("--data-dir", str(tmp_path), "import", stdin=document) == (0, "")
    assert entries_at(database) == [MailboxEntry(b"user.new", EntryState.RESERVED, b"be1!p")]


def test_import_of_an_empty_list_empties_the_store(tmp_path: Path) -> None:
    database = make_store(tmp_path, ENTRIES)
    document = '{"format": "mupdate-export", "version": 1, "entries": []}'
    assert admin("--data-dir", str(tmp_path), "import", stdin=document) == (0, "")
    assert entries_at(database) == []


def test_import_into_a_locked_directory_without_a_control_socket_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = make_store(tmp_path, ENTRIES)
    document = '{"format": "mupdate-export", "version": 1, "entries": []}'
    lock = DirectoryLock(tmp_path)
    lock.acquire()
    try:
        assert admin("--data-dir", str(tmp_path), "import", stdin=document) == (1, "")
    finally:
        lock.release()
    # The lock says a master runs; without its control socket nothing can be imported.
    assert capsys.readouterr().err == (
        "mupdate-admin: the master runs but its control socket failed: [Errno 2] No such file or directory\n"
    )
    assert entries_at(database) == by_name(ENTRIES)


def test_export_is_allowed_while_the_directory_is_locked(tmp_path: Path) -> None:
    make_store(tmp_path, ENTRIES)
    lock = DirectoryLock(tmp_path)
    lock.acquire()
    try:
        code, document = admin("--data-dir", str(tmp_path), "export")
    finally:
        lock.release()
    assert code == 0
    assert len(json.loads(document)["entries"]) == 3


def test_bad_import_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = make_store(tmp_path, ENTRIES)
    document = '{"format": "mupdate-export", "version": 2, "entries": []}'
    assert admin("--data-dir", str(tmp_path), "import", stdin=document) == (1, "")
    assert capsys.readouterr().err == (
        "mupdate-admin: import refused, nothing changed: version: expected 1, got 2\n"
    )
    assert entries_at(database) == by_name(ENTRIES)


def test_lock_is_released_after_a_refused_import(tmp_path: Path) -> None:
    make_store(tmp_path, ENTRIES)
    assert admin("--data-dir", str(tmp_path), "import", stdin="not json") == (1, "")
    lock = DirectoryLock(tmp_path)
    lock.acquire()
    lock.release()


def test_export_and_verify_without_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for action in ("export", "verify"):
        assert admin("--data-dir", str(tmp_path), action) == (1, "")
        assert capsys.readouterr().err == (
            f"mupdate-admin: no database at {tmp_path / 'mupdate.sqlite3'}\n"
        )
    assert list(tmp_path.iterdir()) == []


def test_verify_a_sound_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = make_store(tmp_path, ENTRIES)
    assert admin("--data-dir", str(tmp_path), "verify") == (0, "")
    assert capsys.readouterr().err == f"mupdate-admin: 0 problem(s) in {database}\n"


def test_verify_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = make_store(tmp_path, ENTRIES)
    db = sqlite3.connect(database)
    try:
        db.execute(
            "INSERT INTO tombstones (name, location, deleted_at) VALUES (?, ?, ?)",
            (b"user.alice", b"be1!default", 1.0),
        )
        db.commit()
    finally:
        db.close()
    assert admin("--data-dir", str(tmp_path), "verify") == (
        1,
        "tombstone for a mailbox that exists: b'user.alice'\n",
    )
    assert capsys.readouterr().err == f"mupdate-admin: 1 problem(s) in {database}\n"


def test_config_file_names_the_database(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "m.sqlite3"
    database.parent.mkdir()
    SqliteStore(database).close()
    config = tmp_path / "imapd.conf"
    config.write_text(
        f"servername: m\nadmins: admin\nconfigdirectory: {tmp_path / 'cfg'}\n"
        f"mupdate_database: {database}\n",
        encoding="utf-8",
    )
    document = (
        '{"format": "mupdate-export", "version": 1, "entries": [\n'
        '{"name": "user.x", "state": "active", "location": "b!p", "acl": ""}\n]}\n'
    )
    assert admin("--config", str(config), "import", stdin=document) == (0, "")
    assert entries_at(database) == [MailboxEntry(b"user.x", EntryState.ACTIVE, b"b!p")]
    # The lock lives in configdirectory, which the import creates.
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == ["mupdate.lock"]
    code, text = admin("--config", str(config), "export")
    assert code == 0
    assert json.loads(text)["entries"] == [
        {"name": "user.x", "state": "active", "location": "b!p", "acl": ""}
    ]


def test_bad_config_is_an_error_message_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "imapd.conf"
    config.write_text(f"configdirectory: {tmp_path}\n", encoding="utf-8")
    make_store(tmp_path, ENTRIES)
    assert admin("--config", str(config), "export")[0] == 2


def test_data_dir_overrides_the_config_directory(tmp_path: Path) -> None:
    config = tmp_path / "imapd.conf"
    config.write_text(f"admins: admin\nconfigdirectory: {tmp_path / 'unused'}\n", encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()
    make_store(data, ENTRIES)
    code, text = admin("--config", str(config), "--data-dir", str(data), "export")
    assert code == 0
    assert len(json.loads(text)["entries"]) == 3
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data-dir", "x"], "the following arguments are required: ACTION"),
        (["--data-dir", "x", "bogus"], "argument ACTION: invalid choice: 'bogus'"),
        (["--data-dir", "x", "conflicts", "--jsn"], "unrecognized arguments: --jsn"),
    ],
)
def test_bad_arguments_are_one_usage_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        admin(*argv)
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"mupdate-admin: {message}"), line
    assert line.endswith("--help' for usage)"), line


@pytest.mark.parametrize("action", ["export", "verify", "conflicts", "import"])
def test_a_file_that_is_not_a_database_is_one_line_and_exit_1(
    tmp_path: Path, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "mupdate.sqlite3"
    database.write_bytes(b"not an SQLite database\n" * 100)
    document = '{"format": "mupdate-export", "version": 1, "entries": []}'
    assert admin("--data-dir", str(tmp_path), action, stdin=document) == (1, "")
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"mupdate-admin: {database}: cannot open: file is not a database"
    assert database.read_bytes() == b"not an SQLite database\n" * 100


def test_progress_on_stderr_with_progress_or_a_tty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    make_store(source, ENTRIES)
    code, document = admin(
        "--data-dir", str(source), "export", "--progress", "--progress-every", "2"
    )
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"mupdate-admin: exported 2 entries \(\d+\.\d s\)", err[0])
    assert err[1:] == ["mupdate-admin: exported 3 entries"]

    assert admin(
        "--data-dir", str(target), "import", "--progress", "--progress-every", "1", stdin=document
    ) == (0, "")
    err = [re.sub(r" \(\d+\.\d s\)$", "", line) for line in capsys.readouterr().err.splitlines()]
    assert err == [
        "mupdate-admin: checked 1 entries",
        "mupdate-admin: checked 2 entries",
        "mupdate-admin: checked 3 entries",
        "mupdate-admin: writing 3 checked entries in one transaction",
        f"mupdate-admin: imported 3 entries into {target / 'mupdate.sqlite3'}",
    ]
    # Without --progress and without a terminal: only the summary.
    assert admin("--data-dir", str(source), "export")[0] == 0
    assert capsys.readouterr().err == "mupdate-admin: exported 3 entries\n"
    assert admin("--data-dir", str(source), "export", "--progress-every", "0")[0] == 2


CONFLICTING = [
    MailboxEntry(b"user.alice", EntryState.ACTIVE, b"be1!default", b"alice\tlrs\t"),  # fine
    MailboxEntry(b"user.bob", EntryState.RESERVED, b"be2!p"),
    MailboxEntry(b"user.carol.Archive", EntryState.ACTIVE, b"be1!", b"carol\tlrs\t"),
    MailboxEntry(b"user.dave", EntryState.ACTIVE, b"be3", b"dave\tlrs\t"),
    MailboxEntry(b"user.\xe9ve", EntryState.RESERVED, b"be1!"),  # two kinds, 8-bit name
]


def test_conflicts_text_names_each_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_store(tmp_path, CONFLICTING)
    code, out = admin("--data-dir", str(tmp_path), "conflicts")
    assert code == 1
    assert out.splitlines() == [
        "reserved         user.bob            be2!p",
        "empty-partition  user.carol.Archive  be1!",
        "no-server        user.dave           be3",
        "reserved         user.\\xe9ve         be1!",
        "empty-partition  user.\\xe9ve         be1!",
    ]
    assert capsys.readouterr().err == "mupdate-admin: 5 entr(ies) need an operator\n"


def test_conflicts_json_field_by_field(tmp_path: Path) -> None:
    make_store(tmp_path, CONFLICTING)
    code, out = admin("--data-dir", str(tmp_path), "conflicts", "--json")
    assert code == 1
    assert [json.loads(line) for line in out.splitlines()] == [
        {"conflict": "reserved", "name": "user.bob", "location": "be2!p", "state": "reserved"},
        {
            "conflict": "empty-partition",
            "name": "user.carol.Archive",
            "location": "be1!",
            "state": "active",
        },
        {"conflict": "no-server", "name": "user.dave", "location": "be3", "state": "active"},
        {
            "conflict": "reserved",
            "name": {"base64": "dXNlci7pdmU="},
            "location": "be1!",
            "state": "reserved",
        },
        {
            "conflict": "empty-partition",
            "name": {"base64": "dXNlci7pdmU="},
            "location": "be1!",
            "state": "reserved",
        },
    ]


def test_no_conflicts_exits_0_with_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_store(tmp_path, [e for e in ENTRIES if e.active])
    assert admin("--data-dir", str(tmp_path), "conflicts") == (0, "")
    assert admin("--data-dir", str(tmp_path), "conflicts", "--json") == (0, "")
    assert capsys.readouterr().err == "mupdate-admin: 0 entr(ies) need an operator\n" * 2

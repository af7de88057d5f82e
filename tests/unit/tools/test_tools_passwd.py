"""``mupdate-passwd --file PATH add|del|list USER``: exit codes, files and messages."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest

from mupdate.sasl.credentials import CredentialsFile, hash_password, write_credentials
from mupdate.sasl.scram import make_keys
from mupdate.tools.passwd import main, read_password

HEADER = "# mupdate credentials: user:salted hash (written by mupdate-passwd)\n"


def run(path: Path, *args: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--file", str(path), *args], stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def users_in(path: Path) -> list[str]:
    return CredentialsFile(path).users()


def test_add_creates_a_private_file_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "credentials"
    assert run(path, "add", "alice", stdin="s3cret\n") == (0, "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="utf-8")
    assert "s3cret" not in text
    assert text.startswith(HEADER + "alice:pbkdf2-sha256$100000$")
    assert text.count("\n") == 2
    creds = CredentialsFile(path)
    assert creds.verify("alice", b"s3cret") is True
    assert creds.verify("alice", b"s3cret\n") is False
    for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        assert f":{mechanism.lower()}$4096$" in text
        keys = creds.scram_keys("alice", mechanism)
        assert keys == make_keys(mechanism, "s3cret", salt=keys.salt) if keys else False
    assert capsys.readouterr() == ("", "")
    assert run(path, "list") == (
        0,
        "alice SCRAM-SHA-512 SCRAM-SHA-256 SCRAM-SHA-1 PLAIN LOGIN\n",
    )


def test_list_shows_which_users_lack_scram_keys(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"old": hash_password("a", iterations=1000)})
    assert run(path, "add", "new", stdin="pw\n") == (0, "")
    assert run(path, "list") == (
        0,
        "new SCRAM-SHA-512 SCRAM-SHA-256 SCRAM-SHA-1 PLAIN LOGIN\nold PLAIN LOGIN\n",
    )


def test_add_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "credentials"
    assert run(path, "add", "alice", stdin="pw\n") == (0, "")
    assert users_in(path) == ["alice"]


def test_add_reads_only_the_first_line_and_strips_crlf(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    assert run(path, "add", "alice", stdin="  pass word \r\nsecond line\n") == (0, "")
    creds = CredentialsFile(path)
    assert creds.verify("alice", b"  pass word ") is True


def test_add_without_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    assert run(path, "add", "alice", stdin="pw") == (0, "")
    assert CredentialsFile(path).verify("alice", b"pw") is True


def test_add_replaces_an_existing_user_and_keeps_others(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    bob = hash_password("bob-pw", iterations=1000)
    write_credentials(path, {"alice": hash_password("old", iterations=1000), "bob": bob})
    assert run(path, "add", "alice", stdin="new\n") == (0, "")
    creds = CredentialsFile(path)
    assert creds.users() == ["alice", "bob"]
    assert creds.verify("alice", b"old") is False
    assert creds.verify("alice", b"new") is True
    assert f"bob:{bob}\n" in path.read_text(encoding="utf-8")


def test_empty_password_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    for stdin in ("\n", "", "\r\n"):
        with pytest.raises(SystemExit) as info:
            run(path, "add", "alice", stdin=stdin)
        assert info.value.code == "mupdate-passwd: empty password refused"
    assert not path.exists()


def test_read_password_from_a_pipe() -> None:
    assert read_password(io.StringIO("pw\nrest")) == "pw"


def test_list_is_sorted_names_with_their_mechanisms(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(
        path,
        {"bob": hash_password("b", iterations=1000), "alice": hash_password("a", iterations=1000)},
    )
    before = path.read_bytes()
    assert run(path, "list") == (0, "alice PLAIN LOGIN\nbob PLAIN LOGIN\n")
    assert path.read_bytes() == before


def test_list_of_a_missing_file_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    assert run(path, "list") == (0, "")
    assert not path.exists()


def test_del_removes_the_user(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    bob = hash_password("b", iterations=1000)
    write_credentials(path, {"alice": hash_password("a", iterations=1000), "bob": bob})
    assert run(path, "del", "alice") == (0, "")
    assert path.read_text(encoding="utf-8") == f"{HEADER}bob:{bob}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_del_of_an_unknown_user_fails_and_leaves_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": hash_password("a", iterations=1000)})
    before = path.read_bytes()
    assert run(path, "del", "carol") == (1, "")
    assert capsys.readouterr().err == f"mupdate-passwd: no user 'carol' in {path}\n"
    assert path.read_bytes() == before


def test_del_on_a_missing_file_fails_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "credentials"
    assert run(path, "del", "alice") == (1, "")
    assert capsys.readouterr().err == f"mupdate-passwd: no user 'alice' in {path}\n"
    assert not path.exists()


@pytest.mark.parametrize("action", ["add", "del"])
@pytest.mark.parametrize("user", ["al:ice", "", " ", " alice", "alice ", "\talice"])
def test_bad_user_names_are_refused_with_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str, user: str
) -> None:
    path = tmp_path / "credentials"
    assert run(path, action, user, stdin="pw\n") == (2, "")
    assert capsys.readouterr().err == (
        "mupdate-passwd: a user name must be printable and non-empty, without ':', "
        "surrounding blanks or a leading '#'\n"
    )
    assert not path.exists()


def test_user_name_with_a_line_break_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    assert run(path, "add", "ali\nce", stdin="pw\n")[0] == 2


def test_user_name_starting_with_a_hash_is_usable_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    code, _ = run(path, "add", "#admin", stdin="pw\n")
    assert code == 2 or users_in(path) == ["#admin"]


def test_malformed_file_is_reported_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "credentials"
    path.write_text("# c\nalice:clear-text\n", encoding="utf-8")
    for args in (("list",), ("add", "bob"), ("del", "alice")):
        assert run(path, *args, stdin="pw\n") == (1, "")
        assert capsys.readouterr().err == (
            f"mupdate-passwd: {path}:2: expected 'user:pbkdf2-sha256$...': "
            "unknown verifier 'clear-text'\n"
        )
    assert path.read_text(encoding="utf-8") == "# c\nalice:clear-text\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["list"],
        ["--file", "x"],
        ["--file", "x", "add"],
        ["--file", "x", "rename", "a"],
        ["--file", "x", "list", "extra"],
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    argv = [str(tmp_path / a) if a == "x" else a for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv, stdin=io.StringIO(""), stdout=io.StringIO())
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: mupdate-passwd")
    assert list(tmp_path.iterdir()) == []

"""The credentials file: salted PBKDF2 hashes, mode 0600, reloaded when it changes."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from mupdate.sasl.credentials import (
    DEFAULT_ITERATIONS,
    SCHEME,
    CredentialsError,
    CredentialsFile,
    check_password,
    hash_password,
    parse_credentials,
    render_credentials,
    write_credentials,
)

FAST = 1000  # PBKDF2 iterations in tests

# RFC 7914 §11: PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1); the first 32 bytes.
RFC7914_DK = bytes.fromhex("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc")


def fast(password: str) -> str:
    return hash_password(password, iterations=FAST)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- hashing -----------------------------------------------------------------------------


def test_hash_format_against_the_rfc_vector() -> None:
    encoded = hash_password("passwd", iterations=1, salt=b"salt")
    assert encoded == f"pbkdf2-sha256$1$c2FsdA==${base64.b64encode(RFC7914_DK).decode()}"
    assert check_password(b"passwd", encoded) is True


def test_hash_defaults_random_salt_and_iterations() -> None:
    first, second = hash_password("secret", iterations=FAST), fast("secret")
    assert first != second
    for encoded in (first, second):
        scheme, iterations, salt, digest = encoded.split("$")
        assert (scheme, iterations) == (SCHEME, str(FAST))
        assert len(base64.b64decode(salt)) == 16
        assert len(base64.b64decode(digest)) == 32
    assert DEFAULT_ITERATIONS == 100_000


def test_hash_never_contains_the_password() -> None:
    assert "hunter2" not in fast("hunter2")


def test_check_password_right_and_wrong() -> None:
    encoded = fast("p\u00e4ss")
    assert check_password("p\u00e4ss".encode(), encoded) is True
    assert check_password(b"pass", encoded) is False
    assert check_password(b"", encoded) is False


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-text-password",
        "md5$1$c2FsdA==$AAAA",
        "pbkdf2-sha256$x$c2FsdA==$AAAA",
        "pbkdf2-sha256$0$c2FsdA==$AAAA",
        "pbkdf2-sha256$1$not base64$AAAA",
        "pbkdf2-sha256$1$c2FsdA==",
        "pbkdf2-sha256$1$c2FsdA==$AAAA$extra",
    ],
)
def test_check_password_malformed_hash_is_false(encoded: str) -> None:
    assert check_password(b"passwd", encoded) is False


# --- file format -------------------------------------------------------------------------


def test_parse_skips_comments_and_blank_lines() -> None:
    a, b = fast("a"), fast("b")
    text = f"# header\n\nalice:{a}\n  bob:{b}  \n"
    assert parse_credentials(text, "creds") == {"alice": a, "bob": b}


@pytest.mark.parametrize(
    "line",
    [
        "alice",
        ":pbkdf2-sha256$1$c2FsdA==$AAAA",
        "alice:md5$1$c2FsdA==$AAAA",
        "alice:secret",
        "alice:",
    ],
)
def test_parse_malformed_line_names_file_and_line(line: str) -> None:
    text = f"# header\nbob:{fast('b')}\n{line}\n"
    with pytest.raises(CredentialsError) as info:
        parse_credentials(text, "/etc/mupdate/credentials")
    assert str(info.value).startswith(
        "/etc/mupdate/credentials:3: expected 'user:pbkdf2-sha256$...'"
    )


def test_render_is_sorted_with_a_header() -> None:
    assert render_credentials({"bob": "H2", "alice": "H1"}) == (
        "# mupdate credentials: user:salted hash (written by mupdate-passwd)\nalice:H1\nbob:H2\n"
    )


def test_written_file_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    users = {"alice": fast("alice-pw"), "bob": fast("bob-pw")}
    write_credentials(path, users)
    assert mode_of(path) == 0o600
    assert parse_credentials(path.read_text(encoding="utf-8"), str(path)) == users
    text = path.read_text(encoding="utf-8")
    assert "alice-pw" not in text
    assert "bob-pw" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials"]


def test_rewrite_makes_a_private_file_even_over_a_public_one(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("# old\n", encoding="utf-8")
    path.chmod(0o644)
    write_credentials(path, {"alice": fast("x")})
    assert mode_of(path) == 0o600


def test_rewrite_is_private_even_with_a_leftover_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    leftover = tmp_path / "credentials.tmp"
    leftover.write_text("", encoding="utf-8")
    leftover.chmod(0o644)
    write_credentials(path, {"alice": fast("x")})
    assert mode_of(path) == 0o600


# --- CredentialsFile ---------------------------------------------------------------------


def test_verify_right_wrong_and_unknown(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": fast("s3cret"), "bob": fast("other")})
    creds = CredentialsFile(path)
    assert creds.users() == ["alice", "bob"]
    assert creds.verify("alice", b"s3cret") is True
    assert creds.verify("alice", b"other") is False
    assert creds.verify("alice", b"s3cret ") is False
    assert creds.verify("carol", b"s3cret") is False
    assert creds.verify("Alice", b"s3cret") is False


def test_remembered_success_does_not_admit_another_password(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": fast("s3cret")})
    creds = CredentialsFile(path)
    assert creds.verify("alice", b"s3cret") is True
    assert creds.verify("alice", b"wrong") is False
    assert creds.verify("alice", b"s3cret") is True
    assert creds.verify("alice", b"s3cret!") is False


def test_missing_file_means_no_users(tmp_path: Path) -> None:
    creds = CredentialsFile(tmp_path / "absent")
    assert creds.users() == []
    assert creds.verify("admin", b"anything") is False


def test_reload_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": fast("old")})
    creds = CredentialsFile(path)
    assert creds.verify("alice", b"old") is True
    # New password and a new user: the file's size changes, so no timing is involved.
    write_credentials(path, {"alice": fast("new"), "bob": fast("bob-pw")})
    assert creds.users() == ["alice", "bob"]
    assert creds.verify("alice", b"old") is False
    assert creds.verify("alice", b"new") is True
    assert creds.verify("bob", b"bob-pw") is True


def test_reload_same_size_when_the_mtime_changes(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": fast("old")})
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    creds = CredentialsFile(path)
    assert creds.verify("alice", b"old") is True
    size = path.stat().st_size
    write_credentials(path, {"alice": fast("new")})
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert path.stat().st_size == size
    assert creds.verify("alice", b"old") is False
    assert creds.verify("alice", b"new") is True


def test_reload_after_a_same_size_replacement_in_the_same_tick(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": fast("old")})
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    creds = CredentialsFile(path)
    assert creds.verify("alice", b"old") is True
    write_credentials(path, {"alice": fast("new")})  # atomic replace: a new inode
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert creds.verify("alice", b"old") is False


def test_removed_user_is_forgotten_even_after_a_remembered_success(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": fast("a"), "bob": fast("b")})
    creds = CredentialsFile(path)
    assert creds.verify("alice", b"a") is True
    write_credentials(path, {"bob": fast("b")})
    assert creds.verify("alice", b"a") is False
    assert creds.users() == ["bob"]


def test_deleted_file_means_no_users(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_credentials(path, {"alice": fast("a")})
    creds = CredentialsFile(path)
    assert creds.verify("alice", b"a") is True
    path.unlink()
    assert creds.verify("alice", b"a") is False
    assert creds.users() == []


def test_malformed_file_raises_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text(f"# c\nalice:{fast('a')}\n\nbroken line\n", encoding="utf-8")
    creds = CredentialsFile(path)
    with pytest.raises(CredentialsError) as info:
        creds.verify("alice", b"a")
    assert str(info.value) == f"{path}:4: expected 'user:pbkdf2-sha256$...'"
    with pytest.raises(CredentialsError) as info:
        creds.users()
    assert str(info.value) == f"{path}:4: expected 'user:pbkdf2-sha256$...'"


def test_credentials_error_is_a_value_error() -> None:
    assert issubclass(CredentialsError, ValueError)


# --- verifiers: PBKDF2 and SCRAM on one line ---------------------------------------------


def test_new_lines_carry_every_verifier_and_old_lines_still_load(tmp_path: Path) -> None:
    from mupdate.sasl.credentials import decode_credential, make_credential
    from mupdate.sasl.scram import make_keys

    new = make_credential("pw", iterations=FAST)
    fields = new.split(":")
    assert [f.split("$")[0] for f in fields] == [
        "pbkdf2-sha256",
        "scram-sha-512",
        "scram-sha-256",
        "scram-sha-1",
    ]
    decoded = decode_credential(new)
    assert decoded.mechanisms() == (
        "SCRAM-SHA-512",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
        "LOGIN",
    )
    keys = decoded.scram["SCRAM-SHA-256"]
    assert keys == make_keys("SCRAM-SHA-256", "pw", salt=keys.salt)
    assert decode_credential(fast("pw")).mechanisms() == ("PLAIN", "LOGIN")
    scram_only = ":".join(fields[1:])
    assert decode_credential(scram_only).mechanisms() == (
        "SCRAM-SHA-512",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
    )

    path = tmp_path / "credentials"
    write_credentials(path, {"new": new, "old": fast("old"), "scram": scram_only})
    creds = CredentialsFile(path)
    assert creds.verify("new", b"pw") is True
    assert creds.verify("old", b"old") is True
    assert creds.verify("scram", b"pw") is False  # no PBKDF2 hash: no PLAIN
    assert creds.scram_keys("new", "SCRAM-SHA-1-PLUS") == decoded.scram["SCRAM-SHA-1"]
    assert creds.scram_keys("old", "SCRAM-SHA-1") is None
    assert creds.scram_keys("nobody", "SCRAM-SHA-1") is None
    assert creds.scram_mechanisms() == frozenset()  # "old" has none
    write_credentials(path, {"new": new, "scram": scram_only})
    assert creds.scram_mechanisms() == {"SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"}


@pytest.mark.parametrize(
    ("encoded", "reason"),
    [
        ("scram-sha-256$4096$c2FsdA==$AAAA", "expected one 'scram-sha-256$<iterations>"),
        ("scram-sha-256$x$c2FsdA==$AAAA$AAAA", "iterations or base64 fields are malformed"),
        ("scram-sha-256$4096$!!$AAAA$AAAA", "iterations or base64 fields are malformed"),
        ("scram-sha-3$4096$c2FsdA==$AAAA$AAAA", "unknown verifier 'scram-sha-3'"),
        ("pbkdf2-sha256$1$c2FsdA==", "expected one 'pbkdf2-sha256$"),
    ],
)
def test_malformed_verifiers_are_named(encoded: str, reason: str) -> None:
    with pytest.raises(CredentialsError) as info:
        parse_credentials(f"alice:{encoded}\n", "creds")
    assert reason in str(info.value)
    assert str(info.value).startswith("creds:1: ")

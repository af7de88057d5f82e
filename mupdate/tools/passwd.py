"""``mupdate-passwd``: manage the credentials file of a master or slave.

``mupdate-passwd --file PATH add USER`` adds or replaces USER with every verifier (a PBKDF2
hash for PLAIN and LOGIN, SCRAM keys for SCRAM-SHA-1, -256 and -512); the password is read
from stdin when stdin is not a terminal (first line, without its newline), otherwise prompted
for twice. ``del USER`` removes one; ``list`` prints each user with the mechanisms it can log
in with (a line written before SCRAM existed shows only PLAIN LOGIN: ``add`` it again).
Passwords never go on the command line and are never printed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TextIO

from mupdate.sasl.credentials import (
    CredentialsError,
    decode_credential,
    make_credential,
    parse_credentials,
    write_credentials,
)


def _load(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return parse_credentials(path.read_text(encoding="utf-8"), str(path))


def read_password(stdin: TextIO) -> str:
    if not stdin.isatty():
        line = stdin.readline()
        password = line.rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("mupdate-passwd: the passwords differ")
    if not password:
        raise SystemExit("mupdate-passwd: empty password refused")
    return password


def main(
    argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    parser = argparse.ArgumentParser(prog="mupdate-passwd", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--file", required=True, type=Path, help="credentials file (created if missing)"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add or replace a user; password from stdin or a prompt")
    add.add_argument("user")
    delete = sub.add_parser("del", help="remove a user")
    delete.add_argument("user")
    sub.add_parser("list", help="list users and the mechanisms each can log in with")
    args = parser.parse_args(argv)
    try:
        users = _load(args.file)
    except CredentialsError as exc:
        print(f"mupdate-passwd: {exc}", file=sys.stderr)
        return 1
    if args.action == "list":
        for user in sorted(users):
            mechanisms = decode_credential(users[user]).mechanisms()
            print(user, *mechanisms, file=stdout)
        return 0
    user = args.user
    if (
        ":" in user
        or not user.strip()
        or user != user.strip()
        or not user.isprintable()
        or user.startswith("#")
    ):
        print(
            "mupdate-passwd: a user name must be printable and non-empty, without ':', "
            "surrounding blanks or a leading '#'",
            file=sys.stderr,
        )
        return 2
    if args.action == "del":
        if users.pop(args.user, None) is None:
            print(f"mupdate-passwd: no user {args.user!r} in {args.file}", file=sys.stderr)
            return 1
    else:
        users[args.user] = make_credential(read_password(stdin))
    args.file.parent.mkdir(parents=True, exist_ok=True)
    write_credentials(args.file, users)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

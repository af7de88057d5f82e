"""Authority per credential: the pure decision (design.md, "Authorisation")."""

from __future__ import annotations

import pytest

from mupdate.master.authority import check
from mupdate.master.rules import Refuse
from mupdate.model import EntryState, MailboxEntry
from mupdate.protocol.commands import Activate, Deactivate, Delete, Reserve

TABLE = {
    "be1": frozenset({"be1"}),
    "pair": frozenset({"be2", "be2-replica"}),
    "ro": frozenset(),
}


def entry(location: bytes) -> MailboxEntry:
    return MailboxEntry(b"user.a", EntryState.ACTIVE, location, b"a\tlrs\t")


def reserve(location: bytes) -> Reserve:
    return Reserve(b"R", b"user.a", location)


@pytest.mark.parametrize("user", [None, "admin", "BE1"])  # unbound (names are exact)
def test_unbound_users_are_not_restricted(user: str | None) -> None:
    assert check(TABLE, user, Delete(b"D", b"user.a"), entry(b"be9!p")) is None


def test_empty_table_restricts_nobody() -> None:
    assert check({}, "be1", reserve(b"be2!p"), entry(b"be3!p")) is None


@pytest.mark.parametrize(
    ("command", "current"),
    [
        (reserve(b"be1!p"), None),
        (reserve(b"be1"), None),  # no partition: the location is its own server part
        (Activate(b"A", b"user.a", b"BE1!p", b""), entry(b"be1!q")),  # case-insensitive
        (Deactivate(b"D", b"user.a", b"be1!p"), entry(b"be1!p")),
        (Delete(b"D", b"user.a"), entry(b"be1!p")),
        (Delete(b"D", b"user.a"), None),  # nothing to protect: the rules answer
    ],
)
def test_own_server_is_allowed(command: object, current: MailboxEntry | None) -> None:
    assert check(TABLE, "be1", command, current) is None  # type: ignore[arg-type]


def test_several_servers_move_between_themselves() -> None:
    move = Activate(b"A", b"user.a", b"be2-replica!p", b"")
    assert check(TABLE, "pair", move, entry(b"be2!p")) is None


@pytest.mark.parametrize(
    ("command", "current", "server"),
    [
        (reserve(b"be2!p"), None, b"be2"),  # take a new name for another server
        (reserve(b"be1!p"), entry(b"be2!p"), b"be2"),  # take another server's name
        (Activate(b"A", b"user.a", b"be1!p", b""), entry(b"be2!p"), b"be2"),  # pull it over
        (Activate(b"A", b"user.a", b"be2!p", b""), entry(b"be1!p"), b"be2"),  # push it away
        (Deactivate(b"D", b"user.a", b"be1!p"), entry(b"be2!p"), b"be2"),
        (Delete(b"D", b"user.a"), entry(b"be2!p"), b"be2"),
    ],
)
def test_other_servers_are_refused_with_a_reason(
    command: object, current: MailboxEntry | None, server: bytes
) -> None:
    assert check(TABLE, "be1", command, current) == Refuse(  # type: ignore[arg-type]
        b"be1 may not write mailboxes of " + server
    )


@pytest.mark.parametrize(
    "command",
    [reserve(b"x!p"), Activate(b"A", b"user.a", b"x", b""), Deactivate(b"D", b"user.a", b"x")],
)
def test_readonly_refuses_every_write(command: object) -> None:
    assert check(TABLE, "ro", command, None) == Refuse(  # type: ignore[arg-type]
        b"ro may not write: read-only credential"
    )
    assert check(TABLE, "ro", Delete(b"D", b"user.a"), entry(b"x")) == Refuse(
        b"ro may not write: read-only credential"
    )


def test_reason_text_is_safe_in_a_quoted_string() -> None:
    refusal = check(TABLE, "be1", reserve(b'ev"il\\\xff!p'), None)
    assert refusal == Refuse(b"be1 may not write mailboxes of ev?il??")

"""The master's server protocol on a StringTransport: greeting, SASL, reads, writes (§3-§5, §14)."""

from __future__ import annotations

import base64

import pytest

from mupdate.model import EntryState, MailboxEntry
from tests.helpers.glue import ADMIN, PASSWORD, MasterRig, quoted_b64
from tests.helpers.memstore import InMemoryStore


def lit(value: bytes) -> bytes:
    return b"{%d+}\r\n" % len(value) + value


@pytest.fixture
def rig(tmp_path):
    return MasterRig(tmp_path)


# -- greeting (§3.1, case 1-2) ----------------------------------------------------------


def test_greeting_on_loopback_offers_scram_plain_and_login(rig):
    greeting = rig.connect().take()
    lines = greeting.split(b"\r\n")
    # Strongest first; no -PLUS without TLS (no channel binding to offer).
    assert lines[0] == b'* AUTH "SCRAM-SHA-512" "SCRAM-SHA-256" "SCRAM-SHA-1" "PLAIN" "LOGIN"'
    assert lines[1] == b"* PARTIAL-UPDATE"
    assert lines[2].startswith(b'* OK MUPDATE "master.test" ')
    assert lines[2].endswith(b' "(master)"')
    assert lines[3:] == [b""]


def test_greeting_off_loopback_hides_plaintext_mechanisms(rig):
    assert (
        rig.connect("192.0.2.7")
        .take()
        .startswith(b'* AUTH "SCRAM-SHA-512" "SCRAM-SHA-256" "SCRAM-SHA-1"\r\n* PARTIAL-UPDATE\r\n')
    )


def test_allowplaintext_offers_plain_off_loopback(tmp_path):
    rig = MasterRig(tmp_path, allow_plaintext=True, loopback_plaintext=False)
    assert (
        rig.connect("192.0.2.7")
        .take()
        .startswith(b'* AUTH "SCRAM-SHA-512" "SCRAM-SHA-256" "SCRAM-SHA-1" "PLAIN" "LOGIN"\r\n')
    )


def test_loopback_plaintext_can_be_switched_off(tmp_path):
    rig = MasterRig(tmp_path, loopback_plaintext=False)
    assert (
        rig.connect().take().startswith(b'* AUTH "SCRAM-SHA-512" "SCRAM-SHA-256" "SCRAM-SHA-1"\r\n')
    )


# -- AUTHENTICATE (§5.1, cases 28-35) ----------------------------------------------------


def test_plain_with_literal_initial_response(rig):
    conn = rig.connect()
    conn.take()
    ir = base64.b64encode(f"\0{ADMIN}\0{PASSWORD}".encode())
    assert (
        conn.send(b'A01 AUTHENTICATE "PLAIN" ' + lit(ir) + b"\r\n") == b'A01 OK "Authenticated"\r\n'
    )
    assert conn.proto.user == ADMIN


def test_plain_without_initial_response_gets_empty_challenge(rig):
    conn = rig.connect()
    conn.take()
    assert conn.send(b'A2 AUTHENTICATE "PLAIN"\r\n') == b"\r\n"
    line = base64.b64encode(f"{ADMIN}\0{ADMIN}\0{PASSWORD}".encode())
    assert conn.send(line + b"\r\n") == b'A2 OK "Authenticated"\r\n'


def test_login_mechanism_exchange(rig):
    conn = rig.connect()
    conn.take()
    assert conn.send(b'L1 AUTHENTICATE "LOGIN"\r\n') == base64.b64encode(b"Username:") + b"\r\n"
    assert (
        conn.send(base64.b64encode(ADMIN.encode()) + b"\r\n")
        == base64.b64encode(b"Password:") + b"\r\n"
    )
    assert conn.send(base64.b64encode(PASSWORD.encode()) + b"\r\n") == b'L1 OK "Authenticated"\r\n'


def test_cancel_is_answered_unquoted_at_once(rig):
    conn = rig.connect()
    conn.take()
    conn.send(b'A1 AUTHENTICATE "PLAIN"\r\n')
    assert conn.send(b"*\r\n") == b"A1 NO Client canceled authentication\r\n"


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (b'A1 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0wrong") + b"\r\n", "wrong password"),
        (b'A1 AUTHENTICATE "PLAIN" ' + quoted_b64("\0joe\0joepass") + b"\r\n", "valid non-admin"),
        (b'A1 AUTHENTICATE "PLAIN" ' + quoted_b64("\0nobody\0x") + b"\r\n", "unknown user"),
        (b'A1 AUTHENTICATE "CRAM-MD5"\r\n', "mechanism not offered"),
        (b'A1 AUTHENTICATE "PLAIN" "%%%notbase64"\r\n', "bad base64"),
        (b'A1 AUTHENTICATE "PLAIN" "="\r\n', "empty PLAIN message"),
    ],
)
def test_failed_login_is_a_tagged_no_after_the_pause(rig, command, why):
    conn = rig.connect()
    conn.take()
    assert conn.send(command) == b"", why
    rig.clock.advance(2.9)
    assert conn.take() == b""
    rig.clock.advance(0.2)
    reply = conn.take()
    assert reply.startswith(b'A1 NO "'), (why, reply)
    assert conn.proto.user is None
    # the session is usable again: a correct login works
    ok = conn.send(b'A2 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{PASSWORD}") + b"\r\n")
    assert ok == b'A2 OK "Authenticated"\r\n'


def test_plain_off_loopback_is_refused_without_tls(rig):
    conn = rig.connect("192.0.2.7")
    conn.take()
    conn.send(b'A1 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{PASSWORD}") + b"\r\n")
    rig.clock.advance(3)
    assert conn.take().startswith(b"A1 NO ")


def test_second_authenticate_is_bad(rig):
    conn = rig.login()
    reply = conn.send(b'A2 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{PASSWORD}") + b"\r\n")
    assert reply == b'A2 BAD "already authenticated"\r\n'


def test_commands_pipelined_behind_authenticate_run_once_in_order(rig):
    conn = rig.connect()
    conn.take()
    data = (
        b'A01 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{PASSWORD}") + b"\r\n"
        b'X0 RESERVE "user.p" "be1!default"\r\nX1 FIND "user.p"\r\nX2 NOOP\r\n'
    )
    assert conn.send(data) == (
        b'A01 OK "Authenticated"\r\nX0 OK "done"\r\n'
        b'X1 RESERVE "user.p" "be1!default"\r\nX1 OK "Search completed"\r\nX2 OK "Noop done"\r\n'
    )


def test_commands_before_login_are_refused(rig):
    conn = rig.connect()
    conn.take()
    assert conn.send(b"T1 NOOP\r\n") == b'T1 BAD "Please login first"\r\n'
    assert conn.send(b'T2 FIND "x"\r\n') == b'T2 BAD "Please login first"\r\n'
    assert conn.send(b'T3 RESERVE "x" "y"\r\n') == b'T3 BAD "Please login first"\r\n'


def test_logout_answers_and_closes(rig):
    conn = rig.connect()
    conn.take()
    assert conn.send(b"Q01 LOGOUT\r\n") == b'Q01 OK "bye-bye"\r\n'
    assert conn.closed


# -- reads (cases 36-41) ---------------------------------------------------------------


def seeded(tmp_path, *entries):
    return MasterRig(tmp_path, store=InMemoryStore(entries))


def test_find_active_reserved_and_missing(tmp_path):
    rig = seeded(
        tmp_path,
        MailboxEntry(b"user.alice", EntryState.ACTIVE, b"be1!default", b"alice\tlrswipkxtecda\t"),
        MailboxEntry(b"user.bob", EntryState.RESERVED, b"be1!default"),
    )
    conn = rig.login()
    assert conn.send(b'T15 FIND "user.alice"\r\n') == (
        b'T15 MAILBOX "user.alice" "be1!default" "alice\tlrswipkxtecda\t"\r\nT15 OK "Search completed"\r\n'
    )
    assert conn.send(b'T13 FIND "user.bob"\r\n') == (
        b'T13 RESERVE "user.bob" "be1!default"\r\nT13 OK "Search completed"\r\n'
    )
    assert conn.send(b'T9 FIND "user.nobody"\r\n') == b'T9 OK "Search completed"\r\n'


def test_list_in_cyrus_key_order_and_prefix(tmp_path):
    names = [
        b"x.com!user.k.a",
        b"user.k/a",
        b"user.k^a",
        b"user.k-a",
        b"user.k a",
        b"user.k.a",
        b"user.k",
    ]
    rig = seeded(tmp_path, *(MailboxEntry(n, EntryState.ACTIVE, b"be1!p", b"") for n in names))
    conn = rig.login()
    listed = conn.send(b"T19 LIST\r\n")
    expected_order = [
        b"user.k",
        b"user.k.a",
        b"user.k a",
        b"user.k-a",
        b"user.k^a",
        b"user.k/a",
        b"x.com!user.k.a",
    ]
    assert listed == b"".join(b'T19 MAILBOX "%s" "be1!p" ""\r\n' % n for n in expected_order) + (
        b'T19 OK "list complete"\r\n'
    )
    assert conn.send(b'T20 LIST "be2"\r\n') == b'T20 OK "list complete"\r\n'
    assert conn.send(b'T21 LIST "be1!"\r\n').count(b"MAILBOX") == len(names)
    # an UPDATE's dump (what a Cyrus slave merges in order) comes in the same key order
    dumped = rig.login().send(b"U01 UPDATE\r\n")
    assert dumped == b"".join(b'U01 MAILBOX "%s" "be1!p" ""\r\n' % n for n in expected_order) + (
        b'U01 OK "streaming starts"\r\n'
    )


def test_name_with_crlf_comes_back_as_literal(rig):
    conn = rig.login()
    assert conn.send(b'L11 ACTIVATE {5+}\r\na\r\nbc "h!p" ""\r\n') == b'L11 OK "done"\r\n'
    assert conn.send(b"F1 FIND {5+}\r\na\r\nbc\r\n") == (
        b'F1 MAILBOX {5+}\r\na\r\nbc "h!p" ""\r\nF1 OK "Search completed"\r\n'
    )


# -- writes (cases 42-53) ----------------------------------------------------------------


def find(conn, name: bytes) -> bytes:
    return conn.send(b'F FIND "' + name + b'"\r\n')


def test_reserve_activate_and_relocation_refused(rig):
    conn = rig.login()
    assert conn.send(b'W1 RESERVE "user.alice" "be1!default"\r\n') == b'W1 OK "done"\r\n'
    assert find(conn, b"user.alice").startswith(b'F RESERVE "user.alice" "be1!default"\r\n')
    assert (
        conn.send(b'W2 ACTIVATE "user.alice" "be1!default" "alice\tlrs\t"\r\n')
        == b'W2 OK "done"\r\n'
    )
    assert (
        conn.send(b'W3 RESERVE "user.alice" "be2!default"\r\n')
        == b'W3 NO "mailbox already exists"\r\n'
    )
    assert conn.send(b'W4 RESERVE "user.alice" "be1!default"\r\n') == b'W4 OK "done"\r\n'
    assert find(conn, b"user.alice").startswith(
        b'F MAILBOX "user.alice" "be1!default" "alice\tlrs\t"\r\n'
    )


def test_activate_moves_a_mailbox(rig):
    conn = rig.login()
    conn.send(b'W1 ACTIVATE "user.m" "be1!default" "m\tlrs\t"\r\n')
    assert conn.send(b'W2 ACTIVATE "user.m" "be2!p2" "m\tlrs\t"\r\n') == b'W2 OK "done"\r\n'
    assert find(conn, b"user.m").startswith(b'F MAILBOX "user.m" "be2!p2" ')


def test_deactivate_cases(rig):
    conn = rig.login()
    conn.send(b'W1 ACTIVATE "user.bob" "be1!default" "bob\tlrs\t"\r\n')
    assert conn.send(b'W2 DEACTIVATE "user.bob" "be9!p9"\r\n') == b'W2 OK "done"\r\n'
    assert find(conn, b"user.bob").startswith(b'F RESERVE "user.bob" "be9!p9"\r\n')
    assert conn.send(b'W3 DEACTIVATE "user.bob" "be9!p9"\r\n') == b'W3 OK "done"\r\n'
    assert (
        conn.send(b'W4 DEACTIVATE "user.bob" "be1!x"\r\n')
        == b'W4 NO "mailbox not currently active"\r\n'
    )
    assert (
        conn.send(b'W5 DEACTIVATE "user.none" "be1!x"\r\n') == b'W5 NO "mailbox doesn\'t exist"\r\n'
    )


def test_delete_repeat_within_window_and_unknown(tmp_path):
    rig = MasterRig(tmp_path, idle_timeout=10 * 24 * 3600.0)
    conn = rig.login()
    conn.send(b'W1 ACTIVATE "user.d" "be1!default" ""\r\n')
    assert conn.send(b'W2 DELETE "user.d"\r\n') == b'W2 OK "done"\r\n'
    assert conn.send(b'W3 DELETE "user.d"\r\n') == b'W3 OK "done"\r\n'
    assert conn.send(b'W4 DELETE "user.never"\r\n') == b'W4 NO "mailbox doesn\'t exist"\r\n'
    rig.clock.advance(rig.settings.tombstone_window + 1)
    assert conn.send(b'W5 DELETE "user.d"\r\n') == b'W5 NO "mailbox doesn\'t exist"\r\n'


def test_empty_name_is_refused_and_empty_location_stored(rig):
    conn = rig.login()
    assert conn.send(b'W1 RESERVE "" "be1!p"\r\n') == b'W1 NO "invalid mailbox name"\r\n'
    assert conn.send(b'W2 RESERVE "user.emptyloc" ""\r\n') == b'W2 OK "done"\r\n'
    assert find(conn, b"user.emptyloc").startswith(b'F RESERVE "user.emptyloc" ""\r\n')


def test_acl_kept_byte_for_byte(rig):
    conn = rig.login()
    conn.send(b'W1 ACTIVATE "user.acl" "be1!p" "anyone rls"\r\n')
    assert find(conn, b"user.acl").startswith(b'F MAILBOX "user.acl" "be1!p" "anyone rls"\r\n')


def test_writes_are_stored_and_audited_in_the_store(rig):
    conn = rig.login()
    conn.send(b'W1 RESERVE "user.s" "be1!p"\r\nW2 ACTIVATE "user.s" "be1!p" "s\tlrs\t"\r\n')
    assert rig.store.entries[b"user.s"] == MailboxEntry(
        b"user.s", EntryState.ACTIVE, b"be1!p", b"s\tlrs\t"
    )


def test_other_sessions_survive_an_oversize_tag(rig):
    victim = rig.login()
    attacker = rig.connect()
    attacker.take()
    reply = attacker.send(b"T" * 140_000 + b" NOOP\r\n")
    assert reply.startswith((b"* BAD", b"* BYE"))
    assert victim.send(b"N1 NOOP\r\n") == b'N1 OK "Noop done"\r\n'

"""SCRAM on the wire (§5.1), authority per credential, and the abuse limits, on a real
master (MasterRig) over a StringTransport with a Clock."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import LogEvent, globalLogPublisher

from mupdate.sasl import ScramClient
from mupdate.sasl.credentials import hash_password, write_credentials
from tests.helpers.glue import ADMIN, PASSWORD, Conn, MasterRig, fast_credential, quoted_b64

BINDING = b"\x42" * 32


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def unb64(line: bytes) -> bytes:
    return base64.b64decode(line.removesuffix(b"\r\n"), validate=True)


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


@pytest.fixture
def rig(tmp_path: Path) -> MasterRig:
    return MasterRig(tmp_path)


def scram_login(
    conn: Conn,
    mechanism: str = "SCRAM-SHA-256",
    user: str = ADMIN,
    password: str = PASSWORD,
    authzid: str = "",
    binding: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Run the exchange up to the final data; return (server's last line, client's check)."""
    client = ScramClient(mechanism, user, password, authzid, channel_binding=binding)
    first = client.initial()
    assert first is not None
    line = conn.send(b'A01 AUTHENTICATE "%s" ' % mechanism.encode() + literal(b64(first)) + b"\r\n")
    server_first = unb64(line)
    final = conn.send(b64(client.respond(server_first)) + b"\r\n")
    return final, client.respond(unb64(final)) if final else b"?"


# -- the exact exchange (§5.1) -----------------------------------------------------------


def test_scram_exchange_exactly_as_cyrus_does_it(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    client = ScramClient("SCRAM-SHA-256", ADMIN, PASSWORD, authzid=ADMIN, nonce="cnonce")
    first = client.initial()
    assert first == b"n,a=admin,n=admin,r=cnonce"
    # The initial response in a non-synchronizing literal, as Cyrus clients send it.
    out = conn.send(b'A01 AUTHENTICATE "SCRAM-SHA-256" ' + literal(b64(first)) + b"\r\n")
    # server-first: one bare base64 line, no "+ ", no quotes, no tag.
    assert out.endswith(b"\r\n")
    assert out.count(b"\r\n") == 1
    assert not out.startswith((b"+", b'"', b"A01"))
    server_first = unb64(out)
    assert server_first.startswith(b"r=cnonce")
    assert b",s=" in server_first
    assert server_first.endswith(b",i=4096")
    # client-final -> the final data v=..., again a bare line, and no OK yet.
    out = conn.send(b64(client.respond(server_first)) + b"\r\n")
    assert out.count(b"\r\n") == 1
    assert b"OK" not in out
    verifier = unb64(out)
    assert verifier.startswith(b"v=")
    assert client.respond(verifier) == b""  # our client checks the server's signature
    assert conn.proto.user is None
    # The client's empty line, then the tagged OK.
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'
    assert (conn.proto.user, conn.proto.authcid) == (ADMIN, ADMIN)
    assert conn.send(b"N1 NOOP\r\n") == b'N1 OK "Noop done"\r\n'


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_every_scram_mechanism_logs_in(rig: MasterRig, mechanism: str) -> None:
    conn = rig.connect()
    conn.take()
    final, ack = scram_login(conn, mechanism)
    assert unb64(final).startswith(b"v=")
    assert ack == b""
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'


def test_scram_without_initial_response_gets_an_empty_challenge(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    client = ScramClient("SCRAM-SHA-1", ADMIN, PASSWORD)
    assert conn.send(b'A01 AUTHENTICATE "SCRAM-SHA-1"\r\n') == b"\r\n"  # empty challenge
    server_first = unb64(conn.send(b64(client.initial() or b"") + b"\r\n"))
    verifier = unb64(conn.send(b64(client.respond(server_first)) + b"\r\n"))
    assert client.respond(verifier) == b""
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'


def test_authzid_names_the_session_but_not_the_credential(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    scram_login(conn, authzid="cyrus")
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'
    assert (conn.proto.user, conn.proto.authcid) == ("cyrus", ADMIN)


# -- refusals ---------------------------------------------------------------------------


def test_wrong_password_fails_after_the_pause(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    final, _ = scram_login(conn, password="wrong")
    assert final == b""  # nothing until the pause is over
    rig.clock.advance(rig.settings.failed_login_pause)
    assert conn.take() == b'A01 NO "authentication failed"\r\n'
    assert conn.proto.user is None
    assert rig.factory.counters.failed_logins == 1


@pytest.mark.parametrize("user", ["joe", "nobody"])
def test_non_admins_and_unknown_users_fail_at_the_proof_like_a_wrong_password(
    rig: MasterRig, user: str
) -> None:
    conn = rig.connect()
    conn.take()
    client = ScramClient("SCRAM-SHA-256", user, "joepass")
    line = conn.send(b'A01 AUTHENTICATE "SCRAM-SHA-256" ' + quoted_b64("") + b"\r\n")
    assert line == b"\r\n"  # "=" is an empty initial response: ask again
    server_first = unb64(conn.send(b64(client.initial() or b"") + b"\r\n"))
    assert server_first.endswith(b",i=4096")  # a plausible challenge all the same
    assert conn.send(b64(client.respond(server_first)) + b"\r\n") == b""
    rig.clock.advance(rig.settings.failed_login_pause)
    assert conn.take() == b'A01 NO "authentication failed"\r\n'


def test_a_non_empty_line_after_the_final_data_fails(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    scram_login(conn)
    assert conn.send(b"AAAA\r\n") == b""
    rig.clock.advance(rig.settings.failed_login_pause)
    assert conn.take() == b'A01 NO "authentication failed"\r\n'
    assert conn.proto.user is None


def test_cancel_after_the_final_data(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    scram_login(conn)
    assert conn.send(b"*\r\n") == b"A01 NO Client canceled authentication\r\n"
    assert conn.proto.user is None


def test_old_credential_lines_keep_plain_and_scram_waits_for_every_user(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old-credentials"
    old = {ADMIN: hash_password(PASSWORD, iterations=1000), "joe": fast_credential("joepass")}
    write_credentials(path, old)
    rig = MasterRig(tmp_path, credentials=path)
    conn = rig.connect()
    # One user without SCRAM keys: SCRAM is not offered at all, so a client that takes the
    # strongest mechanism (every Cyrus client) still logs in with PLAIN.
    assert conn.take().startswith(b'* AUTH "PLAIN" "LOGIN"\r\n')
    first = ScramClient("SCRAM-SHA-256", ADMIN, PASSWORD).initial() or b""
    assert conn.send(b'A01 AUTHENTICATE "SCRAM-SHA-256" ' + literal(b64(first)) + b"\r\n") == b""
    rig.clock.advance(rig.settings.failed_login_pause)
    assert conn.take() == b'A01 NO "mechanism not available"\r\n'
    reply = conn.send(b'A02 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{PASSWORD}") + b"\r\n")
    assert reply == b'A02 OK "Authenticated"\r\n'
    # mupdate-passwd add for the last old user: the next connection is offered SCRAM.
    write_credentials(path, {**old, ADMIN: fast_credential(PASSWORD)})
    conn = rig.connect()
    assert conn.take().startswith(b'* AUTH "SCRAM-SHA-512" "SCRAM-SHA-256" "SCRAM-SHA-1" "PLAIN"')
    scram_login(conn)
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'


def test_credentials_file_changes_apply_without_restart(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    write_credentials(rig.settings.credentials_path, {ADMIN: fast_credential("rotated")})
    scram_login(conn, password="rotated")
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'


def test_plus_is_not_offered_or_accepted_without_tls(rig: MasterRig) -> None:
    conn = rig.connect()
    assert b"PLUS" not in conn.take()
    conn.send(b'A01 AUTHENTICATE "SCRAM-SHA-256-PLUS" ' + quoted_b64("p=x,,n=admin,r=1") + b"\r\n")
    rig.clock.advance(rig.settings.failed_login_pause)
    assert conn.take() == b'A01 NO "mechanism not available"\r\n'


def test_plus_where_the_connection_has_channel_binding(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    conn.proto.channel_binding = lambda: BINDING  # type: ignore[method-assign]
    assert conn.proto.offered_mechanisms()[:3] == (
        "SCRAM-SHA-512-PLUS",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
    )
    _, ack = scram_login(conn, "SCRAM-SHA-256-PLUS", binding=BINDING)
    assert ack == b""
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'


def test_plus_with_another_certificate_fails(rig: MasterRig) -> None:
    conn = rig.connect()
    conn.take()
    conn.proto.channel_binding = lambda: BINDING  # type: ignore[method-assign]
    scram_login(conn, "SCRAM-SHA-512-PLUS", binding=b"\x00" * 32)
    rig.clock.advance(rig.settings.failed_login_pause)
    assert conn.take() == b'A01 NO "authentication failed"\r\n'


# -- abuse limits -----------------------------------------------------------------------


def fail_once(rig: MasterRig, conn: Conn, tag: bytes) -> bytes:
    conn.send(tag + b' AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0wrong") + b"\r\n")
    rig.clock.advance(rig.settings.failed_login_pause)
    return conn.take()


def test_third_failed_login_ends_the_connection(rig: MasterRig) -> None:
    assert rig.settings.auth_attempts_max == 3
    conn = rig.connect()
    conn.take()
    assert fail_once(rig, conn, b"A1") == b'A1 NO "authentication failed"\r\n'
    assert fail_once(rig, conn, b"A2") == b'A2 NO "authentication failed"\r\n'
    assert not conn.closed
    assert fail_once(rig, conn, b"A3") == (
        b'A3 NO "authentication failed"\r\n* BYE "Too many login failures"\r\n'
    )
    rig.clock.advance(1)
    assert conn.closed


def test_attempt_limit_is_configurable_and_per_connection(tmp_path: Path) -> None:
    rig = MasterRig(tmp_path, auth_attempts_max=1)
    first = rig.connect()
    first.take()
    assert fail_once(rig, first, b"A1").endswith(b'* BYE "Too many login failures"\r\n')
    second = rig.connect()  # a new connection starts again
    second.take()
    assert fail_once(rig, second, b"A1").endswith(b'BYE "Too many login failures"\r\n')
    assert rig.login() is not None


def test_unauthenticated_connection_must_log_in_in_time(rig: MasterRig) -> None:
    assert rig.settings.login_timeout == 60.0
    conn = rig.connect()
    conn.take()
    rig.clock.advance(59)
    assert conn.send(b"N1 NOOP\r\n") == b'N1 BAD "Please login first"\r\n'  # no extension
    rig.clock.advance(1)
    assert conn.take() == b'* BYE "idle for too long"\r\n'
    assert conn.closed


def test_logged_in_connection_is_not_hit_by_the_login_timeout(tmp_path: Path) -> None:
    rig = MasterRig(tmp_path, login_timeout=5.0)
    conn = rig.login()
    rig.clock.advance(3600)
    assert not conn.closed
    assert conn.send(b"N1 NOOP\r\n") == b'N1 OK "Noop done"\r\n'


# -- authority per credential -------------------------------------------------------------


@pytest.fixture
def audit_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "mupdate.audit":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def bound(tmp_path: Path) -> MasterRig:
    users = {"be1": "pw1", "be2": "pw2", "ro": "pw3", ADMIN: PASSWORD}
    path = tmp_path / "bound-credentials"
    write_credentials(path, {u: fast_credential(p) for u, p in users.items()})
    return MasterRig(
        tmp_path,
        credentials=path,
        admins=frozenset(users),
        authority={"be1": frozenset({"be1"}), "be2": frozenset({"be2", "be2b"}), "ro": frozenset()},
    )


def login_as(rig: MasterRig, user: str, password: str) -> Conn:
    conn = rig.connect()
    conn.take()
    scram_login(conn, "SCRAM-SHA-256", user, password)
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'
    return conn


def test_bound_backends_write_only_their_own_mailboxes(
    bound: MasterRig, audit_events: list[LogEvent]
) -> None:
    be1 = login_as(bound, "be1", "pw1")
    be2 = login_as(bound, "be2", "pw2")
    assert be1.send(b'R1 RESERVE "user.a" "be1!p"\r\n') == b'R1 OK "done"\r\n'
    assert be1.send(b'R2 ACTIVATE "user.a" "BE1!p" "a\tlrs\t"\r\n') == b'R2 OK "done"\r\n'
    assert be2.send(b'R3 RESERVE "user.b" "be2b!q"\r\n') == b'R3 OK "done"\r\n'
    refused = b'"be2 may not write mailboxes of BE1"'
    # be2 can neither take, move, deactivate nor delete be1's mailbox ...
    assert be2.send(b'X1 RESERVE "user.a" "be2!p"\r\n') == b"X1 NO " + refused + b"\r\n"
    assert be2.send(b'X2 ACTIVATE "user.a" "be2!p" ""\r\n') == b"X2 NO " + refused + b"\r\n"
    assert be2.send(b'X3 DEACTIVATE "user.a" "be2!p"\r\n') == b"X3 NO " + refused + b"\r\n"
    assert be2.send(b'X4 DELETE "user.a"\r\n') == b"X4 NO " + refused + b"\r\n"
    # ... and be1 cannot push a mailbox onto be2 nor take be2's.
    assert be1.send(b'X5 RESERVE "user.c" "be2!p"\r\n') == (
        b'X5 NO "be1 may not write mailboxes of be2"\r\n'
    )
    assert be1.send(b'X6 ACTIVATE "user.b" "be1!p" ""\r\n') == (
        b'X6 NO "be1 may not write mailboxes of be2b"\r\n'
    )
    assert bound.handler.index.get(b"user.a").location == b"BE1!p"  # type: ignore[union-attr]
    assert bound.handler.index.get(b"user.c") is None
    refusals = [e for e in audit_events if e["log_format"].startswith("{user} refused")]
    assert [(e["user"], e["command"], e["mailbox"], e["location"], e["reason"]) for e in refusals][
        :4
    ] == [
        ("be2", "RESERVE", "user.a", "be2!p", "be2 may not write mailboxes of BE1"),
        ("be2", "ACTIVATE", "user.a", "be2!p", "be2 may not write mailboxes of BE1"),
        ("be2", "DEACTIVATE", "user.a", "be2!p", "be2 may not write mailboxes of BE1"),
        ("be2", "DELETE", "user.a", "-", "be2 may not write mailboxes of BE1"),
    ]
    assert len(refusals) == 6


def test_readonly_credential_reads_but_never_writes(
    bound: MasterRig, audit_events: list[LogEvent]
) -> None:
    ro = login_as(bound, "ro", "pw3")
    for tag, command in (
        (b"W1", b'RESERVE "user.x" "be1!p"'),
        (b"W2", b'ACTIVATE "user.x" "be1!p" ""'),
        (b"W3", b'DEACTIVATE "user.x" "be1!p"'),
        (b"W4", b'DELETE "user.x"'),
    ):
        assert ro.send(tag + b" " + command + b"\r\n") == (
            tag + b' NO "ro may not write: read-only credential"\r\n'
        )
    assert ro.send(b"L1 LIST\r\n") == b'L1 OK "list complete"\r\n'
    assert len(audit_events) == 4


def test_unbound_admin_and_authzid_cannot_borrow_authority(bound: MasterRig) -> None:
    admin = login_as(bound, ADMIN, PASSWORD)
    assert admin.send(b'R1 RESERVE "user.z" "anywhere!p"\r\n') == b'R1 OK "done"\r\n'
    # be1 asking to act as the unbound admin keeps be1's authority.
    conn = bound.connect()
    conn.take()
    scram_login(conn, "SCRAM-SHA-1", "be1", "pw1", authzid=ADMIN)
    assert conn.send(b"\r\n") == b'A01 OK "Authenticated"\r\n'
    assert conn.proto.user == ADMIN
    assert conn.send(b'R2 DELETE "user.z"\r\n') == (
        b'R2 NO "be1 may not write mailboxes of anywhere"\r\n'
    )

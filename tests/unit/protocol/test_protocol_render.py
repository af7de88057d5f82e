"""Events in, exact bytes out (protocol doc §3.1, §5, §6.1; design.md "Order and encoding")."""

from __future__ import annotations

import pytest

from mupdate.protocol import (
    Activate,
    Authenticate,
    Bye,
    Compress,
    Deactivate,
    Delete,
    DeleteLine,
    Done,
    Find,
    GoAhead,
    Greeting,
    List,
    LocalProtocolError,
    Logout,
    MailboxLine,
    Noop,
    Reserve,
    ReserveLine,
    SaslChallenge,
    SaslResponse,
    ServerConnection,
    Starttls,
    Status,
    Update,
    can_quote,
    render_command,
    render_response,
    render_string,
)
from mupdate.protocol import texts as t
from mupdate.protocol.strings import quote


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"user.alice", b'"user.alice"'),
        (b"", b'""'),
        (b'a"b\\c', b'"a\\"b\\\\c"'),
        (b"tab\there \xc3\xa9", b'"tab\there \xc3\xa9"'),
        (b"a\r\nb", b"{4+}\r\na\r\nb"),
        (b"a\nb", b"{3+}\r\na\nb"),
        (b"a\rb", b"{3+}\r\na\rb"),
        (b"a\0b", b"{3+}\r\na\0b"),
        (b"x" * 1024, b'"' + b"x" * 1024 + b'"'),
        (b"x" * 1025, b"{1025+}\r\n" + b"x" * 1025),
    ],
)
def test_render_string_quotes_where_allowed_else_non_sync_literal(
    value: bytes, wire: bytes
) -> None:
    assert render_string(value) == wire
    assert can_quote(value) == wire.startswith(b'"')
    assert b"{" not in wire or b"+}" in wire  # never {n}


def test_quote_refuses_what_cannot_be_quoted() -> None:
    with pytest.raises(LocalProtocolError):
        quote(b"a\nb")


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (Done(b"T9", Status.OK, t.SEARCH_COMPLETED), b'T9 OK "Search completed"\r\n'),
        (Done(b"X0", Status.NO, t.MAILBOX_EXISTS), b'X0 NO "mailbox already exists"\r\n'),
        (Done(b"*", Status.BAD, t.NEED_COMMAND), b'* BAD "Need command"\r\n'),
        (
            Done(b"S01", Status.OK, t.BEGIN_TLS, quoted=False),
            b"S01 OK Begin TLS negotiation now\r\n",
        ),
        (
            Done(b"A1", Status.NO, t.CLIENT_CANCELED, quoted=False),
            b"A1 NO Client canceled authentication\r\n",
        ),
        (Done(b"X", Status.OK, b'say "hi"'), b'X OK "say \\"hi\\""\r\n'),
        (Done(b"X", Status.OK, b"a\nb"), b"X OK {3+}\r\na\nb\r\n"),
        # §14 case 37: reserved entry
        (
            ReserveLine(b"T13", b"user.alice", b"be1!default"),
            b'T13 RESERVE "user.alice" "be1!default"\r\n',
        ),
        # case 38: ACL with tabs; case 39: empty ACL
        (
            MailboxLine(b"T15", b"user.alice", b"be1!default", b"alice\tlrswipkxtecda\t"),
            b'T15 MAILBOX "user.alice" "be1!default" "alice\tlrswipkxtecda\t"\r\n',
        ),
        (MailboxLine(b"T16", b"user.a", b"be1!p", b""), b'T16 MAILBOX "user.a" "be1!p" ""\r\n'),
        (
            MailboxLine(b"L11", b"a\r\nbc", b"h!p", b""),
            b'L11 MAILBOX {5+}\r\na\r\nbc "h!p" ""\r\n',
        ),
        (DeleteLine(b"U01", b"user.s1"), b'U01 DELETE "user.s1"\r\n'),
        (Bye(t.IDLE_TOO_LONG), b'* BYE "idle for too long"\r\n'),
        (Bye(t.SERVER_UNABLE, trailing_nul=True), b'* BYE "Server Unable"\r\n\0'),
        (SaslChallenge(b"r=abc,s=xyz"), b"cj1hYmMscz14eXo=\r\n"),
        (SaslChallenge(b""), b"\r\n"),
        (SaslChallenge(b"\0" * 102), b"A" * 136 + b"\r\n"),  # long: still one line
        (GoAhead(), b"+ go ahead\r\n"),
    ],
)
def test_render_response(event: object, wire: bytes) -> None:
    assert render_response(event) == wire  # type: ignore[arg-type]
    assert ServerConnection().send(event) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [b"user.k", b"user.k.a", b"user.k a", b"user.k-a", b"user.k^a", b"user.k/a", b"x.com!user.k.a"],
)
def test_41_names_render_byte_exact(name: bytes) -> None:
    assert (
        render_response(ReserveLine(b"T", name, b"be1!p"))
        == b'T RESERVE "' + name + b'" "be1!p"\r\n'
    )


def test_greeting_master_with_tls_is_the_five_lines_of_case_1() -> None:
    greeting = Greeting(
        mechanisms=(b"PLAIN", b"DIGEST-MD5", b"SCRAM-SHA-1", b"CRAM-MD5"),
        servername=b"mupmaster.test",
        implementation=b"Cyrus IMAP",
        version=b"3.6.1-Debian-3.6.1-4+deb12u5",
        role=t.ROLE_MASTER,
        starttls=True,
    )
    assert render_response(greeting) == (
        b'* AUTH "PLAIN" "DIGEST-MD5" "SCRAM-SHA-1" "CRAM-MD5"\r\n'
        b"* STARTTLS\r\n"
        b'* COMPRESS "DEFLATE"\r\n'
        b"* PARTIAL-UPDATE\r\n"
        b'* OK MUPDATE "mupmaster.test" "Cyrus IMAP" "3.6.1-Debian-3.6.1-4+deb12u5" "(master)"\r\n'
    )


def test_greeting_slave_without_mechanisms_or_compress() -> None:
    greeting = Greeting((), b"fe1.test", b"x", b"1", b"mupdate://127.0.0.1:15493", compress=False)
    assert render_response(greeting) == (
        b"* AUTH\r\n* PARTIAL-UPDATE\r\n"
        b'* OK MUPDATE "fe1.test" "x" "1" "mupdate://127.0.0.1:15493"\r\n'
    )


@pytest.mark.parametrize(
    "event",
    [
        Done(b"", Status.OK, b"x"),
        Done(b"a b", Status.OK, b"x"),
        Done(b"T", Status.OK, b"a\r\nb", quoted=False),
        MailboxLine(b"T\r", b"a", b"b", b"c"),
        Greeting((b"A\nB",), b"s", b"i", b"v", b"r"),
        Find(b"T", b"x"),
    ],
)
def test_unrenderable_responses_are_our_bug(event: object) -> None:
    with pytest.raises(LocalProtocolError):
        render_response(event)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (
            Authenticate(b"A01", b"PLAIN", b"AGFkbWluAHNlY3JldA=="),
            b'A01 AUTHENTICATE "PLAIN" "AGFkbWluAHNlY3JldA=="\r\n',
        ),
        (Authenticate(b"A01", b"SCRAM-SHA-1"), b'A01 AUTHENTICATE "SCRAM-SHA-1"\r\n'),
        (Authenticate(b"A01", b"PLAIN", b"="), b'A01 AUTHENTICATE "PLAIN" "="\r\n'),
        (Starttls(b"S01"), b"S01 STARTTLS\r\n"),
        (Compress(b"Z01", b"DEFLATE"), b'Z01 COMPRESS "DEFLATE"\r\n'),
        (Logout(b"Q01"), b"Q01 LOGOUT\r\n"),
        (Noop(b"N0"), b"N0 NOOP\r\n"),
        (Find(b"X0", b"user.a"), b'X0 FIND "user.a"\r\n'),
        (List(b"X0"), b"X0 LIST\r\n"),
        (List(b"X0", b"be1!"), b'X0 LIST "be1!"\r\n'),
        (Update(b"U01"), b"U01 UPDATE\r\n"),
        (Update(b"U02", (b"be2", b"be7")), b'U02 UPDATE "be2" "be7"\r\n'),
        (
            Reserve(b"X0", b"user.carol", b"be1.test!default"),
            b'X0 RESERVE "user.carol" "be1.test!default"\r\n',
        ),
        (
            Activate(b"X1", b"user.carol", b"be1.test!default", b"carol\tlrswipkxtecdan\t"),
            b'X1 ACTIVATE "user.carol" "be1.test!default" "carol\tlrswipkxtecdan\t"\r\n',
        ),
        (Deactivate(b"X2", b"a\nb", b"be9!p9"), b'X2 DEACTIVATE {3+}\r\na\nb "be9!p9"\r\n'),
        (Delete(b"X3", b"user.carol.Sent2"), b'X3 DELETE "user.carol.Sent2"\r\n'),
        (SaslResponse(b"Yz1iaXdz"), b"Yz1iaXdz\r\n"),
        (SaslResponse(b""), b"\r\n"),
        (SaslResponse(b"*"), b"*\r\n"),
    ],
)
def test_render_command(command: object, wire: bytes) -> None:
    assert render_command(command) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "command",
    [
        Find(b"T", b"a\0b"),
        Update(b"T", (b"a", b"")),
        Noop(b""),
        Noop(b"a b"),
        SaslResponse(b"a\r\n"),
        Done(b"T", Status.OK, b"x"),
    ],
)
def test_unrenderable_commands_are_our_bug(command: object) -> None:
    with pytest.raises(LocalProtocolError):
        render_command(command)  # type: ignore[arg-type]


def test_renderers_are_also_reachable_from_the_event_modules() -> None:
    from mupdate.protocol import commands, responses

    done = Done(b"T", Status.OK, t.DONE)
    assert responses.render_response(done) == render_response(done) == b'T OK "done"\r\n'
    assert commands.render_command(Noop(b"N0")) == render_command(Noop(b"N0")) == b"N0 NOOP\r\n"

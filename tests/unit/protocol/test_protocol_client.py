"""Client engine: bytes from a server in, events out (protocol doc §3.1-§3.3, §5.1, §5.2,
§6.2; §14 cases 1, 3, 30-33, 61, 62). Every input is also fed one byte at a time."""

from __future__ import annotations

import pytest
from protocol_helpers import Failed, feed_client

from mupdate.protocol import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    Bye,
    Capability,
    ClientConnection,
    ClientState,
    DeleteLine,
    Done,
    LocalProtocolError,
    MailboxLine,
    ProtocolLimits,
    ReserveLine,
    SaslChallenge,
    ServerReady,
    Starttls,
    Status,
)

MASTER_BANNER = (
    b'* AUTH "PLAIN" "DIGEST-MD5" "SCRAM-SHA-1" "CRAM-MD5"\r\n'
    b"* STARTTLS\r\n"
    b'* COMPRESS "DEFLATE"\r\n'
    b"* PARTIAL-UPDATE\r\n"
    b'* OK MUPDATE "mupmaster.test" "Cyrus IMAP" "3.6.1-Debian-3.6.1-4+deb12u5" "(master)"\r\n'
)
SHORT_BANNER = b'* AUTH "PLAIN"\r\n* OK MUPDATE "s" "i" "v" "(master)"\r\n'


def ready_client(**kwargs: object) -> ClientConnection:
    client = ClientConnection(**kwargs)  # type: ignore[arg-type]
    feed_client(client, SHORT_BANNER)
    assert client.state is ClientState.READY
    return client


def both(
    data: bytes, setup: object = ready_client
) -> tuple[list[object], object, ClientConnection]:
    make = setup  # a callable returning a client in the wanted mode
    whole_client = make()  # type: ignore[operator]
    whole = feed_client(whole_client, data)
    bytewise = feed_client(make(), data, bytewise=True)  # type: ignore[operator]
    assert whole == bytewise
    return whole[0], whole[1], whole_client


def test_01_master_banner() -> None:
    events, sentinel, client = both(MASTER_BANNER, ClientConnection)
    assert events == [
        Capability(b"AUTH", (b"PLAIN", b"DIGEST-MD5", b"SCRAM-SHA-1", b"CRAM-MD5")),
        Capability(b"STARTTLS"),
        Capability(b"COMPRESS", (b"DEFLATE",)),
        Capability(b"PARTIAL-UPDATE"),
        ServerReady(
            (
                b"MUPDATE",
                b"mupmaster.test",
                b"Cyrus IMAP",
                b"3.6.1-Debian-3.6.1-4+deb12u5",
                b"(master)",
            )
        ),
    ]
    assert sentinel is NEED_DATA
    assert client.state is ClientState.READY


def test_banner_without_mechanisms_and_odd_lines() -> None:
    data = b'* AUTH\r\n* auth x y\r\n* FOO "unterminated\r\n* ok whatever else\r\n'
    events, _, _ = both(data, ClientConnection)
    assert events == [
        Capability(b"AUTH"),
        Capability(b"AUTH", (b"x", b"y")),
        Capability(b"FOO", (b'"unterminated',)),
        ServerReady((b"whatever", b"else")),
    ]


def test_server_unable_bye_with_trailing_nul_closes() -> None:
    events, sentinel, client = both(b'* BYE "Server Unable"\r\n\0', ClientConnection)
    assert events == [Bye(b"Server Unable")]
    assert sentinel is PAUSED
    assert client.state is ClientState.CLOSED


def test_banner_line_without_star_is_an_error() -> None:
    events, sentinel, client = both(b"hello\r\n", ClientConnection)
    assert events == [Failed("not a banner line: b'hello'")]
    assert (sentinel, client.state) == (PAUSED, ClientState.CLOSED)


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (b'X1 OK "done"\r\n', Done(b"X1", Status.OK, b"done")),
        (b'X1 ok "done"\r\n', Done(b"X1", Status.OK, b"done")),
        (b'X1 NO "mailbox already exists"\r\n', Done(b"X1", Status.NO, b"mailbox already exists")),
        (b'X1 BAD ""\r\n', Done(b"X1", Status.BAD, b"")),
        (b"X1 OK {3+}\r\na\nb\r\n", Done(b"X1", Status.OK, b"a\nb")),
        (b'* OK "x"\r\n', Done(b"*", Status.OK, b"x")),
        (b'* BYE "bye"\r\n', Bye(b"bye")),
        (
            b'T15 MAILBOX "user.a" "be1!p" "a\tlrs\t"\r\n',
            MailboxLine(b"T15", b"user.a", b"be1!p", b"a\tlrs\t"),
        ),
        (
            b"T15 MAILBOX {10+}\r\nuser.alice {11+}\r\nbe1!default {0+}\r\n\r\n",
            MailboxLine(b"T15", b"user.alice", b"be1!default", b""),
        ),
        (b"T13 RESERVE {1}\r\na {2}\r\nb!\r\n", ReserveLine(b"T13", b"a", b"b!")),
        (b"U01 DELETE {5+}\r\na\r\nbc\r\n", DeleteLine(b"U01", b"a\r\nbc")),
        (b"U01 DELETE {3+}\r\na\0b\r\n", DeleteLine(b"U01", b"a\0b")),
    ],
)
def test_ready_mode_responses(data: bytes, event: object) -> None:
    events, _, _ = both(data)
    assert events == [event]


@pytest.mark.parametrize(
    "data",
    [
        b"U01 OK streaming starts\r\n",  # case 62: unquoted text
        b"X1 OK\r\n",
        b'X1 OK "a" "b"\r\n',
        b'X1 OK "a" \r\n',
        b'X1 OK "unterminated\r\n',
        b'T1 MAILBOX "a" "b"\r\n',
        b'T1 RESERVE "a" "b" "c"\r\n',
        b"T1 DELETE atom\r\n",
        b"+ go ahead\r\n",
        b"X1 FROB\r\n",
        b"\r\n",
        b'X1 OK [CODE] "x"\r\n',
    ],
)
def test_ready_mode_protocol_errors_close(data: bytes) -> None:
    events, sentinel, client = both(data + b'X2 OK "later"\r\n')
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert (sentinel, client.state) == (PAUSED, ClientState.CLOSED)


def test_literal_over_limit_is_an_error() -> None:
    events, _, _ = both(
        b"T1 DELETE {11+}\r\n" + b"x" * 11 + b"\r\n",
        lambda: ready_client(limits=ProtocolLimits(max_literal=10)),
    )
    assert events == [Failed("Literal too long")]


def sasl_client() -> ClientConnection:
    client = ready_client()
    assert (
        client.send(Authenticate(b"A01", b"SCRAM-SHA-1", b"biws"))
        == b'A01 AUTHENTICATE "SCRAM-SHA-1" "biws"\r\n'
    )
    assert client.state is ClientState.AUTHENTICATING
    return client


def test_32_sasl_exchange() -> None:
    data = b'cj15SW54\r\ndj1VdTYz\r\n\r\nA01 OK "Authenticated"\r\nX0 OK "done"\r\n'
    events, _, client = both(data, sasl_client)
    assert events == [
        SaslChallenge(b"r=yInx"),
        SaslChallenge(b"v=Uu63"),
        SaslChallenge(b""),
        Done(b"A01", Status.OK, b"Authenticated"),
        Done(b"X0", Status.OK, b"done"),
    ]
    assert client.state is ClientState.READY


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (
            b"A01 NO Client canceled authentication",
            Done(b"A01", Status.NO, b"Client canceled authentication", quoted=False),
        ),
        (b'A01 NO "undefined error!"', Done(b"A01", Status.NO, b"undefined error!")),
        (b"A01 NO", Done(b"A01", Status.NO, b"", quoted=False)),
        (b'A01 BAD "already authenticated"', Done(b"A01", Status.BAD, b"already authenticated")),
        (b'* BYE "idle for too long"', Bye(b"idle for too long")),
    ],
)
def test_30_33_sasl_endings(line: bytes, event: object) -> None:
    events, _, _ = both(line + b"\r\n", sasl_client)
    assert events == [event]


@pytest.mark.parametrize("line", [b"not base64!", b'A02 OK "other tag"', b"abc"])
def test_sasl_stray_line_is_an_error(line: bytes) -> None:
    events, _, client = both(line + b"\r\n", sasl_client)
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert client.state is ClientState.CLOSED


def test_sasl_mode_requested_during_banner_starts_after_ok() -> None:
    client = ClientConnection()
    client.send(Authenticate(b"A01", b"PLAIN", b"AGFkbWluAHNlY3JldA=="))
    events, _ = feed_client(client, SHORT_BANNER + b'A01 OK "Authenticated"\r\n')
    assert events[-2:] == [
        ServerReady((b"MUPDATE", b"s", b"i", b"v", b"(master)")),
        Done(b"A01", Status.OK, b"Authenticated"),
    ]
    assert client.state is ClientState.READY


def starttls_client() -> ClientConnection:
    client = ready_client()
    assert client.send(Starttls(b"S01")) == b"S01 STARTTLS\r\n"
    return client


def test_03_starttls_ok_pauses_drops_plaintext_and_rereads_banner() -> None:
    events, sentinel, client = both(
        b"S01 OK Begin TLS negotiation now\r\n* junk\r\n", starttls_client
    )
    assert events == [Done(b"S01", Status.OK, b"Begin TLS negotiation now", quoted=False)]
    assert (sentinel, client.state) == (PAUSED, ClientState.TLS_NEGOTIATING)
    client.tls_started()
    assert client.tls_active
    events, _ = feed_client(client, SHORT_BANNER)
    assert events == [
        Capability(b"AUTH", (b"PLAIN",)),
        ServerReady((b"MUPDATE", b"s", b"i", b"v", b"(master)")),
    ]


def test_05_starttls_refused_returns_to_ready() -> None:
    data = b'S01 BAD Already did a successful Starttls\r\nX1 OK "x"\r\n'
    events, _, client = both(data, starttls_client)
    assert events == [
        Done(b"S01", Status.BAD, b"Already did a successful Starttls", quoted=False),
        Done(b"X1", Status.OK, b"x"),
    ]
    assert client.state is ClientState.READY


def test_starttls_unexpected_reply_is_an_error() -> None:
    events, _, _ = both(b'X9 OK "x"\r\n', starttls_client)
    assert len(events) == 1
    assert isinstance(events[0], Failed)


def test_misuse_is_local_error() -> None:
    client = ready_client()
    with pytest.raises(LocalProtocolError):
        client.tls_started()
    client.expect_sasl(b"A01")
    with pytest.raises(LocalProtocolError):
        client.expect_starttls(b"S01")


def test_expect_responses_leaves_a_read_mode() -> None:
    client = sasl_client()
    client.expect_responses()
    assert client.state is ClientState.READY
    events, _ = feed_client(client, b'X1 OK "x"\r\n')
    assert events == [Done(b"X1", Status.OK, b"x")]
    with pytest.raises(LocalProtocolError):
        client.expect_responses()


def test_eof_closes() -> None:
    client = ready_client()
    client.receive_data(b'X1 OK "x"\r\nX2 OK')
    client.receive_data(b"")
    events, sentinel = feed_client(client, b"")
    assert events == [Done(b"X1", Status.OK, b"x")]
    assert (sentinel, client.state) == (PAUSED, ClientState.CLOSED)


def test_section_16_cyrus_slave_session_transcript() -> None:
    """The server side of the observed 3.6.1 slave session (protocol doc §16)."""
    client = ClientConnection()
    banner = b'* AUTH "PLAIN"\r\n* PARTIAL-UPDATE\r\n* OK MUPDATE "fake" "fake" "0" "(master)"\r\n'
    assert feed_client(client, banner, bytewise=True)[0][-1] == ServerReady(
        (b"MUPDATE", b"fake", b"fake", b"0", b"(master)")
    )
    client.send(Authenticate(b"A01", b"PLAIN", b"AGFkbWluAHNlY3JldA=="))
    dump = (
        b'A01 OK "welcome"\r\n'
        b"U01 MAILBOX {6+}\r\nuser.a {6+}\r\nbe1!p1 {6+}\r\na\tlrs\t\r\n"
        b"U01 RESERVE {6+}\r\nuser.b {6+}\r\nbe2!p2\r\n"
        b'U01 OK "streaming starts"\r\n'
        b'N0 OK "noop"\r\n'
    )
    events, sentinel = feed_client(client, dump, bytewise=True)
    assert events == [
        Done(b"A01", Status.OK, b"welcome"),
        MailboxLine(b"U01", b"user.a", b"be1!p1", b"a\tlrs\t"),
        ReserveLine(b"U01", b"user.b", b"be2!p2"),
        Done(b"U01", Status.OK, b"streaming starts"),
        Done(b"N0", Status.OK, b"noop"),
    ]
    assert sentinel is NEED_DATA

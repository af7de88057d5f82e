"""PLAIN and LOGIN, server and client, sans-I/O (protocol doc §5.1; RFC 4616)."""

from __future__ import annotations

import pytest

from mupdate.sasl.mechanisms import (
    PLAINTEXT_MECHANISMS,
    SUPPORTED_MECHANISMS,
    Challenge,
    CheckPassword,
    ClientMechanism,
    Failure,
    LoginClient,
    LoginServer,
    PlainClient,
    PlainServer,
    ServerMechanism,
    Step,
    client_mechanism,
    server_mechanism,
)

# --- PLAIN server ------------------------------------------------------------------------


def test_plain_with_initial_response() -> None:
    assert PlainServer().start(b"\0admin\0secret") == CheckPassword("admin", "", b"secret")


def test_plain_authzid_is_kept_apart_from_authcid() -> None:
    # O: "cyrus\0admin\0secret" is admin acting as cyrus (§5.1).
    assert PlainServer().start(b"cyrus\0admin\0secret") == CheckPassword(
        "admin", "cyrus", b"secret"
    )


def test_plain_without_initial_response_sends_an_empty_challenge() -> None:
    server = PlainServer()
    assert server.start(None) == Challenge(b"")
    assert server.step(b"\0admin\0secret") == CheckPassword("admin", "", b"secret")


def test_plain_takes_one_response_only() -> None:
    server = PlainServer()
    assert server.start(b"\0admin\0secret") == CheckPassword("admin", "", b"secret")
    assert server.step(b"\0admin\0secret") == Failure("PLAIN takes one response")


def test_plain_after_a_failed_response_takes_no_more() -> None:
    server = PlainServer()
    assert server.start(None) == Challenge(b"")
    assert server.step(b"garbage") == Failure(
        "PLAIN response is not authzid NUL authcid NUL password"
    )
    assert server.step(b"\0admin\0secret") == Failure("PLAIN takes one response")


@pytest.mark.parametrize(
    "response",
    [
        b"",  # the "=" zero-length initial response (§5.1: a SASL failure)
        b"admin",
        b"admin\0secret",
        b"\0admin\0sec\0ret",
        b"\0\0\0",
    ],
)
def test_plain_response_of_the_wrong_shape(response: bytes) -> None:
    assert PlainServer().start(response) == Failure(
        "PLAIN response is not authzid NUL authcid NUL password"
    )


@pytest.mark.parametrize("response", [b"\0\0secret", b"\0admin\0", b"cyrus\0\0"])
def test_plain_needs_user_and_password(response: bytes) -> None:
    assert PlainServer().start(response) == Failure("PLAIN response lacks a user name or password")


def test_plain_user_names_must_be_utf8() -> None:
    assert PlainServer().start(b"\0adm\xffin\0secret") == Failure("user name is not UTF-8")
    assert PlainServer().start(b"\xff\0admin\0secret") == Failure("authorization id is not UTF-8")


def test_plain_password_is_opaque_bytes_and_names_are_decoded() -> None:
    response = "j\u00f6rg\0j\u00f6rg\0".encode() + b"p\xe4ss\xff"
    assert PlainServer().start(response) == CheckPassword("j\u00f6rg", "j\u00f6rg", b"p\xe4ss\xff")


# --- LOGIN server ------------------------------------------------------------------------


def test_login_exchange() -> None:
    server = LoginServer()
    assert server.start(None) == Challenge(b"Username:")
    assert server.step(b"admin") == Challenge(b"Password:")
    assert server.step(b"secret") == CheckPassword("admin", "", b"secret")
    assert server.step(b"again") == Failure("LOGIN exchange already complete")


def test_login_initial_response_is_the_user_name() -> None:
    server = LoginServer()
    assert server.start(b"admin") == Challenge(b"Password:")
    assert server.step(b"secret") == CheckPassword("admin", "", b"secret")


def test_login_empty_initial_response_asks_for_the_user_name() -> None:
    assert LoginServer().start(b"") == Challenge(b"Username:")


def test_login_empty_user_name() -> None:
    server = LoginServer()
    assert server.start(None) == Challenge(b"Username:")
    assert server.step(b"") == Failure("LOGIN user name is empty")


def test_login_user_name_must_be_utf8() -> None:
    server = LoginServer()
    assert server.start(None) == Challenge(b"Username:")
    assert server.step(b"\xc3") == Failure("user name is not UTF-8")


def test_login_empty_password_ends_the_exchange() -> None:
    server = LoginServer()
    assert server.start(b"admin") == Challenge(b"Password:")
    assert server.step(b"") == Failure("LOGIN password is empty")
    assert server.step(b"secret") == Failure("LOGIN exchange already complete")


# --- mechanism registry ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("PLAIN", PlainServer),
        ("plain", PlainServer),
        ("LOGIN", LoginServer),
        ("Login", LoginServer),
    ],
)
def test_server_mechanism_by_name(name: str, cls: type) -> None:
    mechanism = server_mechanism(name)
    assert type(mechanism) is cls
    assert mechanism is not None
    assert mechanism.name == name.upper()


@pytest.mark.parametrize("name", ["CRAM-MD5", "SCRAM-SHA-1", "ANONYMOUS", "", "PLAIN "])
def test_unknown_server_mechanism(name: str) -> None:
    assert server_mechanism(name) is None


def test_server_mechanism_is_fresh_each_time() -> None:
    first = server_mechanism("PLAIN")
    assert first is not None
    assert first.start(b"\0a\0b") == CheckPassword("a", "", b"b")
    second = server_mechanism("PLAIN")
    assert second is not first
    assert second is not None
    assert second.start(b"\0a\0b") == CheckPassword("a", "", b"b")


def test_mechanism_sets() -> None:
    assert SUPPORTED_MECHANISMS == (
        "SCRAM-SHA-512-PLUS",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-512",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
        "LOGIN",
    )
    assert frozenset({"PLAIN", "LOGIN"}) == PLAINTEXT_MECHANISMS


# --- clients -----------------------------------------------------------------------------


def test_plain_client_message() -> None:
    client = PlainClient("admin", "secret")
    assert client.name == "PLAIN"
    assert client.initial() == b"\0admin\0secret"
    assert client.respond(b"") == b"\0admin\0secret"


def test_plain_client_with_authzid_and_utf8() -> None:
    client = PlainClient("j\u00f6rg", "p\u00e4ss", authzid="cyrus")
    assert client.initial() == b"cyrus\0j\xc3\xb6rg\0p\xc3\xa4ss"


def test_login_client_answers_by_prompt() -> None:
    client = LoginClient("admin", "secret", authzid="ignored")
    assert client.name == "LOGIN"
    assert client.initial() is None
    assert client.respond(b"Username:") == b"admin"
    assert client.respond(b"User Name") == b"admin"
    assert client.respond(b"Password:") == b"secret"


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (("PLAIN", "LOGIN"), "PLAIN"),
        (("LOGIN", "PLAIN"), "PLAIN"),
        (("SCRAM-SHA-1", "login"), "SCRAM-SHA-1"),
        (("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"), "SCRAM-SHA-256"),
        (("scram-sha-512", "SCRAM-SHA-256", "PLAIN"), "SCRAM-SHA-512"),
        (("SCRAM-SHA-256-PLUS", "LOGIN"), "LOGIN"),  # no channel binding: no -PLUS
        (("SCRAM-SHA3-512", "DIGEST-MD5", "LOGIN"), "LOGIN"),
        (("plain",), "PLAIN"),
        (("DIGEST-MD5", "CRAM-MD5"), None),
        ((), None),
    ],
)
def test_client_mechanism_preference(offered: tuple[str, ...], expected: str | None) -> None:
    client = client_mechanism(offered, "admin", "secret")
    if expected is None:
        assert client is None
    else:
        assert client is not None
        assert client.name == expected


# --- client against server, no I/O ------------------------------------------------------


def run(client: ClientMechanism, server: ServerMechanism) -> tuple[Step, list[bytes]]:
    """Drive the exchange to its end; return the last step and the challenges sent."""
    challenges: list[bytes] = []
    step = server.start(client.initial())
    for _ in range(5):
        if not isinstance(step, Challenge):
            return step, challenges
        challenges.append(step.data)
        step = server.step(client.respond(step.data))
    raise AssertionError("exchange did not end")


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN"])
def test_client_and_server_back_to_back(name: str) -> None:
    client = client_mechanism((name,), "j\u00f6rg", "p\u00e4ss w\u00f6rd", authzid="")
    server = server_mechanism(name)
    assert client is not None
    assert server is not None
    step, challenges = run(client, server)
    assert step == CheckPassword("j\u00f6rg", "", "p\u00e4ss w\u00f6rd".encode())
    assert challenges == ([] if name == "PLAIN" else [b"Username:", b"Password:"])


def test_plain_client_authzid_back_to_back() -> None:
    step, challenges = run(PlainClient("admin", "secret", authzid="cyrus"), PlainServer())
    assert step == CheckPassword("admin", "cyrus", b"secret")
    assert challenges == []


def test_plain_client_without_initial_response_path() -> None:
    server = PlainServer()
    client = PlainClient("admin", "secret")
    assert server.start(None) == Challenge(b"")
    assert server.step(client.respond(b"")) == CheckPassword("admin", "", b"secret")

"""SCRAM server and client: RFC test vectors, each other, scramp's reference, and refusals."""

from __future__ import annotations

import base64
import datetime
import hashlib

import pytest
import scramp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from mupdate.sasl import (
    PLUS_MECHANISMS,
    SCRAM_MECHANISMS,
    Challenge,
    Failure,
    ScramClient,
    ScramKeys,
    ScramServer,
    Success,
    client_mechanism,
    make_keys,
    server_mechanism,
    tls_server_end_point,
)
from mupdate.sasl.scram import ScramError

BINDING = hashlib.sha256(b"a certificate").digest()


def keys_for(password: str, mechanism: str, users: tuple[str, ...] = ("user",)) -> dict:
    return {user: make_keys(mechanism, password) for user in users}


def lookup_of(table: dict[str, ScramKeys]):
    return table.get


def run_exchange(client: ScramClient, server: ScramServer) -> tuple[object, bytes | None]:
    """Drive both sides to the end; return the server's last step and the client's final
    answer (None when the client refused the server's final message)."""
    step = server.start(client.initial())
    while isinstance(step, Challenge):
        step = server.step(client.respond(step.data))
    if isinstance(step, Success):
        try:
            return step, client.respond(step.data)
        except ScramError:
            return step, None
    return step, None


# --- RFC test vectors ---------------------------------------------------------------------


def test_rfc5802_scram_sha_1_vector() -> None:
    salt = base64.b64decode("QSXCR+Q6sek8bf92")
    keys = make_keys("SCRAM-SHA-1", "pencil", iterations=4096, salt=salt)
    server = ScramServer("SCRAM-SHA-1", {"user": keys}.get, nonce="3rfcNHYJY1ZVvWVs7j")
    client = ScramClient("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
    first = client.initial()
    assert first == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    server_first = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    assert server.start(first) == Challenge(server_first)
    final = client.respond(server_first)
    assert final == (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    assert server.step(final) == Success("user", "", b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    assert client.respond(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") == b""


def test_rfc7677_scram_sha_256_vector() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    keys = make_keys("SCRAM-SHA-256", "pencil", iterations=4096, salt=salt)
    server_nonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    server = ScramServer("SCRAM-SHA-256", {"user": keys}.get, nonce=server_nonce)
    client = ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.initial() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert server.start(client.initial()) == Challenge(server_first)
    final = client.respond(server_first)
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    verifier = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert server.step(final) == Success("user", "", verifier)
    assert client.respond(verifier) == b""


# --- our client against our server ---------------------------------------------------------


@pytest.mark.parametrize("mechanism", SCRAM_MECHANISMS)
def test_round_trip_with_authzid_as_cyrus_sends_it(mechanism: str) -> None:
    table = keys_for("s3cret", mechanism, ("admin",))
    client = ScramClient(mechanism, "admin", "s3cret", authzid="admin")
    assert client.initial().startswith(b"n,a=admin,n=admin,r=")  # type: ignore[union-attr]
    step, answer = run_exchange(client, ScramServer(mechanism, table.get))
    assert isinstance(step, Success)
    assert (step.authcid, step.authzid) == ("admin", "admin")
    assert step.data.startswith(b"v=")
    assert answer == b""


def test_round_trip_escapes_and_saslprep() -> None:
    table = {"a,b=c": make_keys("SCRAM-SHA-256", "p\u00e4ss")}
    client = ScramClient("SCRAM-SHA-256", "a,b=c", "p\u00e4ss", authzid="x=y")
    assert b"n=a=2Cb=3Dc," in client.initial()  # type: ignore[operator]
    step, answer = run_exchange(client, ScramServer("SCRAM-SHA-256", table.get))
    assert step == Success("a,b=c", "x=y", step.data)  # type: ignore[union-attr]
    assert answer == b""


@pytest.mark.parametrize("mechanism", PLUS_MECHANISMS)
def test_plus_round_trip(mechanism: str) -> None:
    table = keys_for("pw", mechanism)
    client = ScramClient(mechanism, "user", "pw", channel_binding=BINDING)
    assert client.initial().startswith(b"p=tls-server-end-point,,")  # type: ignore[union-attr]
    server = ScramServer(mechanism, table.get, channel_binding=BINDING, plus_offered=True)
    step, answer = run_exchange(client, server)
    assert isinstance(step, Success)
    assert answer == b""


def test_plus_with_a_different_certificate_fails() -> None:
    table = keys_for("pw", "SCRAM-SHA-256")
    client = ScramClient("SCRAM-SHA-256-PLUS", "user", "pw", channel_binding=BINDING)
    server = ScramServer(
        "SCRAM-SHA-256-PLUS", table.get, channel_binding=b"\x01" * 32, plus_offered=True
    )
    step, _ = run_exchange(client, server)
    assert step == Failure("SCRAM channel binding does not match")


def test_empty_challenge_first_then_client_first() -> None:
    table = keys_for("pw", "SCRAM-SHA-1")
    server = ScramServer("SCRAM-SHA-1", table.get)
    client = ScramClient("SCRAM-SHA-1", "user", "pw")
    assert server.start(None) == Challenge(b"")
    step = server.step(client.respond(b""))
    assert isinstance(step, Challenge)
    step = server.step(client.respond(step.data))
    assert isinstance(step, Success)


# --- against scramp, the reference -----------------------------------------------------------


@pytest.mark.parametrize("mechanism", SCRAM_MECHANISMS)
def test_scramp_client_against_our_server(mechanism: str) -> None:
    table = keys_for("pencil", mechanism)
    ours = ScramServer(mechanism, table.get)
    theirs = scramp.ScramClient([mechanism], "user", "pencil")
    step = ours.start(theirs.get_client_first().encode())
    assert isinstance(step, Challenge)
    theirs.set_server_first(step.data.decode())
    step = ours.step(theirs.get_client_final().encode())
    assert isinstance(step, Success)
    theirs.set_server_final(step.data.decode())  # raises if our v= were wrong


@pytest.mark.parametrize("mechanism", SCRAM_MECHANISMS)
def test_our_client_against_scramp_server(mechanism: str) -> None:
    reference = scramp.ScramMechanism(mechanism)
    info = reference.make_auth_info("pencil")
    theirs = reference.make_server(lambda user: info if user == "user" else None)
    ours = ScramClient(mechanism, "user", "pencil")
    theirs.set_client_first(ours.initial().decode())  # type: ignore[union-attr]
    theirs.set_client_final(ours.respond(theirs.get_server_first().encode()).decode())
    assert ours.respond(theirs.get_server_final().encode()) == b""


@pytest.mark.parametrize("mechanism", PLUS_MECHANISMS)
def test_plus_against_scramp_both_ways(mechanism: str) -> None:
    base = mechanism.removesuffix("-PLUS")
    binding = ("tls-server-end-point", BINDING)
    table = keys_for("pencil", base)
    ours = ScramServer(mechanism, table.get, channel_binding=BINDING, plus_offered=True)
    theirs_client = scramp.ScramClient([mechanism], "user", "pencil", channel_binding=binding)
    step = ours.start(theirs_client.get_client_first().encode())
    assert isinstance(step, Challenge)
    theirs_client.set_server_first(step.data.decode())
    step = ours.step(theirs_client.get_client_final().encode())
    assert isinstance(step, Success)
    theirs_client.set_server_final(step.data.decode())

    reference = scramp.ScramMechanism(mechanism)
    info = reference.make_auth_info("pencil")
    theirs = reference.make_server(lambda user: info, channel_binding=binding)
    client = ScramClient(mechanism, "user", "pencil", channel_binding=BINDING)
    theirs.set_client_first(client.initial().decode())  # type: ignore[union-attr]
    theirs.set_client_final(client.respond(theirs.get_server_first().encode()).decode())
    assert client.respond(theirs.get_server_final().encode()) == b""


def test_stored_keys_match_scramp() -> None:
    salt = b"0123456789abcdef"
    for mechanism in SCRAM_MECHANISMS:
        salt_, stored, server, count = scramp.ScramMechanism(mechanism).make_auth_info(
            "pw", iteration_count=5000, salt=salt
        )
        assert make_keys(mechanism, "pw", iterations=5000, salt=salt) == ScramKeys(
            salt_, count, stored, server
        )


# --- refusals -------------------------------------------------------------------------------


def test_wrong_password_fails_at_the_proof() -> None:
    table = keys_for("right", "SCRAM-SHA-256")
    step, _ = run_exchange(
        ScramClient("SCRAM-SHA-256", "user", "wrong"), ScramServer("SCRAM-SHA-256", table.get)
    )
    assert step == Failure("wrong password or unknown user")


def test_unknown_user_gets_a_plausible_challenge_and_fails_at_the_proof() -> None:
    server = ScramServer("SCRAM-SHA-256", {}.get)
    client = ScramClient("SCRAM-SHA-256", "nobody", "pw")
    first = server.start(client.initial())
    assert isinstance(first, Challenge)
    assert b",s=" in first.data
    assert first.data.endswith(b",i=4096")
    again = ScramServer("SCRAM-SHA-256", {}.get).start(client.initial())
    assert isinstance(again, Challenge)
    salt = first.data.split(b",")[1]
    assert salt == again.data.split(b",")[1]  # stable: probing twice reveals nothing
    assert server.step(client.respond(first.data)) == Failure("wrong password or unknown user")


def test_tampered_proof_nonce_and_binding() -> None:
    table = keys_for("pw", "SCRAM-SHA-1")
    for tamper, reason in (
        (lambda m: m[:-6] + b"AAAAA=", "wrong password or unknown user"),
        (lambda m: m.replace(b",r=", b",r=x"), "SCRAM nonce does not match"),
        (lambda m: m.replace(b"c=biws", b"c=eSws"), "SCRAM channel binding does not match"),
        (lambda m: m.replace(b",p=", b",p=!!"), "SCRAM proof is malformed"),
        (lambda m: b"r=x,c=biws,p=abc", "SCRAM client-final must be c=...,r=...,p=..."),
        (lambda m: b"garbage", "SCRAM client-final is malformed"),
    ):
        server = ScramServer("SCRAM-SHA-1", table.get)
        client = ScramClient("SCRAM-SHA-1", "user", "pw")
        step = server.start(client.initial())
        assert isinstance(step, Challenge)
        assert server.step(tamper(client.respond(step.data))) == Failure(reason)


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"x,,n=user,r=abc", "SCRAM channel-binding flag must be n, y or p="),
        (b"n,b=admin,n=user,r=abc", "SCRAM gs2 authzid must be a=<name>"),
        (b"n,,r=abc,n=user", "SCRAM client-first must be n=user,r=nonce"),
        (b"n,,n=user", "SCRAM client-first must be n=user,r=nonce"),
        (b"n,,n=us=er,r=abc", "SCRAM user name or nonce is empty or badly escaped"),
        (b"n,,n=user,r=abc,m=ext", "SCRAM mandatory extensions are not supported"),
        (b"n,,", "SCRAM client-first must be n=user,r=nonce"),
        (b"p=tls-unique,,n=user,r=abc", "channel binding asked for on a mechanism without -PLUS"),
        (b"\xff", "SCRAM message is not UTF-8"),
    ],
)
def test_malformed_client_first(first: bytes, reason: str) -> None:
    server = ScramServer("SCRAM-SHA-256", keys_for("pw", "SCRAM-SHA-256").get)
    assert server.start(first) == Failure(reason)
    assert server.step(b"anything") == Failure("SCRAM exchange already complete")


def test_y_flag_while_plus_is_offered_is_a_downgrade() -> None:
    table = keys_for("pw", "SCRAM-SHA-256")
    server = ScramServer("SCRAM-SHA-256", table.get, channel_binding=BINDING, plus_offered=True)
    assert server.start(b"y,,n=user,r=abc") == Failure(
        "client thinks we lack channel binding: a downgrade"
    )
    plain = ScramServer("SCRAM-SHA-256", table.get)  # no TLS: y is fine
    assert isinstance(plain.start(b"y,,n=user,r=abc"), Challenge)


def test_plus_needs_the_tls_server_end_point_flag() -> None:
    table = keys_for("pw", "SCRAM-SHA-256")
    server = ScramServer(
        "SCRAM-SHA-256-PLUS", table.get, channel_binding=BINDING, plus_offered=True
    )
    assert server.start(b"n,,n=user,r=abc") == Failure(
        "SCRAM-SHA-256-PLUS needs channel binding tls-server-end-point"
    )


def test_plus_without_binding_data_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="channel-binding"):
        ScramServer("SCRAM-SHA-1-PLUS", {}.get)
    with pytest.raises(ValueError, match="channel-binding"):
        ScramClient("SCRAM-SHA-1-PLUS", "u", "p")
    assert server_mechanism("SCRAM-SHA-1-PLUS", lambda mech: {}.get) is None


def test_client_refuses_a_forged_server_signature_and_hostile_challenges() -> None:
    client = ScramClient("SCRAM-SHA-256", "user", "pw", nonce="abc")
    with pytest.raises(ScramError, match="nonce"):
        client.respond(b"r=zzz,s=c2FsdA==,i=4096")
    client = ScramClient("SCRAM-SHA-256", "user", "pw", nonce="abc")
    with pytest.raises(ScramError, match="iteration"):
        client.respond(b"r=abcdef,s=c2FsdA==,i=999999999")
    client = ScramClient("SCRAM-SHA-256", "user", "pw", nonce="abc")
    client.respond(b"r=abcdef,s=c2FsdA==,i=4096")
    with pytest.raises(ScramError, match="signature"):
        client.respond(b"v=" + base64.b64encode(b"x" * 32))
    client = ScramClient("SCRAM-SHA-256", "user", "pw", nonce="abc")
    client.respond(b"r=abcdef,s=c2FsdA==,i=4096")
    with pytest.raises(ScramError, match="refused: invalid-proof"):
        client.respond(b"e=invalid-proof")


# --- selection and the glue's factory --------------------------------------------------------


def test_server_mechanism_builds_scram_with_the_base_lookup() -> None:
    asked: list[str] = []

    def lookup_for(mechanism: str):
        asked.append(mechanism)
        return keys_for("pw", mechanism).get

    server = server_mechanism("scram-sha-512-plus", lookup_for, BINDING, True)
    assert isinstance(server, ScramServer)
    assert server.name == "SCRAM-SHA-512-PLUS"
    assert asked == ["SCRAM-SHA-512"]
    assert server_mechanism("SCRAM-SHA-256") is None  # no lookup: cannot run


def test_client_prefers_plus_only_with_binding_data() -> None:
    offered = ("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")
    plain = client_mechanism(offered, "u", "p")
    bound = client_mechanism(offered, "u", "p", channel_binding=BINDING)
    assert plain is not None
    assert bound is not None
    assert (plain.name, bound.name) == ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")


# --- tls-server-end-point ---------------------------------------------------------------------


def _certificate(algorithm: hashes.HashAlgorithm) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "master.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [(hashes.SHA256(), "sha256"), (hashes.SHA384(), "sha384"), (hashes.SHA512(), "sha512")],
)
def test_tls_server_end_point_hashes_with_the_signature_hash(
    algorithm: hashes.HashAlgorithm, digest: str
) -> None:
    der = _certificate(algorithm)
    assert tls_server_end_point(der) == hashlib.new(digest, der).digest()
    from scramp.core import CBindData  # the reference's own RFC 5929 rule

    assert tls_server_end_point(der) == bytes(CBindData.from_der(der))

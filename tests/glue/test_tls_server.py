"""STARTTLS, implicit TLS, mupdate_tls_required and EXTERNAL through real TLS in memory
(protocol doc §3.1-§3.2, §5.2, §14 cases 2-6; issue 4 items 1-2).

The master's server protocol and a byte-level client are joined by ``tests.helpers.tlspipe``:
OpenSSL does the handshake and the certificate checks, nothing touches a socket.
"""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from mupdate.config.tls_settings import ClientTls, ServerTls
from mupdate.net.client import MupdateClientProtocol, TlsFailed
from mupdate.net.login import TlsRequired, secure_session
from mupdate.tls import client_options, server_options
from tests.helpers.certs import Pki, session_pki  # noqa: F401 - fixture
from tests.helpers.glue import ADMIN, PASSWORD, MasterRig, quoted_b64
from tests.helpers.tlspipe import Pump, connect


class Raw(Protocol):
    """A client that only records what it receives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: object = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = reason

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


@pytest.fixture
def pki(session_pki: Pki) -> Pki:  # noqa: F811 - the imported fixture
    return session_pki


def server_tls(pki: Pki, **changes: object) -> ServerTls:
    return replace(ServerTls(cert=pki.server.cert, key=pki.server.key), **changes)  # type: ignore[arg-type]


def make_rig(tmp_path, pki: Pki, **settings: object) -> MasterRig:
    tls = settings.pop("tls", None) or server_tls(pki)
    settings.setdefault("loopback_plaintext", False)
    rig = MasterRig(tmp_path, tls=tls, **settings)
    rig.factory.tls_options = server_options(rig.settings.tls)
    return rig


def client_opts(pki: Pki, *, cert=None, ca=None, host="127.0.0.1"):
    tls = ClientTls(
        ca_file=ca or pki.ca,
        cert=cert.cert if cert else None,
        key=cert.key if cert else None,
    )
    return client_options(tls, host)


class Session:
    def __init__(self, rig: MasterRig, pki: Pki, **connect_args: object) -> None:
        self.rig = rig
        self.pki = pki
        self.proto = rig.factory.buildProtocol(None)
        self.raw = Raw()
        self.pump: Pump = connect(self.proto, self.raw, **connect_args)  # type: ignore[arg-type]

    def send(self, data: bytes) -> bytes:
        self.pump.client.write(data)
        self.pump.flush()
        return self.raw.take()

    def starttls(self, tag: bytes = b"S01", cert=None) -> tuple[bytes, bytes]:
        """STARTTLS; returns (the reply in clear, the banner under TLS)."""
        reply = self.send(tag + b" STARTTLS\r\n")
        self.pump.client.startTLS(client_opts(self.pki, cert=cert))
        self.pump.flush()
        return reply, self.raw.take()

    def login_plain(self) -> bytes:
        return self.send(
            b'A01 AUTHENTICATE "PLAIN" ' + quoted_b64(f"\0{ADMIN}\0{PASSWORD}") + b"\r\n"
        )


def lines(banner: bytes) -> list[bytes]:
    return banner.split(b"\r\n")[:-1]


# -- greeting and STARTTLS (§3.1, §3.2, §5.2; cases 2-6) ---------------------------------


def test_greeting_offers_starttls_second_without_plain(tmp_path, pki):
    s = Session(make_rig(tmp_path, pki), pki)
    banner = lines(s.raw.take())
    assert banner[0].startswith(b"* AUTH")
    assert b'"PLAIN"' not in banner[0]  # case 2: allowplaintext off, not under TLS
    assert banner[1:3] == [b"* STARTTLS", b"* PARTIAL-UPDATE"]
    assert banner[3].startswith(b'* OK MUPDATE "master.test" ')
    assert len(banner) == 4


def test_starttls_ok_then_banner_again_without_starttls_and_with_plain(tmp_path, pki):
    s = Session(make_rig(tmp_path, pki), pki)
    first = lines(s.raw.take())
    reply, banner = s.starttls()
    assert reply == b"S01 OK Begin TLS negotiation now\r\n"  # case 3, unquoted
    after = lines(banner)
    assert b"* STARTTLS" not in after
    assert b'"PLAIN"' in after[0]  # case 2: PLAIN appears under TLS
    assert after[1:] == [first[2], first[3]]  # PARTIAL-UPDATE, OK line unchanged
    assert s.proto.engine.tls_active
    assert s.login_plain() == b'A01 OK "Authenticated"\r\n'


def test_plaintext_pipelined_behind_starttls_is_discarded(tmp_path, pki):
    s = Session(make_rig(tmp_path, pki), pki)
    s.raw.take()
    reply = s.send(b"S01 STARTTLS\r\nX NOOP\r\n")  # case 4: one packet
    assert reply == b"S01 OK Begin TLS negotiation now\r\n"
    s.pump.client.startTLS(client_opts(pki))
    s.pump.flush()
    banner = s.raw.take()
    assert banner.startswith(b"* AUTH")
    assert b"X " not in banner
    # The NOOP never ran: no reply, in clear or under TLS, and the session is fresh.
    assert s.send(b"Y NOOP\r\n") == b'Y BAD "Please login first"\r\n'
    assert "NOOP" not in s.rig.factory.counters.commands  # neither reached a handler


def test_starttls_under_tls_is_refused(tmp_path, pki):
    s = Session(make_rig(tmp_path, pki), pki)
    s.raw.take()
    s.starttls()
    assert s.send(b"S02 STARTTLS\r\n") == b"S02 BAD Already did a successful Starttls\r\n"


def test_starttls_after_authentication_is_refused(tmp_path, pki):
    s = Session(make_rig(tmp_path, pki, loopback_plaintext=True), pki)
    s.raw.take()
    assert s.login_plain() == b'A01 OK "Authenticated"\r\n'
    assert s.send(b"T7 STARTTLS\r\n") == b"T7 BAD Can't Starttls after authentication\r\n"
    assert not s.proto.engine.tls_active


def test_without_a_certificate_starttls_is_unknown(tmp_path, pki):
    rig = MasterRig(tmp_path, loopback_plaintext=False)
    s = Session(rig, pki)
    assert b"STARTTLS" not in s.raw.take()
    assert s.send(b"S01 STARTTLS\r\n") == b'S01 BAD "Unrecognized command"\r\n'


def test_failed_handshake_closes_only_that_connection(tmp_path, pki):
    rig = make_rig(tmp_path, pki)
    s = Session(rig, pki)
    s.raw.take()
    s.send(b"S01 STARTTLS\r\n")
    s.pump.client.startTLS(client_opts(pki, ca=pki.other_ca))  # does not trust our server
    s.pump.flush()
    assert s.pump.server.lost
    assert s.pump.client.lost
    assert s.proto not in rig.factory.sessions
    other = Session(rig, pki)
    assert b"* STARTTLS" in other.raw.take()


# -- implicit TLS ----------------------------------------------------------------------


def test_implicit_tls_greets_without_starttls(tmp_path, pki):
    rig = make_rig(tmp_path, pki)
    s = Session(
        rig,
        pki,
        implicit_server_tls=rig.factory.tls_options,
        implicit_client_tls=client_opts(pki),
    )
    banner = lines(s.raw.take())
    assert b"* STARTTLS" not in banner
    assert b'"PLAIN"' in banner[0]
    assert s.send(b"S1 STARTTLS\r\n") == b"S1 BAD Already did a successful Starttls\r\n"
    assert s.login_plain() == b'A01 OK "Authenticated"\r\n'


# -- mupdate_tls_required ----------------------------------------------------------------


def test_tls_required_offers_nothing_and_refuses_login_before_tls(tmp_path, pki):
    rig = make_rig(tmp_path, pki, tls=server_tls(pki, required=True), loopback_plaintext=True)
    s = Session(rig, pki)
    banner = lines(s.raw.take())
    assert banner[0] == b"* AUTH"
    assert banner[1] == b"* STARTTLS"
    assert s.login_plain() == b""  # the failed-login pause
    rig.clock.advance(rig.settings.failed_login_pause)
    s.pump.flush()
    assert s.raw.take() == b'A01 NO "mechanism not available"\r\n'
    _, after = s.starttls()
    assert b'"PLAIN"' in lines(after)[0]
    assert s.login_plain() == b'A01 OK "Authenticated"\r\n'


# -- EXTERNAL (issue 4 item 2) -----------------------------------------------------------


def external_rig(tmp_path, pki: Pki, **tls_changes: object) -> MasterRig:
    return make_rig(tmp_path, pki, tls=server_tls(pki, client_ca_file=pki.ca, **tls_changes))


def test_external_offered_first_and_logs_in_with_a_verified_certificate(tmp_path, pki):
    s = Session(external_rig(tmp_path, pki), pki)
    before = lines(s.raw.take())[0]
    assert b"EXTERNAL" not in before  # no certificate before TLS
    _, banner = s.starttls(cert=pki.client_admin)
    assert lines(banner)[0].startswith(b'* AUTH "EXTERNAL" ')
    assert s.send(b'A01 AUTHENTICATE "EXTERNAL" "="\r\n') == b'A01 OK "Authenticated"\r\n'
    assert s.proto.user == ADMIN


def test_external_without_initial_response_asks_for_the_authzid(tmp_path, pki):
    s = Session(external_rig(tmp_path, pki), pki)
    s.raw.take()
    s.starttls(cert=pki.client_admin)
    assert s.send(b'A01 AUTHENTICATE "EXTERNAL"\r\n') == b"\r\n"  # empty challenge (§5.1)
    assert s.send(base64.b64encode(b"cyrus") + b"\r\n") == b'A01 OK "Authenticated"\r\n'
    assert s.proto.user == "cyrus"  # an admin may act as another identity, as with PLAIN


def test_external_not_offered_without_a_client_certificate(tmp_path, pki):
    rig = external_rig(tmp_path, pki)
    s = Session(rig, pki)
    s.raw.take()
    _, banner = s.starttls()  # no certificate presented (tls_client_certs: optional)
    assert b"EXTERNAL" not in banner
    assert s.send(b'A01 AUTHENTICATE "EXTERNAL" "="\r\n') == b""
    rig.clock.advance(rig.settings.failed_login_pause)
    s.pump.flush()
    assert s.raw.take() == b'A01 NO "mechanism not available"\r\n'
    assert s.proto.user is None


def test_external_for_a_non_admin_certificate_is_refused(tmp_path, pki):
    rig = external_rig(tmp_path, pki)
    s = Session(rig, pki)
    s.raw.take()
    _, banner = s.starttls(cert=pki.client_joe)
    assert b'"EXTERNAL"' in banner  # verified, so offered; the admin rule decides
    assert s.send(b'A01 AUTHENTICATE "EXTERNAL" "="\r\n') == b""
    rig.clock.advance(rig.settings.failed_login_pause)
    s.pump.flush()
    assert s.raw.take() == b'A01 NO "authentication failed"\r\n'
    assert s.proto.user is None


def test_external_map_turns_a_common_name_into_a_user(tmp_path, pki):
    rig = external_rig(tmp_path, pki, external_map=(("joe", ADMIN),))
    s = Session(rig, pki)
    s.raw.take()
    s.starttls(cert=pki.client_joe)
    assert s.send(b'A01 AUTHENTICATE "EXTERNAL" "="\r\n') == b'A01 OK "Authenticated"\r\n'
    assert s.proto.user == ADMIN


def test_external_never_offered_without_a_client_ca(tmp_path, pki):
    s = Session(make_rig(tmp_path, pki), pki)  # no tls_client_ca_*: nothing is verified
    s.raw.take()
    _, banner = s.starttls(cert=pki.client_admin)
    assert b"EXTERNAL" not in banner


def test_required_client_certificate_missing_fails_the_handshake(tmp_path, pki):
    rig = external_rig(tmp_path, pki, client_certs="require")
    s = Session(rig, pki)
    s.raw.take()
    s.starttls()
    assert s.pump.server.lost
    assert s.proto not in rig.factory.sessions


def test_client_certificate_from_an_unknown_ca_fails_the_handshake(tmp_path, pki, session_pki):  # noqa: F811
    rig = make_rig(tmp_path, pki, tls=server_tls(pki, client_ca_file=pki.other_ca))
    s = Session(rig, pki)
    s.raw.take()
    s.starttls(cert=pki.client_admin)
    assert s.pump.server.lost


# -- our client against our server (net/client.py starttls, net/login.py policy) ------------


def client_session(rig: MasterRig, **connect_args: object) -> tuple[MupdateClientProtocol, Pump]:
    client = MupdateClientProtocol(rig.clock)
    pump = connect(rig.factory.buildProtocol(None), client, **connect_args)  # type: ignore[arg-type]
    return client, pump


def run(pump: Pump, d):
    results: list[object] = []
    d.addBoth(results.append)
    pump.flush()
    assert results, "the Deferred did not fire"
    return results[0]


def test_client_starttls_returns_the_banner_under_tls(tmp_path, pki):
    rig = make_rig(tmp_path, pki)
    client, pump = client_session(rig)
    info = run(pump, _deferred(secure_session(client, ClientTls(ca_file=pki.ca), "127.0.0.1")))
    assert b"STARTTLS" not in info.capabilities
    assert "PLAIN" in info.mechanisms
    assert client.tls_active
    assert pump.client.wire[0].startswith(b"S01 STARTTLS\r\n")


@pytest.mark.parametrize("which", ["expired", "wrong_host", "self_signed"])
def test_client_refuses_a_bad_server_certificate(tmp_path, pki, which):
    bad = getattr(pki, which)
    rig = make_rig(tmp_path, pki, tls=server_tls(pki, cert=bad.cert, key=bad.key))
    client, pump = client_session(rig)
    failure = run(pump, _deferred(secure_session(client, ClientTls(ca_file=pki.ca), "127.0.0.1")))
    assert failure.check(TlsFailed), failure
    assert pump.client.lost


def test_client_with_verification_off_accepts_a_self_signed_certificate(tmp_path, pki):
    bad = pki.self_signed
    rig = make_rig(tmp_path, pki, tls=server_tls(pki, cert=bad.cert, key=bad.key))
    client, pump = client_session(rig)
    info = run(pump, _deferred(secure_session(client, ClientTls(verify=False), "127.0.0.1")))
    assert client.tls_active
    assert "PLAIN" in info.mechanisms


def test_client_requiring_starttls_refuses_a_banner_without_it(tmp_path, pki):
    rig = MasterRig(tmp_path)  # no certificate: as if STARTTLS had been stripped
    client, pump = client_session(rig)
    failure = run(
        pump, _deferred(secure_session(client, ClientTls(starttls="required"), "127.0.0.1"))
    )
    assert failure.check(TlsRequired)
    assert all(b"AUTHENTICATE" not in chunk for chunk in pump.client.wire)


def _deferred(coro):
    return Deferred.fromCoroutine(coro)

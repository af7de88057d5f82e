"""mupdate/tls.py: contexts from settings, and clear errors for unusable files."""

from __future__ import annotations

import pytest

from mupdate.config.tls_settings import ClientTls, ServerTls
from mupdate.tls import TlsConfigError, client_options, server_options
from tests.helpers.certs import Pki, session_pki  # noqa: F401 - fixture


@pytest.fixture
def pki(session_pki: Pki) -> Pki:  # noqa: F811 - the imported fixture
    return session_pki


def test_server_options_verify_clients_only_with_a_ca(pki):
    plain = server_options(ServerTls(cert=pki.server.cert, key=pki.server.key))
    assert not plain.verify
    verifying = server_options(
        ServerTls(cert=pki.server.cert, key=pki.server.key, client_ca_file=pki.ca)
    )
    assert verifying.verify
    assert not verifying.requireCertificate
    required = server_options(
        ServerTls(
            cert=pki.server.cert,
            key=pki.server.key,
            client_ca_dir=pki.directory,
            client_certs="require",
        )
    )
    assert required.requireCertificate


def test_key_that_does_not_match_the_certificate_is_refused(pki):
    with pytest.raises(TlsConfigError):
        server_options(ServerTls(cert=pki.server.cert, key=pki.expired.key))


def test_missing_files_are_named(pki, tmp_path):
    with pytest.raises(TlsConfigError, match=r"nothere\.pem"):
        server_options(ServerTls(cert=tmp_path / "nothere.pem", key=pki.server.key))
    with pytest.raises(TlsConfigError, match="does not exist"):
        client_options(ClientTls(ca_file=tmp_path / "nothere.pem"), "127.0.0.1")


def test_bad_cipher_string_is_refused(pki):
    with pytest.raises(TlsConfigError, match="tls_ciphers"):
        server_options(ServerTls(cert=pki.server.cert, key=pki.server.key, ciphers="NOPE-NOTHING"))


def test_client_options_with_and_without_verification(pki):
    assert client_options(ClientTls(ca_file=pki.ca), "127.0.0.1") is not None
    assert (
        client_options(
            ClientTls(verify=False, cert=pki.client_admin.cert, key=pki.client_admin.key), "m1.test"
        )
        is not None
    )

"""Every TLS context of the project, built from settings (style.md §5; protocol doc §3.3, §5.2, §13).

Server side: ``server_options`` gives the ``CertificateOptions`` a listener hands to
``startTLS`` (STARTTLS) or to ``TLSMemoryBIOFactory`` (implicit TLS): the certificate and key
from ``tls_server_cert``/``tls_server_key``, client certificates requested and verified when
``tls_client_ca_file``/``_dir`` is set (``tls_client_certs: require`` makes one mandatory),
``tls_versions`` (TLS 1.2 minimum unless told otherwise) and ``tls_ciphers`` (given to
OpenSSL as written, as Cyrus does).

Client side: ``client_options`` verifies the server's certificate against
``tls_server_ca_file``/``_dir`` (else the system store) *and* the host name through
service_identity (Twisted's ``optionsForClientTLS``). Cyrus's client verifies nothing
(SSL_VERIFY_NONE, §3.3); ours does unless ``mupdate_tls_verify: no`` says otherwise. An
optional client certificate comes from ``tls_client_cert``/``tls_client_key``.

The rest of the code only calls ``startTLS`` with what it gets here, and reads the verified
peer's name through ``peer_common_name``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509, PKey
from twisted.internet import ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.interfaces import (
    IAcceptableCiphers,
    ICipher,
    IOpenSSLClientConnectionCreator,
)
from zope.interface import implementer

from mupdate.config.tls_settings import ClientTls, ServerTls

__all__ = ["TlsConfigError", "client_options", "peer_common_name", "server_options"]

_VERSION: Final = {
    "tls1_0": ssl.TLSVersion.TLSv1_0,
    "tls1_1": ssl.TLSVersion.TLSv1_1,
    "tls1_2": ssl.TLSVersion.TLSv1_2,
    "tls1_3": ssl.TLSVersion.TLSv1_3,
}


class TlsConfigError(ValueError):
    """A certificate, key or CA that cannot be loaded; the message names the file."""


@implementer(IOpenSSLTrustRoot)
class _VerifyLocations:
    """Trust what OpenSSL finds in a CA file and/or a hashed CA directory (``c_rehash``),
    exactly as Cyrus loads ``tls_*_ca_file``/``tls_*_ca_dir``."""

    def __init__(self, ca_file: Path | None, ca_dir: Path | None) -> None:
        self.ca_file = ca_file
        self.ca_dir = ca_dir

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.load_verify_locations(
            str(self.ca_file) if self.ca_file else None, str(self.ca_dir) if self.ca_dir else None
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _load_chain(path: Path) -> list[X509]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path, "certificate"))
    except ValueError as exc:
        raise TlsConfigError(f"{path}: not a PEM certificate: {exc}") from None
    return [X509.from_cryptography(cert) for cert in certs]


def _load_key(path: Path) -> PKey:
    try:
        key = load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    return PKey.from_cryptography_key(key)  # type: ignore[arg-type]  # any key type OpenSSL takes


@implementer(ICipher)
class _CipherString:
    def __init__(self, text: str) -> None:
        self.fullName = text


@implementer(IAcceptableCiphers)
class _VerbatimCiphers:
    """``tls_ciphers`` handed to OpenSSL as written, as Cyrus does (SSL_CTX_set_cipher_list).
    Twisted's ``AcceptableCiphers`` keeps only cipher names and drops directives such as
    ``@SECLEVEL=0``, without which OpenSSL 3 refuses TLS 1.0 and 1.1 whatever
    ``tls_versions`` says. CertificateOptions joins the ``fullName`` of what this selects
    into the string it gives OpenSSL, so one entry holding the whole string passes it on."""

    def __init__(self, text: str) -> None:
        self._text = text

    def selectCiphers(self, availableCiphers: tuple[ICipher]) -> tuple[ICipher]:
        return (_CipherString(self._text),)


def _version_options(versions: tuple[str, ...], ciphers: str) -> dict[str, Any]:
    # tls_versions lists what is allowed; OpenSSL takes a range, so use lowest..highest.
    options: dict[str, Any] = {
        "insecurelyLowerMinimumTo": _VERSION[versions[0]],
        "lowerMaximumSecurityTo": _VERSION[versions[-1]],
    }
    if ciphers:
        try:  # checked here, so a bad string is a configuration error, not a failed handshake
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError) as exc:
            raise TlsConfigError(f"tls_ciphers {ciphers!r}: {exc}") from None
        options["acceptableCiphers"] = _VerbatimCiphers(ciphers)
    return options


def server_options(tls: ServerTls) -> ssl.CertificateOptions:
    """The listener's context factory; ``tls.enabled`` must hold."""
    if tls.cert is None or tls.key is None:
        raise TlsConfigError("tls_server_cert and tls_server_key are both needed")
    chain = _load_chain(tls.cert)
    if not chain:
        raise TlsConfigError(f"{tls.cert}: no certificate in the file")
    extra = _version_options(tls.versions, tls.ciphers)
    try:
        options = ssl.CertificateOptions(
            privateKey=_load_key(tls.key),
            certificate=chain[0],
            extraCertChain=chain[1:],
            **extra,
        )
        if tls.verifies_clients:
            # CertificateOptions takes only a list of CA certificates, or a trustRoot that
            # forces a client certificate; these attributes are what its context is made of,
            # and OpenSSL then reads the CA file and the hashed directory itself.
            options.verify = True
            options.requireCertificate = tls.client_certs == "require"
            options.trustRoot = _VerifyLocations(tls.client_ca_file, tls.client_ca_dir)
        options.getContext()  # fail now, on a key that does not match or a bad CA path
    except SSL.Error as exc:
        raise TlsConfigError(f"{tls.cert} / {tls.key}: {exc}") from None
    except ValueError as exc:  # CertificateOptions: no cipher or version left
        raise TlsConfigError(f"tls_ciphers / tls_versions: {exc}") from None
    return options


def client_options(tls: ClientTls, hostname: str) -> IOpenSSLClientConnectionCreator:
    """Options for ``startTLS`` towards ``hostname`` (a name or an IP address literal)."""
    extra = _version_options(tls.versions, tls.ciphers)
    client_cert: ssl.PrivateCertificate | None = None
    if tls.cert is not None and tls.key is not None:
        chain = _load_chain(tls.cert)
        if not chain:
            raise TlsConfigError(f"{tls.cert}: no certificate in the file")
        client_cert = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(chain[0]), ssl.KeyPair(_load_key(tls.key))
        )
        extra["extraCertChain"] = chain[1:]
    try:
        return _client_creator(tls, hostname, client_cert, extra)
    except (SSL.Error, ValueError) as exc:  # ValueError: no cipher or version left
        raise TlsConfigError(f"tls_ciphers / tls_versions for {hostname}: {exc}") from None


def _client_creator(
    tls: ClientTls,
    hostname: str,
    client_cert: ssl.PrivateCertificate | None,
    extra: dict[str, Any],
) -> IOpenSSLClientConnectionCreator:
    if not tls.verify:
        # mupdate_tls_verify: no -- Cyrus's behaviour: encrypted, but nobody is checked.
        options = ssl.CertificateOptions(
            privateKey=client_cert.privateKey.original if client_cert else None,
            certificate=client_cert.original if client_cert else None,
            verify=False,
            **extra,
        )
        return options
    trust: Any
    if tls.ca_file is not None or tls.ca_dir is not None:
        for path in (tls.ca_file, tls.ca_dir):
            if path is not None and not path.exists():
                raise TlsConfigError(f"the CA {path} does not exist")
        trust = _VerifyLocations(tls.ca_file, tls.ca_dir)
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(
        hostname, trustRoot=trust, clientCertificate=client_cert, extraCertificateOptions=extra
    )


def peer_common_name(transport: object) -> str | None:
    """The subject CN of the certificate the peer presented and OpenSSL verified, if any.

    Only meaningful when the context verifies peers (``tls_client_ca_*`` set): then a
    certificate that fails verification ends the handshake, so one that is present here has
    passed. Without a CA nothing is requested and this is None."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        cert = get()
    except (SSL.Error, AttributeError):
        return None
    if cert is None:
        return None
    names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")

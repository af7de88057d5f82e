"""How our clients (the slave's uplink, the tools) secure a session before logging in
(protocol doc §3.3, §5.2; design.md).

Policy, from ``ClientTls`` (``mupdate_starttls``, ``mupdate_server .../tls``, ``allowplaintext``,
``mupdate_loopback_plaintext``):

* implicit TLS (``/tls``): the connection is TLS from the first byte; nothing to do here.
* ``auto`` (default): STARTTLS when the banner offers it. Cyrus clients STARTTLS only when no
  mechanism is usable in clear (§3.3 point 2); ours always prefer TLS.
* ``required``: a banner without ``* STARTTLS`` ends the session before any login. A
  man in the middle who strips the capability gets nothing; we never fall back to clear.
* ``off``: never STARTTLS.

Then, still in clear, PLAIN and LOGIN (the password itself on the wire) are withheld from a
master that is not on the loopback interface, unless ``allowplaintext: yes``; on loopback
``mupdate_loopback_plaintext: no`` withholds them too. Mechanisms that do not reveal the
password stay allowed. Cyrus's client sends PLAIN in clear whenever offered.

With a client certificate (``tls_client_cert``/``tls_client_key``) and EXTERNAL offered under
TLS, EXTERNAL is used and the password is not sent at all.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from mupdate.config.tls_settings import ClientTls
from mupdate.net.client import MupdateClientProtocol, MupdateError, ServerInfo
from mupdate.protocol.texts import CAP_STARTTLS
from mupdate.sasl import PLAINTEXT_MECHANISMS
from mupdate.sasl.external import ExternalClient
from mupdate.tls import client_options

__all__ = ["TlsRequired", "allowed_mechanisms", "secure_session", "secure_then_login"]


class TlsRequired(MupdateError):
    """The policy forbids going on without TLS (STARTTLS not offered, or only password
    mechanisms offered in clear to a remote master)."""


async def secure_session(
    protocol: MupdateClientProtocol, tls: ClientTls, hostname: str
) -> ServerInfo:
    """Wait for the banner and apply the STARTTLS policy; the banner to log in with."""
    info = await protocol.greeted
    if protocol.tls_active or tls.starttls == "off":
        return info
    if CAP_STARTTLS in info.capabilities:
        return await protocol.starttls(client_options(tls, hostname))
    if tls.starttls == "required":
        raise TlsRequired(
            f"{hostname} does not offer STARTTLS and mupdate_starttls is required: "
            "not logging in without TLS"
        )
    return info


def allowed_mechanisms(
    info: ServerInfo, tls: ClientTls, tls_active: bool, loopback: bool
) -> tuple[str, ...] | None:
    """The mechanisms we may use, or None for no restriction. Raises TlsRequired when the
    plaintext rule leaves none of the offered ones."""
    if tls_active or tls.allow_plaintext or (loopback and tls.loopback_plaintext):
        return None
    allowed = tuple(m for m in info.mechanisms if m not in PLAINTEXT_MECHANISMS)
    if info.mechanisms and not allowed:
        where = "a loopback" if loopback else "a remote"
        raise TlsRequired(
            f"only {' '.join(info.mechanisms)} offered without TLS by {where} master: "
            "not sending the password in clear (use STARTTLS, or allowplaintext: yes)"
        )
    return allowed


def secure_then_login(
    protocol: MupdateClientProtocol,
    tls: ClientTls,
    hostname: str,
    loopback: bool,
    authcid: str,
    password: str,
    authzid: str = "",
) -> Deferred[str]:
    """The whole login: banner, TLS policy, plaintext policy, AUTHENTICATE; fires with the
    mechanism used."""

    async def run() -> str:
        info = await secure_session(protocol, tls, hostname)
        if tls.cert is not None and protocol.tls_active and "EXTERNAL" in info.mechanisms:
            # Our client certificate is the credential (the server offers EXTERNAL only for
            # one it verified); mupdate_username, if set, is the authorization id.
            return await protocol.authenticate_with(ExternalClient(authzid))
        allowed = allowed_mechanisms(info, tls, protocol.tls_active, loopback)
        return await protocol.authenticate(authcid, password, authzid, mechanisms=allowed)

    return Deferred.fromCoroutine(run())

"""TLS and login-policy settings, server side and client side (protocol doc §3.3, §5.2, §13).

Cyrus option names where Cyrus has the option (``tls_server_cert``, ``tls_server_key``,
``tls_client_ca_file``, ``tls_client_ca_dir``, ``tls_client_certs``, ``tls_versions``,
``tls_ciphers``, ``tls_server_ca_file``, ``tls_server_ca_dir``, ``tls_client_cert``,
``tls_client_key``); ours start with ``mupdate_``. Only values here: the contexts are built in
``mupdate/tls.py``. Imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mupdate.config.imapdconf import ConfigRecord
from mupdate.config.values import SettingsError, parse_bool
from mupdate.config.values import where as _where

#: Cyrus's ``tls_versions`` words, oldest first.
TLS_VERSIONS: Final = ("tls1_0", "tls1_1", "tls1_2", "tls1_3")
#: Ours: TLS 1.2 minimum (Cyrus 3.6 defaults to tls1_0 ... tls1_3).
DEFAULT_TLS_VERSIONS: Final = ("tls1_2", "tls1_3")
STARTTLS_POLICIES: Final = ("auto", "required", "off")


class TlsSettingsError(SettingsError):
    """A TLS value that cannot be used; the message names file, line and key."""


def _path(record: ConfigRecord) -> Path | None:
    # Cyrus: the value "disabled" switches a certificate option off.
    value = record.value.strip()
    return None if not value or value.lower() == "disabled" else Path(value)


def _bool(record: ConfigRecord) -> bool:
    return parse_bool(record, TlsSettingsError)


def _versions(record: ConfigRecord) -> tuple[str, ...]:
    words = tuple(w.lower() for w in record.value.split())
    unknown = [w for w in words if w not in TLS_VERSIONS]
    if unknown or not words:
        raise TlsSettingsError(
            f"{_where(record)}: expected TLS versions from {' '.join(TLS_VERSIONS)}, "
            f"got {record.value!r}"
        )
    return tuple(v for v in TLS_VERSIONS if v in words)


def _choice(record: ConfigRecord, choices: tuple[str, ...]) -> str:
    value = record.value.strip().lower()
    if value not in choices:
        raise TlsSettingsError(
            f"{_where(record)}: expected one of {', '.join(choices)}, got {record.value!r}"
        )
    return value


def _external_map(record: ConfigRecord) -> tuple[tuple[str, str], ...]:
    pairs = []
    for word in record.value.split():
        cn, sep, user = word.partition("=")
        if not sep or not cn or not user:
            raise TlsSettingsError(
                f"{_where(record)}: expected CN=USER pairs separated by spaces, got {word!r}"
            )
        pairs.append((cn, user))
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class ServerTls:
    """What a listener needs: its certificate, who may present client certificates, and
    whether authentication waits for TLS."""

    cert: Path | None = None
    key: Path | None = None
    client_ca_file: Path | None = None
    client_ca_dir: Path | None = None
    client_certs: str = "optional"  # require | optional (Cyrus: tls_client_certs)
    versions: tuple[str, ...] = DEFAULT_TLS_VERSIONS
    ciphers: str = ""  # "": OpenSSL's defaults
    listen: tuple[str, ...] = ()  # implicit-TLS endpoints (mupdate_tls_listen)
    required: bool = False  # no mechanism offered before TLS (mupdate_tls_required)
    external_map: tuple[tuple[str, str], ...] = ()  # certificate CN -> user for EXTERNAL

    @property
    def enabled(self) -> bool:
        """Both certificate and key set: STARTTLS offered, implicit TLS possible (§3.1)."""
        return self.cert is not None and self.key is not None

    @property
    def verifies_clients(self) -> bool:
        return self.client_ca_file is not None or self.client_ca_dir is not None

    def external_user(self, common_name: str) -> str:
        """The login name of a verified client certificate: mapped, else the CN itself."""
        return dict(self.external_map).get(common_name, common_name)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How our slave and tools reach a master: TLS policy, verification, plaintext policy."""

    starttls: str = "auto"  # auto | required | off (mupdate_starttls)
    implicit: bool = False  # mupdate_server ends in /tls (§3.3 point 4)
    verify: bool = True  # mupdate_tls_verify: check the certificate and the host name
    ca_file: Path | None = None
    ca_dir: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    versions: tuple[str, ...] = DEFAULT_TLS_VERSIONS
    ciphers: str = ""
    allow_plaintext: bool = False  # PLAIN/LOGIN without TLS to a non-loopback master
    loopback_plaintext: bool = True  # ... and to a loopback one

    @property
    def tls_required(self) -> bool:
        return self.implicit or self.starttls == "required"


def server_tls(values: Mapping[str, ConfigRecord]) -> ServerTls:
    """The listener's TLS settings found in the file, checked."""
    out: dict[str, object] = {}
    # One line per key: the sample-config test finds the keys read by scanning for them.
    if "tls_server_cert" in values:
        out["cert"] = _path(values["tls_server_cert"])
    if "tls_server_key" in values:
        out["key"] = _path(values["tls_server_key"])
    if "tls_client_ca_file" in values:
        out["client_ca_file"] = _path(values["tls_client_ca_file"])
    if "tls_client_ca_dir" in values:
        out["client_ca_dir"] = _path(values["tls_client_ca_dir"])
    if "tls_client_certs" in values:
        out["client_certs"] = _choice(values["tls_client_certs"], ("require", "optional"))
    if "tls_versions" in values:
        out["versions"] = _versions(values["tls_versions"])
    if "tls_ciphers" in values:
        out["ciphers"] = values["tls_ciphers"].value.strip()
    if "mupdate_tls_listen" in values:
        out["listen"] = tuple(values["mupdate_tls_listen"].value.split())
    if "mupdate_tls_required" in values:
        out["required"] = _bool(values["mupdate_tls_required"])
    if "mupdate_external_map" in values:
        out["external_map"] = _external_map(values["mupdate_external_map"])
    tls = ServerTls(**out)  # type: ignore[arg-type]  # fields are checked above
    _check_pair(values, tls.cert, tls.key, "tls_server_cert", "tls_server_key")
    if tls.listen and not tls.enabled:
        record = values["mupdate_tls_listen"]
        raise TlsSettingsError(
            f"{_where(record)}: implicit TLS needs tls_server_cert and tls_server_key"
        )
    if tls.required and not tls.enabled:
        record = values["mupdate_tls_required"]
        raise TlsSettingsError(
            f"{_where(record)}: TLS cannot be required without tls_server_cert and tls_server_key"
        )
    return tls


def client_tls(values: Mapping[str, ConfigRecord]) -> ClientTls:
    """The client side (slave uplink, tools): policy, verification, client certificate."""
    out: dict[str, object] = {}
    for key, attr in (
        ("tls_server_ca_file", "ca_file"),
        ("tls_server_ca_dir", "ca_dir"),
        ("tls_client_cert", "cert"),
        ("tls_client_key", "key"),
    ):
        if key in values:
            out[attr] = _path(values[key])
    if "mupdate_starttls" in values:
        out["starttls"] = _choice(values["mupdate_starttls"], STARTTLS_POLICIES)
    if "mupdate_tls_verify" in values:
        out["verify"] = _bool(values["mupdate_tls_verify"])
    if "tls_versions" in values:
        out["versions"] = _versions(values["tls_versions"])
    if "tls_ciphers" in values:
        out["ciphers"] = values["tls_ciphers"].value.strip()
    if "allowplaintext" in values:
        out["allow_plaintext"] = _bool(values["allowplaintext"])
    if "mupdate_loopback_plaintext" in values:
        out["loopback_plaintext"] = _bool(values["mupdate_loopback_plaintext"])
    if "mupdate_server" in values:
        out["implicit"] = "tls" in server_suffixes(values["mupdate_server"].value)
    tls = ClientTls(**out)  # type: ignore[arg-type]  # fields are checked above
    _check_pair(values, tls.cert, tls.key, "tls_client_cert", "tls_client_key")
    if tls.implicit and tls.starttls == "off":
        record = values["mupdate_starttls"]
        raise TlsSettingsError(f"{_where(record)}: off contradicts mupdate_server ending in /tls")
    return tls


def server_suffixes(mupdate_server: str) -> tuple[str, ...]:
    """``host:port/tls/noauth`` -> ``("tls", "noauth")`` (Cyrus's suffixes, lower-cased)."""
    return tuple(part.lower() for part in mupdate_server.split("/")[1:] if part)


def _check_pair(
    values: Mapping[str, ConfigRecord],
    first: Path | None,
    second: Path | None,
    first_key: str,
    second_key: str,
) -> None:
    if (first is None) != (second is None):
        present, missing = (first_key, second_key) if first is not None else (second_key, first_key)
        raise TlsSettingsError(f"{_where(values[present])}: needs {missing} as well")

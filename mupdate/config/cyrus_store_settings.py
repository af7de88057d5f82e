"""Where the slave keeps its copy: its own SQLite file, or Cyrus's ``mailboxes.db`` (issue 3).

``mupdate_slave_store: cyrus`` puts the copy in the ``mailboxes.db`` that the host's Cyrus
imapd, proxyd and lmtpd read. Which one comes from Cyrus's own imapd.conf,
``mupdate_cyrus_config`` (default ``/etc/imapd.conf``): its ``configdirectory``,
``mboxlist_db`` (the backend, default twoskip) and ``mboxlist_db_path``; the same file is
given to ``cyr_dbtool -C``. The kick socket is ``<that configdirectory>/socket/mupdate.target``
unless ``mupdate_kick_socket`` says otherwise (``off`` for none).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mupdate.config.imapdconf import ConfigFileError, ConfigRecord, read_imapd_conf
from mupdate.config.values import SettingsError, parse_bool, where

DEFAULT_CYRUS_CONFIG: Final = Path("/etc/imapd.conf")
DEFAULT_DBTOOL: Final = Path("/usr/lib/cyrus/bin/cyr_dbtool")
DEFAULT_CYRUS_USER: Final = "cyrus"
DEFAULT_TIMEOUT: Final = 60.0
KICK_SOCKET: Final = Path("socket/mupdate.target")
STORES: Final = ("sqlite", "cyrus")


@dataclass(frozen=True)
class CyrusStoreSettings:
    """What the Cyrus store needs; paths absolute, as ``cyr_dbtool`` wants them."""

    imapd_conf: Path
    configdirectory: Path
    database: Path
    backend: str = "twoskip"
    dbtool: Path = DEFAULT_DBTOOL
    user: str = DEFAULT_CYRUS_USER
    timeout: float = DEFAULT_TIMEOUT

    def run_as(self) -> tuple[int, int] | None:
        """uid and gid to run ``cyr_dbtool`` with: the Cyrus user when we are root."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise SettingsError(
                f"mupdate_cyrus_user: no such user {self.user!r} to run cyr_dbtool as"
            ) from None
        return entry.pw_uid, entry.pw_gid


def cyrus_store_settings(
    values: Mapping[str, ConfigRecord], parse_positive_duration: object
) -> CyrusStoreSettings | None:
    """The Cyrus store's settings when ``mupdate_slave_store: cyrus``; None for SQLite."""
    record = values.get("mupdate_slave_store")
    kind = record.value.strip().lower() if record else "sqlite"
    if kind not in STORES:
        assert record is not None
        raise SettingsError(f"{where(record)}: expected sqlite or cyrus, got {record.value!r}")
    if kind == "sqlite":
        return None
    conf_record = values.get("mupdate_cyrus_config")
    conf = Path(conf_record.value) if conf_record else DEFAULT_CYRUS_CONFIG
    conf = conf.absolute()
    try:
        cyrus = {r.key: r for r in read_imapd_conf(conf)}
    except (OSError, ConfigFileError) as exc:
        raise SettingsError(f"mupdate_cyrus_config: cannot read Cyrus's {conf}: {exc}") from None
    if "configdirectory" not in cyrus or not cyrus["configdirectory"].value:
        raise SettingsError(f"{conf}: configdirectory is not set: where is mailboxes.db?")
    configdirectory = Path(cyrus["configdirectory"].value).absolute()
    if "reverseacls" in cyrus and parse_bool(cyrus["reverseacls"]):
        raise SettingsError(
            f"{where(cyrus['reverseacls'])}: reverseacls is on; this slave does not keep "
            "Cyrus's $RACL records, so it cannot write this mailboxes.db"
        )
    database = configdirectory / "mailboxes.db"
    if "mboxlist_db_path" in cyrus and cyrus["mboxlist_db_path"].value:
        database = Path(cyrus["mboxlist_db_path"].value).absolute()
    backend = cyrus["mboxlist_db"].value.strip() if "mboxlist_db" in cyrus else "twoskip"
    fields: dict[str, object] = {
        "imapd_conf": conf,
        "configdirectory": configdirectory,
        "database": database,
        "backend": backend or "twoskip",
    }
    if "mupdate_cyrus_dbtool" in values:
        fields["dbtool"] = Path(values["mupdate_cyrus_dbtool"].value).absolute()
    if "mupdate_cyrus_user" in values:
        fields["user"] = values["mupdate_cyrus_user"].value.strip()
    if "mupdate_cyrus_timeout" in values:
        fields["timeout"] = parse_positive_duration(values["mupdate_cyrus_timeout"])  # type: ignore[operator]
    return CyrusStoreSettings(**fields)  # type: ignore[arg-type]  # checked above


def kick_socket_path(
    values: Mapping[str, ConfigRecord], cyrus: CyrusStoreSettings | None
) -> Path | None:
    """``mupdate_kick_socket``, else Cyrus's path when the copy is Cyrus's; ``off``: none."""
    record = values.get("mupdate_kick_socket")
    if record is not None:
        text = record.value.strip()
        if text.lower() in ("", "off", "no", "none"):
            return None
        return Path(text).absolute()
    return cyrus.configdirectory / KICK_SOCKET if cyrus is not None else None

"""Configuration: imapd.conf records, then typed settings per role (style.md §8)."""

from mupdate.config.imapdconf import (
    ConfigFileError,
    ConfigRecord,
    parse_imapd_conf,
    read_imapd_conf,
)
from mupdate.config.settings import (
    DEFAULT_LISTEN,
    DEFAULT_PORT,
    MasterSettings,
    ServerSettings,
    SettingsError,
    SlaveSettings,
    master_settings,
    slave_settings,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PORT",
    "ConfigFileError",
    "ConfigRecord",
    "MasterSettings",
    "ServerSettings",
    "SettingsError",
    "SlaveSettings",
    "master_settings",
    "parse_imapd_conf",
    "read_imapd_conf",
    "slave_settings",
]

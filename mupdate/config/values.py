"""What every settings module shares: the error type, where a value came from, yes/no.

Kept apart from ``settings.py`` so the TLS and logging settings, which ``settings.py``
imports, can use them too.
"""

from __future__ import annotations

from typing import Final

from mupdate.config.imapdconf import ConfigRecord

_TRUE: Final = frozenset({"1", "yes", "on", "true", "t", "y"})
_FALSE: Final = frozenset({"0", "no", "off", "false", "f", "n"})


class SettingsError(ValueError):
    """A value that cannot be used; the message names where it came from."""


def where(record: ConfigRecord) -> str:
    return f"{record.source}:{record.line}: {record.key}"


def parse_bool(record: ConfigRecord, error: type[SettingsError] = SettingsError) -> bool:
    """Cyrus's boolean spellings, any case; ``error`` names the settings family."""
    value = record.value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise error(f"{where(record)}: expected yes or no, got {record.value!r}")

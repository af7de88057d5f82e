"""Read an imapd.conf-style file into (key, value, line) records, interpreting nothing.

Cyrus's format (protocol doc §13): ``key: value`` lines, ``#`` comments, blank lines.
Keys are kept as written (Cyrus matches them case-insensitively; we lower-case on lookup).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ConfigFileError(ValueError):
    """A line that is not ``key: value``; names the file and line."""


@dataclass(frozen=True, slots=True)
class ConfigRecord:
    key: str
    value: str
    source: str
    line: int


def parse_imapd_conf(text: str, source: str = "<string>") -> list[ConfigRecord]:
    records: list[ConfigRecord] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise ConfigFileError(f"{source}:{number}: expected 'key: value', got {raw!r}")
        records.append(ConfigRecord(key.lower(), value.strip(), source, number))
    return records


def read_imapd_conf(path: str | Path) -> list[ConfigRecord]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"{p}: cannot read config file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{p}: not UTF-8 text: {exc}") from exc
    return parse_imapd_conf(text, str(p))

"""Logging helpers: bytes to text that cannot fail, and the audit logger (style.md §9).

Passwords, SASL payloads and AUTHENTICATE lines are never passed to a logger anywhere.
"""

from __future__ import annotations

from typing import Final

from twisted.logger import Logger

#: One event per committed change to the mailbox list: who, command, mailbox, old and new location.
audit: Final = Logger(namespace="mupdate.audit")

_MAX: Final = 300


def text(value: bytes | None) -> str:
    """Readable, bounded and lossless enough for logs: odd bytes become \\xNN."""
    if value is None:
        return "-"
    shown = value[:_MAX].decode("utf-8", "backslashreplace")
    shown = shown.replace("\r", "\\r").replace("\n", "\\n").replace("\0", "\\0")
    return shown + ("..." if len(value) > _MAX else "")

"""Every size limit the wire layer enforces (protocol doc §2.7), handed to the engines.

Cyrus exits the whole process on most of these; we answer BAD (or ``* BYE`` where the
stream cannot be resynchronised) and only the offending connection is affected.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    max_line: int = 64 * 1024  # bytes of one line outside literals (tag, words, quoted)
    max_literal: int = 128 * 1024  # bytes of one {n} / {n+} literal
    max_command: int = 1024 * 1024  # bytes of one whole command, literals included
    max_args: int = 40  # strings in one command (UPDATE hosts are limited separately)
    max_update_hosts: int = 30  # Cyrus: the 31st is "Extra arguments" (§5.8)
    max_sasl_line: int = 21848  # one bare base64 line during AUTHENTICATE (§2.7)

"""What a server mechanism's step returns (style.md §4: one shape for every mechanism).

``Challenge`` goes to the client as a bare base64 line; ``CheckPassword`` asks the glue to
verify a password off the reactor thread (PLAIN, LOGIN); ``Success`` ends the exchange with
final server data (SCRAM ``v=...``), which the glue sends as one more challenge answered by an
empty line before the tagged OK (§5.1); ``Failure`` ends it with NO. Imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """The exchange is complete; success depends on this password for ``authcid``."""

    authcid: str
    authzid: str
    password: bytes


@dataclass(frozen=True, slots=True)
class Success:
    """The client proved who it is; ``data`` (may be empty) is the final server message."""

    authcid: str
    authzid: str
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str


Step = Challenge | CheckPassword | Success | Failure

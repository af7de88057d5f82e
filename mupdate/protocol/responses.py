"""Response events a server sends (protocol doc §3, §5, §6), and their serialising.

``render_response`` turns an event into the exact wire bytes; the client engine parses them
back. Imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Status(Enum):
    OK = b"OK"
    NO = b"NO"
    BAD = b"BAD"


@dataclass(frozen=True, slots=True)
class Done:
    """``<tag> OK|NO|BAD <text>``. ``quoted`` is False only for the few Cyrus texts sent
    unquoted (STARTTLS, COMPRESS and SASL-cancel paths, §5.1-5.3). ``tag`` may be ``b"*"``."""

    tag: bytes
    status: Status
    text: bytes
    quoted: bool = True


@dataclass(frozen=True, slots=True)
class MailboxLine:
    tag: bytes
    name: bytes
    location: bytes
    acl: bytes


@dataclass(frozen=True, slots=True)
class ReserveLine:
    tag: bytes
    name: bytes
    location: bytes


@dataclass(frozen=True, slots=True)
class DeleteLine:
    tag: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class Bye:
    """``* BYE "<text>"``; the connection closes after it. ``trailing_nul`` reproduces the
    NUL Cyrus writes after ``Server Unable`` (§3.4)."""

    text: bytes
    trailing_nul: bool = False


@dataclass(frozen=True, slots=True)
class Greeting:
    """The banner (§3.1): AUTH, [STARTTLS], [COMPRESS "DEFLATE"], PARTIAL-UPDATE, OK."""

    mechanisms: tuple[bytes, ...]
    servername: bytes
    implementation: bytes
    version: bytes
    role: bytes  # b"(master)" or b"mupdate://<mupdate_server>"
    starttls: bool = False
    compress: bool = True


@dataclass(frozen=True, slots=True)
class SaslChallenge:
    """A server challenge during AUTHENTICATE: raw bytes, sent as one bare base64 line
    (an empty challenge is an empty line, §5.1)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class GoAhead:
    """``+ go ahead``: the answer to a synchronising literal (§2.6)."""


Response = Done | MailboxLine | ReserveLine | DeleteLine | Bye | Greeting | SaslChallenge | GoAhead


def render_response(event: Response) -> bytes:
    """The exact wire bytes of ``event``; the rules live in ``strings.py`` (§6.1)."""
    from mupdate.protocol.strings import render_response as render  # strings imports us

    return render(event)

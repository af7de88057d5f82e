"""Command events a client sends (protocol doc §5), and their parsing from tokens.

Events are frozen and bytes-exact. The engine in ``server.py`` produces them; the client
engine and tools serialise them with ``render_command``. Imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Command:
    tag: bytes


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    mechanism: bytes
    initial_response: bytes | None = None  # still base64 text, exactly as sent


@dataclass(frozen=True, slots=True)
class Starttls(Command):
    pass


@dataclass(frozen=True, slots=True)
class Compress(Command):
    algorithm: bytes


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Find(Command):
    name: bytes


@dataclass(frozen=True, slots=True)
class List(Command):
    prefix: bytes | None = None


@dataclass(frozen=True, slots=True)
class Update(Command):
    hosts: tuple[bytes, ...] = ()  # empty: full UPDATE; otherwise PARTIAL-UPDATE (§5.8)


@dataclass(frozen=True, slots=True)
class Reserve(Command):
    name: bytes
    location: bytes


@dataclass(frozen=True, slots=True)
class Activate(Command):
    name: bytes
    location: bytes
    acl: bytes


@dataclass(frozen=True, slots=True)
class Deactivate(Command):
    name: bytes
    location: bytes


@dataclass(frozen=True, slots=True)
class Delete(Command):
    name: bytes


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """One bare line from the client during AUTHENTICATE (§5.1): base64 text, ``b""`` for an
    empty response, ``b"*"`` to cancel. Not decoded: the mechanism glue decides."""

    line: bytes


WRITE_COMMANDS: tuple[type[Command], ...] = (Reserve, Activate, Deactivate, Delete)


def render_command(event: Command | SaslResponse) -> bytes:
    """The exact wire bytes a client sends for ``event``; the rules live in ``strings.py``."""
    from mupdate.protocol.strings import render_command as render  # strings imports us

    return render(event)

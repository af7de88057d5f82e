"""The mailbox entry as MUPDATE carries it (design.md "A mailbox entry"; protocol doc §11).

Names, locations and ACLs are opaque byte strings end to end: never normalised, re-cased or
re-encoded. Imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EntryState(Enum):
    """RESERVED is sent as a RESERVE line, ACTIVE as a MAILBOX line."""

    RESERVED = "reserved"
    ACTIVE = "active"


def server_of(location: bytes) -> bytes:
    """The server part of a location: the text before the first ``!`` (§11.2).

    A location without ``!`` (``server`` alone, or a bare partition in replicated mode) is
    its own server part, as Cyrus routes it.
    """
    return location.split(b"!", 1)[0]


@dataclass(frozen=True, slots=True)
class MailboxEntry:
    """One row of the mailbox list. A RESERVED entry always has an empty ACL."""

    name: bytes
    state: EntryState
    location: bytes
    acl: bytes = b""

    def __post_init__(self) -> None:
        for field in (self.name, self.location, self.acl):
            if not isinstance(field, bytes):
                raise TypeError("MailboxEntry fields are bytes")
        if self.state is EntryState.RESERVED and self.acl:
            raise ValueError("a RESERVED entry has no ACL")

    @property
    def server(self) -> bytes:
        return server_of(self.location)

    @property
    def active(self) -> bool:
        return self.state is EntryState.ACTIVE


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What the master remembers of a deleted name, so a replica's repeated DELETE is OK.

    DELETE carries no location, so the last location is kept for the audit log and for
    PARTIAL-UPDATE filtering; ``deleted_at`` is seconds since the epoch.
    """

    name: bytes
    location: bytes
    deleted_at: float

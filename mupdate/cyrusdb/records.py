"""Records of Cyrus 3.6's ``mailboxes.db`` as a MUPDATE slave reads and writes them (§9.7).

Key: ``N`` + the dbname of the mailbox name (§7.8). A remote record, as Cyrus's own slave
writes it for a MAILBOX or RESERVE line, is
``%(T er[z] [P partition] S server M mtime A %(id rights ...))``: ``P`` only when the
location has a ``!`` (``be1!`` gives ``P ""``), ``A`` always (``%()`` when empty, as for
every RESERVE). A *local* record (no ``S``) is what the backend's own imapd wrote; this
module only reads those. Pure: imports nothing from Twisted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from mupdate.cyrusdb.dlist import (
    KvList,
    Value,
    acl_from_dlist,
    acl_pairs,
    astring,
    kvlist,
    parse_value,
)
from mupdate.db.order import DOMAIN_SEP, HIER_SEP, mailbox_key
from mupdate.model import EntryState, MailboxEntry

NAME_PREFIX: Final = b"N"
"""Keys of by-name records; ``I`` (by uniqueid) and ``$RACL`` keys are not ours."""

NOT_MAILBOX_FLAGS: Final = frozenset("di")
"""mbtype flags of records that are no mailbox: deleted (tombstone), intermediate."""


def record_key(name: bytes) -> bytes:
    return NAME_PREFIX + mailbox_key(name)


def dbname_to_name(dbname: bytes) -> bytes:
    """Inverse of ``mupdate.db.order.mailbox_key`` (§7.8)."""
    domain, sep, rest = dbname.partition(DOMAIN_SEP)
    if not sep:
        domain, rest = b"", domain
    rest = rest.replace(b".", b"^").replace(HIER_SEP, b".")
    return domain + b"!" + rest if sep else rest


@dataclass(frozen=True, slots=True)
class CyrusRecord:
    """What one by-name record says, before any decision about it."""

    name: bytes
    mbtype: str
    partition: bytes | None
    server: bytes | None
    acl: bytes

    @property
    def is_mailbox(self) -> bool:
        """Not a tombstone or an intermediate."""
        return not NOT_MAILBOX_FLAGS.intersection(self.mbtype)

    @property
    def is_local(self) -> bool:
        """A mailbox of this host: no server, as Cyrus's own test (its imapd wrote it).

        ``S ""`` (a master's location ``!part``) is a server, however odd: slaves write it."""
        return self.server is None and "r" not in self.mbtype and self.is_mailbox

    def entry(self, own_servername: bytes) -> MailboxEntry | None:
        """The MUPDATE entry this record stands for; None for tombstones and intermediates.

        A local record reads back at ``<own_servername>!<partition>``, where the master
        holds it, so an echo of the master compares equal and is left alone.
        """
        if not self.is_mailbox:
            return None
        if self.server is None:
            location = own_servername + b"!" + (self.partition or b"")
        elif self.partition is None:
            location = self.server
        else:
            location = self.server + b"!" + self.partition
        if "z" in self.mbtype:
            return MailboxEntry(self.name, EntryState.RESERVED, location)
        return MailboxEntry(self.name, EntryState.ACTIVE, location, self.acl)


_A: Final = rb'[^ ()"%*\\{\x00-\x1e\x7f-\xff]+'
_REMOTE: Final = re.compile(
    rb"%\(T ([a-z]+)(?: P ("
    + _A
    + rb'|""))? S ('
    + _A
    + rb") M \d+ A %\(((?:"
    + _A
    + rb" (?:"
    + _A
    + rb'|"")(?: (?=[^)])|(?=\))))*)\)\)\Z'
)


def parse_record_value(name: bytes, value: bytes) -> CyrusRecord:
    """A by-name record's value; the remote records slaves write take a fast path."""
    match = None if b"NIL" in value else _REMOTE.match(value)
    if match is None:
        return record_from_dlist(name, parse_value(value), repr(name))
    mbtype, partition, server, acl = match.groups()
    words = acl.split(b" ") if acl else []
    rights = bytearray()
    for who, what in zip(words[::2], words[1::2], strict=True):
        rights += who + b"\t" + (b"" if what == b'""' else what) + b"\t"
    if partition == b'""':
        partition = b""
    return CyrusRecord(name, mbtype.decode("ascii"), partition, server, bytes(rights))


def record_from_dlist(name: bytes, value: Value, where: str) -> CyrusRecord:
    if not isinstance(value, KvList):
        raise ValueError(f"{where}: the value is not a key-value list")
    mbtype = value.get(b"T")
    partition = value.get(b"P")
    server = value.get(b"S")
    for what, v in (("T", mbtype), ("P", partition), ("S", server)):
        if v is not None and not isinstance(v, bytes):
            raise ValueError(f"{where}: field {what} is not a string")
    assert mbtype is None or isinstance(mbtype, bytes)
    assert partition is None or isinstance(partition, bytes)
    assert server is None or isinstance(server, bytes)
    return CyrusRecord(
        name,
        (mbtype or b"").decode("ascii", "replace"),
        partition,
        server,
        acl_from_dlist(value.get(b"A")),
    )


@lru_cache(maxsize=4096)
def _head(reserved: bool, location: bytes) -> bytes:
    server, bang, partition = location.partition(b"!")
    out = b"%(T erz" if reserved else b"%(T er"
    if bang:
        out += b" P " + astring(partition)
    return out + b" S " + astring(server) + b" M "


_ATOM_ACL: Final = re.compile(rb"(?:" + _A + rb"\t" + _A + rb"\t)*\Z")


def _acl(acl: bytes) -> bytes:
    if _ATOM_ACL.match(acl) and b"NIL" not in acl:
        words = acl.split(b"\t")
        ids = words[:-1:2]
        if len(set(ids)) == len(ids):  # else Cyrus keeps one pair per id: acl_pairs
            return b"%(" + b" ".join(words[:-1]) + b")"
    return kvlist(acl_pairs(acl))


def remote_value(entry: MailboxEntry, mtime: int) -> bytes:
    """The record Cyrus 3.6's slave writes for ``entry`` at ``mtime`` (§9.7), byte for byte."""
    head = _head(entry.state is EntryState.RESERVED, entry.location)
    return b"%s%d A %s)" % (head, mtime, _acl(entry.acl))

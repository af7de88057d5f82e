"""Cyrus mailbox headers on a test partition, in each layout Cyrus 3.6 writes.

``write_header`` puts a ``cyrus.header`` with Cyrus 3.6's bytes (magic, then the dlist line,
as ``mailbox_header_data_cstring`` writes it) where Cyrus would: ``uuid`` is 3.6's default
(``mailbox_legacy_dirs: no``), ``legacy`` the name-derived directory, ``hashed`` the legacy
one with ``hashimapspool: yes``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mupdate.cyrusdb.dlist import astring
from mupdate.slave.disk import SpoolLayout, header_path
from mupdate.slave.scan import MAGIC

LAYOUTS = ("legacy", "hashed", "uuid")


def uniqueid(name: bytes) -> bytes:
    """A stable 24-character id shaped like Cyrus's (lower-case letters and digits)."""
    return hashlib.sha256(name).hexdigest()[:24].encode()


def header_bytes(name: bytes, acl: bytes = b"%(anyone lrs)") -> bytes:
    return MAGIC + b"%(T e N " + astring(name) + b" I " + uniqueid(name) + b" A " + acl + b")\n"


def write_header(partition: Path, name: bytes, layout: str = "uuid") -> Path:
    """Write ``name``'s header on ``partition`` as Cyrus lays it out; returns its path."""
    if layout == "uuid":
        uid = uniqueid(name).decode()
        path = partition / "uuid" / uid[0] / uid[1] / uid / "cyrus.header"
    else:
        path = header_path(partition, name, SpoolLayout(hashed=layout == "hashed"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header_bytes(name))
    return path


def layout_settings(layout: str) -> dict[str, bool]:
    """The slave settings that go with ``layout`` (hashimapspool for the hashed one)."""
    return {"hashimapspool": layout == "hashed"}

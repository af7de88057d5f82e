"""Is a mailbox on one of our partitions? The guard's ``on_disk`` fact (design.md "Slave").

Reads the filesystem, never writes it; the one impure helper beside the pure decisions.
Only Cyrus's "legacy" spool layout with ``hashimapspool: no`` is understood: a mailbox's
directory is its internal name with ``.`` turned into ``/``; a ``^`` (an IMAP dot, §11.1) stays
``^`` on disk (seen on Cyrus 3.6 with ``mailbox_legacy_dirs: yes``),
under ``domain/<domain>/`` for a ``domain!name``. Cyrus 3.6's default uuid layout
(``mailbox_legacy_dirs: no``) hides names behind uniqueids: there ``on_disk`` answers False,
and with ``mupdate_slave_store: cyrus`` Cyrus's own records (no server) say what is local.

A name that could escape the partition (``/``, NUL, an empty, ``.`` or ``..`` path part)
has no header path; a header reached through a symlink out of the partition is not ours.
Imports nothing from Twisted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

HEADER: Final = "cyrus.header"

_LEGACY: Final = bytes.maketrans(b".", b"/")


def _parts(text: bytes, what: str) -> list[str]:
    if b"/" in text or b"\0" in text:
        raise ValueError(f"{what} holds '/' or NUL: {text!r}")
    parts = text.translate(_LEGACY).split(b"/")
    if any(part in (b"", b".", b"..") for part in parts):
        raise ValueError(f"{what} has an empty, '.' or '..' path part: {text!r}")
    return [os.fsdecode(part) for part in parts]


def header_path(partition: Path, name: bytes) -> Path:
    """``<partition>/[domain/<domain>/]<name, '.' -> '/'>/cyrus.header`` ('^' kept).

    Raises ``ValueError`` for a name whose path would not stay inside ``partition``.
    """
    domain, bang, rest = name.partition(b"!")
    if not bang:
        return partition.joinpath(*_parts(name, "mailbox name"), HEADER)
    if b"/" in domain or b"\0" in domain or domain in (b"", b".", b".."):
        raise ValueError(f"domain is empty, '.', '..' or holds '/' or NUL: {name!r}")
    return partition.joinpath("domain", os.fsdecode(domain), *_parts(rest, "mailbox name"), HEADER)


def make_on_disk(partitions: Iterable[Path]) -> Callable[[bytes], bool]:
    """A predicate: does ``name`` have a regular ``cyrus.header`` under one of ``partitions``?

    Partitions are resolved once, here. A missing file is False; a fault that hides the
    answer (permission denied, I/O error) raises ``OSError`` rather than claim "not here".
    """
    roots = [Path(os.path.realpath(partition)) for partition in partitions]

    def on_disk(name: bytes) -> bool:
        for root in roots:
            try:
                path = header_path(root, name)
            except ValueError:
                return False
            real = Path(os.path.realpath(path))
            if real.is_relative_to(root) and real.is_file():
                return True
        return False

    return on_disk

"""Where Cyrus keeps a mailbox on a partition: the legacy spool paths (design.md "Slave").

Cyrus 3.6 has two layouts. The *legacy* one (``mailbox_legacy_dirs: yes``, and every
mailbox created before 3.6) names a mailbox's directory after its internal name: ``.``
turns into ``/``, a ``^`` (an IMAP dot, §11.1) stays ``^``, a ``domain!name`` lives under
``domain/<domain>/``; with ``hashimapspool: yes`` a one-letter directory goes before the
name and before the domain (Cyrus's ``mboxname_hash`` and ``dir_hash_c``, ``fulldirhash``
choosing the letter). The *uuid* one (3.6's default) keeps it at
``uuid/<c1>/<c2>/<uniqueid>/``: only the ``cyrus.header`` inside names the mailbox (see
``scan.py``, which finds every header; this module is its fast path and its fallback).

``header_path`` and ``make_on_disk`` answer "is there a header for this name?" with one
``stat`` per partition, for the legacy layout only. ``legacy_names`` goes the other way, from
a directory path to the names it can hold, for headers that do not name their mailbox.

``header_roots`` says which directory holds a partition's headers: the data partition, or
its metapartition when Cyrus keeps headers there (``metapartition_files: header``). Below
either root the layout is the same, so every other function here takes that root as "the
partition".

A name that could escape the partition (``/``, NUL, an empty, ``.`` or ``..`` path part)
has no header path; a header reached through a symlink out of the partition is not ours.
Imports nothing from Twisted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HEADER: Final = "cyrus.header"
UUID_DIR: Final = b"uuid"
DOMAIN_DIR: Final = b"domain"

META_HEADER: Final = "header"
"""The ``metapartition_files`` word that moves ``cyrus.header`` to the metapartition."""

_LEGACY: Final = bytes.maketrans(b".", b"/")


def header_roots(
    partitions: Iterable[tuple[str, Path]],
    metapartitions: Iterable[tuple[str, Path]] = (),
    metapartition_files: Collection[str] = (),
    header_metadirs: Iterable[tuple[str, Path]] = (),
) -> list[Path]:
    """The directory holding each data partition's ``cyrus.header`` files, in order, each once.

    Cyrus 3.6's ``mboxname_metapath`` for META_HEADER (imap/mboxname.c): the undocumented
    ``metadir-header-NAME`` if set; else ``metapartition-NAME`` if ``header`` is among
    ``metapartition_files`` and that key is set; else ``partition-NAME``. The mailbox path
    below the chosen root is the same either way (``mboxname_hash``, ``mboxname_id_hash``).
    Only the one root is returned: Cyrus neither writes nor reads a header anywhere else, and
    a walk of the data partition as well would list every message file for nothing. A
    ``metapartition-NAME`` without a ``partition-NAME`` holds no mailbox (Cyrus has no data
    path for one) and is ignored.
    """
    metas = dict(metapartitions) if META_HEADER in metapartition_files else {}
    metadirs = dict(header_metadirs)
    roots: list[Path] = []
    for name, data in partitions:
        root = metadirs.get(name) or metas.get(name) or data
        if root not in roots:
            roots.append(root)
    return roots


@dataclass(frozen=True, slots=True)
class SpoolLayout:
    """Cyrus's ``hashimapspool`` and ``fulldirhash``: how legacy directories are hashed."""

    hashed: bool = False
    full: bool = False


def dir_hash(name: bytes, full: bool) -> bytes:
    """Cyrus's ``dir_hash_c``: the letter of a hashed spool directory, from a name part.

    Cyrus hashes the part as it holds it in ``mbname`` boxes, where ``^`` is a dot again;
    the full hash stops at the first dot, the simple one is the lower-cased first letter
    (``q`` for anything else).
    """
    name = name.replace(b"^", b".")
    if full:
        n = 0
        for byte in name.split(b".", 1)[0]:
            n = (((n << 3) ^ (n >> 5)) ^ byte) & 0xFFFFFFFF
        return bytes([ord("A") + n % 23])
    first = name[:1].lower()
    return first if first.isalpha() and first.isascii() else b"q"


def _hash_part(parts: Sequence[bytes], full: bool) -> bytes:
    # Cyrus hashes the second box (``alice`` of user.alice), or the first when alone.
    return dir_hash(parts[1] if len(parts) > 1 else parts[0], full)


def _parts(text: bytes, what: str) -> list[bytes]:
    if b"/" in text or b"\0" in text:
        raise ValueError(f"{what} holds '/' or NUL: {text!r}")
    parts = text.translate(_LEGACY).split(b"/")
    if any(part in (b"", b".", b"..") for part in parts):
        raise ValueError(f"{what} has an empty, '.' or '..' path part: {text!r}")
    return parts


def header_path(partition: Path, name: bytes, layout: SpoolLayout = SpoolLayout()) -> Path:
    """``<partition>/[domain/<domain>/]<name, '.' -> '/'>/cyrus.header`` ('^' kept), with
    Cyrus's hash letters when ``layout.hashed``.

    Raises ``ValueError`` for a name whose path would not stay inside ``partition``.
    """
    domain, bang, rest = name.partition(b"!")
    if not bang:
        domain, rest = b"", name
    elif b"/" in domain or b"\0" in domain or domain in (b"", b".", b".."):
        raise ValueError(f"domain is empty, '.', '..' or holds '/' or NUL: {name!r}")
    boxes = _parts(rest, "mailbox name")
    path: list[bytes] = []
    if domain:
        path.append(DOMAIN_DIR)
        if layout.hashed:
            path.append(dir_hash(domain, layout.full))
        path.append(domain)
    if layout.hashed:
        path.append(_hash_part(boxes, layout.full))
    return partition.joinpath(*(os.fsdecode(p) for p in path + boxes), HEADER)


def make_on_disk(
    partitions: Iterable[Path], layout: SpoolLayout = SpoolLayout()
) -> Callable[[bytes], bool]:
    """A predicate: does ``name`` have a regular legacy ``cyrus.header`` on a partition?

    Partitions are resolved once, here. A missing file is False; a fault that hides the
    answer (permission denied, I/O error) raises ``OSError`` rather than claim "not here".
    """
    roots = [Path(os.path.realpath(partition)) for partition in partitions]

    def on_disk(name: bytes) -> bool:
        for root in roots:
            try:
                path = header_path(root, name, layout)
            except ValueError:
                return False
            real = Path(os.path.realpath(path))
            if real.is_relative_to(root) and real.is_file():
                return True
        return False

    return on_disk


def is_uuid_dir(parts: Sequence[bytes]) -> bool:
    """``uuid/<c1>/<c2>/<id>`` with ``c1``, ``c2`` the first two bytes of ``id``."""
    return (
        len(parts) == 4
        and parts[0] == UUID_DIR
        and len(parts[3]) >= 2
        and parts[1] == parts[3][:1]
        and parts[2] == parts[3][1:2]
    )


def _is_hash_of(letter: bytes, part: bytes) -> bool:
    return letter in (dir_hash(part, False), dir_hash(part, True))


def _unhashed(parts: Sequence[bytes]) -> list[Sequence[bytes]]:
    """``parts`` as written, and without a leading hash letter when it is the right one."""
    readings = [parts]
    if len(parts) > 1 and len(parts[0]) == 1:
        rest = parts[1:]
        if _is_hash_of(parts[0], rest[1] if len(rest) > 1 else rest[0]):
            readings.append(rest)
    return readings


def legacy_names(parts: Sequence[bytes]) -> frozenset[bytes]:
    """The names a legacy directory (path parts below the partition) may belong to.

    Without the layout settings a path can be read more than one way (``c/user/carol`` is
    ``user.carol`` hashed, or ``c.user.carol``; ``domain/x/y`` is ``x!y`` or ``domain.x.y``):
    every reading is returned. A name too many is only kept, never removed; a name too few
    could be lost. A uuid directory names nothing.
    """
    if not parts or is_uuid_dir(parts):
        return frozenset()
    names = {b".".join(reading) for reading in _unhashed(parts)}
    tail = parts[1:]
    if parts[0] == DOMAIN_DIR and len(tail) >= 2:
        domains = [tail]  # domain/<domain>/..., or domain/<letter>/<domain>/... when hashed
        if len(tail) >= 3 and len(tail[0]) == 1 and _is_hash_of(tail[0], tail[1]):
            domains.append(tail[1:])
        for domain, *rest in domains:
            for reading in _unhashed(rest):
                names.add(domain + b"!" + b".".join(reading))
    return frozenset(names)

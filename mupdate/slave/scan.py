"""Which mailboxes have a ``cyrus.header`` on our partitions: a bounded scan (design.md "Slave").

Cyrus 3.6 writes ``cyrus.header`` as its three-line magic followed by one dlist line,
``%(T e N user.alice I x4wc3csw9usap879mghge8wh A %(alice lrswipkxtecdan))``, whose ``N`` is
the mailbox's internal name (``mailbox_header_data_cstring``; read back by
``mailbox_read_header``, which also parses only up to the first LF). Headers older than the
dlist form hold ``quotaroot TAB uniqueid`` there and no name. ``scan_partitions`` walks each
partition and collects every name it finds: from ``N`` when the header has one, else from
the legacy directory path (``disk.legacy_names``); a header in a uuid directory that names
nothing (garbage) is reported as unnamed. A "partition" here is the directory holding the
headers: the metapartition when Cyrus keeps them there (``disk.header_roots``).

Safety: whatever hides part of a partition (an absent or unreadable partition, a directory
or header we may not read, an I/O error, a tree deeper than any Cyrus path) raises
``OSError``: the caller must then not take "not found" for "not here". A directory or
header below the partition that goes away while the scan runs (ENOENT, ENOTDIR: Cyrus
deleted or renamed a mailbox) is skipped, as a moment later it would not have been found
at all; the partition itself must still be the one the scan began on (same device and
inode) when the scan ends, so an unmount mid-scan still raises. Symlinked directories are
never followed; a symlinked header counts only when it resolves inside the partition.
Bounded: at most ``max_depth`` directory levels and ``max_header_bytes`` read per header.
A uuid mailbox directory is not listed (its messages are not our business), only its header
read. Imports nothing from Twisted.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from mupdate.cyrusdb.dlist import parse_dlist
from mupdate.slave.disk import HEADER, is_uuid_dir, legacy_names

MAGIC: Final = (
    b"\xa1\x02\x8b\x0dCyrus mailbox header\n"
    b'"The best thing about this system was that it had lots of goals."\n'
    b"\t--Jim Morris on Andrew\n"
)
"""Cyrus's MAILBOX_HEADER_MAGIC (imap/mailbox.h)."""

MAX_DEPTH: Final = 300
"""Directory levels below a partition: a 490-byte name (MAX_MAILBOX_NAME) has fewer parts."""

MAX_HEADER_BYTES: Final = 64 * 1024
"""Read of one header: ``N`` is the second key, right after the magic."""

MAX_UNNAMED_SHOWN: Final = 20


class HeaderError(ValueError):
    """A ``cyrus.header`` Cyrus itself would refuse (IMAP_MAILBOX_BADFORMAT)."""


class ScanError(OSError):
    """The scan could not see everything; nothing it did not find may count as absent."""


def header_name(data: bytes) -> bytes | None:
    """The mailbox name in a header's bytes; None for the old form that holds no name.

    Raises ``HeaderError`` for bytes that are no Cyrus header (wrong magic, no dlist line,
    a dlist without a usable ``N``).
    """
    if not data.startswith(MAGIC):
        raise HeaderError("no Cyrus header magic")
    # Not cut at the first LF, as Cyrus does: a {n+} literal holds one (Cyrus never writes a
    # name as a literal, but reading more than Cyrus can only find a name, never lose one).
    line = data[len(MAGIC) :]
    if not line.startswith(b"%"):
        return None  # quotaroot TAB uniqueid: older than the dlist form
    if not line.startswith(b"%("):
        raise HeaderError("the header line is not a key-value list")
    pos = 2
    try:
        while pos < len(line) and line[pos] != ord(")"):
            key, pos = parse_dlist(line, pos)
            if pos >= len(line) or line[pos] != ord(" "):
                raise HeaderError(f"no value after key at byte {pos}")
            value, pos = parse_dlist(line, pos + 1)
            if key == b"N":
                if not isinstance(value, bytes) or not value:
                    raise HeaderError("N is not a mailbox name")
                return value
            if pos < len(line) and line[pos] == ord(" "):
                pos += 1
    except ValueError as exc:  # the dlist parser's own complaints, HeaderError included
        raise HeaderError(f"bad header dlist: {exc}") from None
    raise HeaderError("the header names no mailbox (no N)")


@dataclass
class ScanResult:
    """What one scan saw. ``unnamed``: paths of headers that name no mailbox (the first
    ``MAX_UNNAMED_SHOWN``), ``unnamed_count`` all of them; ``links``: symlinks not followed;
    ``vanished``: directories listed that were gone when the scan came to them."""

    names: set[bytes] = field(default_factory=set)
    headers: int = 0
    directories: int = 0
    unnamed: list[str] = field(default_factory=list)
    unnamed_count: int = 0
    links: int = 0
    vanished: int = 0


_GONE: Final = frozenset({errno.ENOENT, errno.ENOTDIR})
"""What a path below the partition raises when it was removed or renamed since it was listed."""


def _read_header(path: Path, root: Path, limit: int) -> bytes | None:
    """A header's first ``limit`` bytes; None when it is not a regular file inside ``root``
    (gone, a directory, or a symlink resolving elsewhere). Other faults raise."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(root):
                return None
            st = os.stat(real)
            path = real
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError as exc:
        if exc.errno in _GONE:  # at any step: removed since it was listed, or never there
            return None
        raise


def _root_identity(root: Path) -> tuple[int, int]:
    st = os.stat(root)  # an absent partition raises here: never "no mailboxes"
    return st.st_dev, st.st_ino


def _check_root(root: Path, identity: tuple[int, int]) -> None:
    """What went away below ``root`` during the scan was skipped: fine, unless ``root``
    itself went (an unmount leaves the mount point, on another device)."""
    if _root_identity(root) != identity:
        raise ScanError(errno.ESTALE, "the partition changed during the scan", str(root))


def _list(directory: Path, parts: list[bytes]) -> list[os.DirEntry[str]] | None:
    """The entries of ``directory``; None when it is below the partition and has gone."""
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as exc:
        if parts and exc.errno in _GONE:
            return None
        raise


def _take(result: ScanResult, path: Path, parts: list[bytes], data: bytes) -> None:
    result.headers += 1
    try:
        name = header_name(data)
    except HeaderError:
        name = None
    if name is not None:
        result.names.add(name)
        return
    readings = legacy_names(parts)
    if readings:
        result.names |= readings
        return
    result.unnamed_count += 1
    if len(result.unnamed) < MAX_UNNAMED_SHOWN:
        result.unnamed.append(str(path))


def scan_partition(
    root: Path,
    result: ScanResult,
    *,
    max_depth: int = MAX_DEPTH,
    max_header_bytes: int = MAX_HEADER_BYTES,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Add what ``root`` holds to ``result``; raises ``OSError`` when it cannot see it all."""
    root = Path(os.path.realpath(root))
    identity = _root_identity(root)
    stack: list[tuple[Path, list[bytes]]] = [(root, [])]
    while stack:
        if should_stop():
            raise ScanError(errno.ECANCELED, "partition scan stopped", str(root))
        directory, parts = stack.pop()
        result.directories += 1
        if is_uuid_dir(parts):
            header = directory / HEADER
            data = _read_header(header, root, max_header_bytes)
            if data is not None:
                _take(result, header, parts, data)
            continue
        entries = _list(directory, parts)
        if entries is None:
            result.vanished += 1
            continue
        for entry in entries:
            if entry.name == HEADER:
                header = Path(entry.path)
                data = _read_header(header, root, max_header_bytes)
                if data is not None:
                    _take(result, header, parts, data)
            elif entry.is_symlink():
                result.links += 1
            elif entry.is_dir(follow_symlinks=False):
                if len(parts) >= max_depth:
                    raise ScanError(errno.ELOOP, "deeper than any Cyrus mailbox path", entry.path)
                stack.append((Path(entry.path), [*parts, os.fsencode(entry.name)]))
    _check_root(root, identity)


def scan_partitions(
    partitions: Iterable[Path],
    *,
    max_depth: int = MAX_DEPTH,
    max_header_bytes: int = MAX_HEADER_BYTES,
    should_stop: Callable[[], bool] = lambda: False,
) -> ScanResult:
    """Every mailbox name with a header on one of ``partitions`` (see the module docstring).

    An absent partition raises ``FileNotFoundError``: an unmounted spool must not read as
    "no mailboxes here".
    """
    result = ScanResult()
    for root in partitions:
        scan_partition(
            root,
            result,
            max_depth=max_depth,
            max_header_bytes=max_header_bytes,
            should_stop=should_stop,
        )
    return result

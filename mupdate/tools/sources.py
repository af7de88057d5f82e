"""Where ``mupdate-push`` reads a backend's own mailbox list from (protocol doc §9.7, §10.3).

Four sources, each giving ``LocalMailbox`` values (name, partition, ACL) of real local
mailboxes only:

* a Cyrus 3.6 ``mailboxes.db`` through Cyrus's own ``cyr_dbtool -C IMAPD.CONF DB twoskip
  show`` (run as the ``cyrus`` user when we are root), whose output is ``key TAB value LF``
  per record, raw bytes: key ``N`` + dbname (§7.8: ``.`` -> 0x1F, ``^`` stays as ``.``,
  domain end 0x1D), value a Cyrus dlist ``%(T <mbtype> [I uid] [P part] [S server] ...
  A %(<id> <rights> ...))``. ``I`` + uniqueid records (3.6's second index) are skipped.
* a ``ctl_mboxlist -d`` JSON dump (file or stdin): ``{name: {"mbtype", "partition", "acl":
  {id: rights}, ...}}``, ACL order kept.
* our slave's SQLite store: the ACTIVE entries it holds at ``<servername>!...``.
* a scan of partition directories for ``cyrus.header`` files: 3.6 headers carry the name
  and ACL as a dlist on their 4th line (either spool layout, uuid or legacy); older headers
  (``quotaroot TAB uniqueid`` / flags / ACL lines) are named by their path in the legacy
  layout (``.`` of the name = ``/``; ``^`` stays ``^`` on disk, as Cyrus 3.6 writes it).

What is skipped, as ``ctl_mboxlist -m`` skips it: tombstones and deleted records (mbtype
``d``), intermediates (``i``), reserved records (``z``) and remote ones (``r``, or a server
named). Parsing is pure; only the ``read_*``/``scan_*`` functions touch files or processes.
Imports nothing from Twisted.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mupdate.cyrusdb.dlist import KvList, parse_dlist
from mupdate.cyrusdb.records import CyrusRecord, dbname_to_name, record_from_dlist
from mupdate.model import EntryState, MailboxEntry, server_of
from mupdate.tools.pushplan import LocalMailbox

DEFAULT_DBTOOL: Final = "/usr/lib/cyrus/bin/cyr_dbtool"
HEADER_NAME: Final = "cyrus.header"
HEADER_MAGIC: Final = b"\xa1\x02\x8b\x0dCyrus mailbox header\n"
SKIP_FLAGS: Final = {"d": "deleted", "i": "intermediate", "z": "reserved", "r": "remote"}


class SourceError(Exception):
    """The local list cannot be read or makes no sense; one line for the operator."""


# -- records and the local-mailbox filter -----------------------------------------------


@dataclass(frozen=True)
class LocalList:
    mailboxes: list[LocalMailbox]
    skipped: Counter[str] = field(default_factory=Counter)
    source: str = ""

    def describe(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        extra = f" (skipped: {skipped})" if skipped else ""
        return f"{len(self.mailboxes)} local mailboxes from {self.source}{extra}"


def select_local(records: Iterable[CyrusRecord], source: str) -> LocalList:
    """Keep real local mailboxes; count what was skipped and why."""
    kept: dict[bytes, LocalMailbox] = {}
    skipped: Counter[str] = Counter()
    for record in records:
        why = next((SKIP_FLAGS[f] for f in SKIP_FLAGS if f in record.mbtype), None)
        if why is None and record.server:
            why = "remote"
        if why is None and record.partition is None:
            why = "without partition"
        if why is not None:
            skipped[why] += 1
            continue
        assert record.partition is not None
        if record.name in kept:
            raise SourceError(f"{source}: the name {record.name!r} appears twice")
        kept[record.name] = LocalMailbox(record.name, record.partition, record.acl)
    return LocalList(list(kept.values()), skipped, source)


def parse_dbtool_show(data: bytes) -> Iterator[CyrusRecord]:
    """Records of ``cyr_dbtool ... twoskip show`` output; only ``N`` (by-name) keys.

    ``N`` and ``I`` values are dlists and may hold ``{n}`` literals with line ends, so they
    are parsed, not split at LF; any other key (``$RACL...``) is skipped one line at a
    time."""
    pos = 0
    line = 1
    while pos < len(data):
        tab = data.find(b"\t", pos)
        newline = data.find(b"\n", pos)
        if tab < 0 or (0 <= newline < tab):
            raise SourceError(f"cyr_dbtool output, record {line}: no TAB after the key")
        key = data[pos:tab]
        if not key.startswith((b"N", b"I")):  # not dlist values ($RACL, ...): one line each
            pos = len(data) if newline < 0 else newline + 1
            line += 1
            continue
        try:
            value, end = parse_dlist(data, tab + 1)
        except ValueError as exc:
            raise SourceError(f"cyr_dbtool output, record {line} ({key!r}): {exc}") from None
        if data[end : end + 1] != b"\n":
            raise SourceError(f"cyr_dbtool output, record {line} ({key!r}): junk after value")
        pos = end + 1
        line += 1
        if key.startswith(b"N"):
            try:
                yield record_from_dlist(dbname_to_name(key[1:]), value, f"record {key!r}")
            except ValueError as exc:
                raise SourceError(f"cyr_dbtool output: {exc}") from None


def _cyrus_user(user: str | None) -> tuple[int, int] | None:
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SourceError(f"no such user {user!r} to run cyr_dbtool as") from None
    return entry.pw_uid, entry.pw_gid


def read_cyrus_db(
    db_path: Path,
    imapd_conf: Path,
    *,
    dbtool: str = DEFAULT_DBTOOL,
    user: str | None = "cyrus",
    timeout: float = 300.0,
) -> LocalList:
    """Run ``cyr_dbtool -C IMAPD.CONF DB twoskip show`` (paths made absolute; as ``user``
    when we are root, so Cyrus files it may create stay Cyrus's) and keep local mailboxes."""
    db = db_path.absolute()
    conf = imapd_conf.absolute()
    if not db.is_file():
        raise SourceError(f"no mailboxes.db at {db}")
    argv = [dbtool, "-C", str(conf), str(db), "twoskip", "show"]
    ids = _cyrus_user(user) if os.geteuid() == 0 else None
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd="/",
            user=ids[0] if ids else None,
            group=ids[1] if ids else None,
            extra_groups=[] if ids else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SourceError(f"cannot run {dbtool}: {exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SourceError(f"{dbtool} exited {proc.returncode}: {err[-1] if err else 'no message'}")
    return select_local(parse_dbtool_show(proc.stdout), f"{db} (cyr_dbtool)")


# -- ctl_mboxlist -d --------------------------------------------------------------------


def _utf8(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its pairs, in order (a JSON array stays a plain list)."""


def parse_dump_json(text: str) -> Iterator[CyrusRecord]:
    """``ctl_mboxlist -d`` output (Cyrus 3.6: one JSON object keyed by name)."""
    try:
        top = json.loads(text, object_pairs_hook=_Pairs)
    except ValueError as exc:
        raise SourceError(f"the dump is not JSON: {exc}") from None
    if not isinstance(top, _Pairs):
        raise SourceError("the dump is not a JSON object of mailboxes")
    for name, rec in top:
        if not isinstance(rec, _Pairs):
            raise SourceError(f"dump entry {name!r} is not an object")
        fields = dict(rec)
        acl = fields.get("acl") or _Pairs()
        partition = fields.get("partition")
        server = fields.get("server")
        if not isinstance(acl, _Pairs) or not all(isinstance(v, str) for _, v in acl):
            raise SourceError(f"dump entry {name!r}: bad acl")
        if partition is not None and not isinstance(partition, str):
            raise SourceError(f"dump entry {name!r}: bad partition")
        yield CyrusRecord(
            _utf8(name),
            str(fields.get("mbtype", "")),
            None if partition is None else _utf8(partition),
            _utf8(server) if isinstance(server, str) and server else None,
            b"".join(_utf8(k) + b"\t" + _utf8(v) + b"\t" for k, v in acl),
        )


def read_dump(text: str, source: str) -> LocalList:
    return select_local(parse_dump_json(text), source)


# -- our slave's store ------------------------------------------------------------------


def local_from_entries(
    entries: Iterable[MailboxEntry], servername: bytes, source: str
) -> LocalList:
    """ACTIVE entries a slave holds at ``<servername>!<partition>``."""
    records = []
    for e in entries:
        if server_of(e.location) != servername:
            continue
        _, bang, partition = e.location.partition(b"!")
        records.append(
            CyrusRecord(
                e.name,
                "e" if e.state is EntryState.ACTIVE else "ez",
                partition if bang else None,
                None,
                e.acl,
            )
        )
    return select_local(records, source)


def read_slave_db(path: Path, servername: bytes) -> LocalList:
    from mupdate.db.sqlite import SqliteStore
    from mupdate.db.store import StoreError

    if not path.is_file():  # SqliteStore would create an empty one
        raise SourceError(f"no slave database at {path}")
    try:
        store = SqliteStore(path)
        try:
            entries = store.load_entries()
        finally:
            store.close()
    except StoreError as exc:
        raise SourceError(str(exc)) from None
    return local_from_entries(entries, servername, f"{path} (slave store)")


# -- partition scan ---------------------------------------------------------------------


def name_from_legacy_path(relative: Path) -> bytes:
    """``[domain/<d>/]a/b/c`` -> ``[<d>!]a.b.c`` (Cyrus 3.6 keeps ``^`` on disk)."""
    parts = [os.fsencode(p) for p in relative.parts]
    if len(parts) >= 3 and parts[0] == b"domain":
        return parts[1] + b"!" + b".".join(parts[2:])
    return b".".join(parts)


def parse_header(data: bytes, relative: Path, partition: bytes) -> CyrusRecord:
    """A ``cyrus.header`` found at ``<partition>/<relative>/cyrus.header``."""
    if not data.startswith(HEADER_MAGIC):
        raise ValueError("not a cyrus.header")
    lines = data.split(b"\n")
    if len(lines) < 4:
        raise ValueError("header too short")
    fourth = lines[3]
    if fourth.startswith(b"%("):
        value, _ = parse_dlist(fourth)
        if not isinstance(value, KvList) or not isinstance(value.get(b"N"), bytes):
            raise ValueError("3.6 header without a name")
        name = value.get(b"N")
        assert isinstance(name, bytes)
        record = record_from_dlist(name, value, "header")
        return CyrusRecord(record.name, record.mbtype, partition, None, record.acl)
    if len(lines) < 6:
        raise ValueError("pre-3.6 header too short")
    return CyrusRecord(name_from_legacy_path(relative), "e", partition, None, lines[5])


def scan_partitions(partitions: dict[bytes, Path]) -> LocalList:
    """Every ``cyrus.header`` under each partition; unreadable or foreign headers are
    counted as skipped, never guessed at."""
    records: list[CyrusRecord] = []
    bad: Counter[str] = Counter()
    for pname, root in sorted(partitions.items()):
        if not root.is_dir():
            raise SourceError(f"partition {pname.decode(errors='replace')}: no directory {root}")
        for directory, _dirs, files in os.walk(root, onerror=_raise):
            if HEADER_NAME not in files:
                continue
            path = Path(directory) / HEADER_NAME
            try:
                data = path.read_bytes()
                records.append(parse_header(data, Path(directory).relative_to(root), pname))
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc.strerror}") from None
            except ValueError:
                bad["unreadable header"] += 1
    roots = " ".join(f"{k.decode(errors='replace')}={v}" for k, v in sorted(partitions.items()))
    result = select_local(records, f"a scan of {roots}")
    result.skipped.update(bad)
    return result


def _raise(exc: OSError) -> None:
    raise SourceError(f"cannot scan {exc.filename}: {exc.strerror}")

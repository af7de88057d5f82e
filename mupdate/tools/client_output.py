"""What ``mupdate-client`` prints: aligned text columns for people, JSON lines for scripts
(protocol doc §5.6-§5.8, §6.1, §11). Pure functions over response events; no Twisted, no I/O.

Text (for people; ``--json`` is the exact form)::

    NAME          STATE    LOCATION     ACL
    user.alice    MAILBOX  be1!default  alice lrswipkxtecdan anyone lrs
    user.bob      RESERVE  be2!p        -

* A byte that is not part of printable UTF-8 is shown as ``\\xHH`` (an 8-bit Latin-1 name
  ``user.\\xe9t\\xe9``, a CR ``\\x0d``), a backslash as ``\\\\``, a tab in a name or location as
  ``\\t``; so what is shown names the bytes exactly.
* The ACL (``identifier TAB rights TAB``..., §11.3) is shown with each tab as one space and
  the trailing tab dropped: ``alice lrs bob lr``. A RESERVE has no ACL (``-``); an empty
  name, location or ACL is shown as ``""``. A name missing from FIND has state ``MISSING``.
* Widths are display widths (wide characters count two).

JSON: one object per line, fields ``kind``, ``name``, ``location``, ``acl``:
``kind`` is ``"mailbox"``, ``"reserve"``, ``"delete"`` (watch only) or ``"missing"`` (FIND
found nothing); ``acl`` is null for RESERVE, DELETE and MISSING, ``location`` null for the
last two. ``watch`` adds ``change``: null for the entries of the initial dump, otherwise the
kind of change (``"mailbox"``, ``"reserve"`` or ``"delete"``). A byte string is a JSON
string when it is valid UTF-8 made of printable characters and tabs, else
``{"base64": "..."}`` - the same rule as ``mupdate-admin export`` (mupdate/db/export.py).
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from mupdate.db.export import field_json
from mupdate.model import server_of
from mupdate.protocol.responses import DeleteLine, MailboxLine, ReserveLine

Entry = MailboxLine | ReserveLine
DataLine = MailboxLine | ReserveLine | DeleteLine
Row = tuple[str, str, str, str]

HEADER: Final[Row] = ("NAME", "STATE", "LOCATION", "ACL")
NONE: Final = "-"
EMPTY: Final = '""'
GAP: Final = "  "

_NAMED_ESCAPES: Final = {"\\": "\\\\", "\t": "\\t"}


# ---------------------------------------------------------------- text


def show(value: bytes, *, tab: str = "\\t") -> str:
    """``value`` for a terminal: printable UTF-8 as is, everything else as ``\\xHH``."""
    out: list[str] = []
    for char in value.decode("utf-8", "surrogateescape"):
        if char == "\t":
            out.append(tab)
        elif char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:  # a control or format character: its UTF-8 bytes
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def show_field(value: bytes) -> str:
    return show(value) if value else EMPTY


def show_acl(acl: bytes) -> str:
    """An ACL with its tabs as spaces and the trailing tab dropped (§11.3)."""
    if not acl:
        return EMPTY
    return show(acl.removesuffix(b"\t"), tab=" ") or EMPTY


def entry_row(line: DataLine) -> Row:
    match line:
        case MailboxLine():
            return (
                show_field(line.name),
                "MAILBOX",
                show_field(line.location),
                show_acl(line.acl),
            )
        case ReserveLine():
            return (show_field(line.name), "RESERVE", show_field(line.location), NONE)
        case DeleteLine():
            return (show_field(line.name), "DELETE", NONE, NONE)
    raise TypeError(f"not a data line: {line!r}")


def missing_row(name: bytes) -> Row:
    return (show_field(name), "MISSING", NONE, NONE)


def display_width(text: str) -> int:
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def column_widths(rows: Iterable[Row], header: Row = HEADER) -> list[int]:
    widths = [display_width(cell) for cell in header]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], display_width(cell))
    return widths


def format_row(row: Row, widths: Sequence[int]) -> str:
    """Cells padded to ``widths`` and joined by two spaces; the last cell is not padded."""
    cells = [
        cell + " " * (width - display_width(cell)) for cell, width in zip(row, widths, strict=True)
    ]
    cells[-1] = row[-1]
    return GAP.join(cells)


def format_table(rows: Sequence[Row], header: Row | None = HEADER) -> list[str]:
    """The header (if any) and the rows, aligned; no lines at all for no rows."""
    if not rows:
        return []
    widths = column_widths(rows, header or ("",) * 4)
    lines = [format_row(header, widths)] if header else []
    return lines + [format_row(row, widths) for row in rows]


# ---------------------------------------------------------------- JSON


#: Text when it reads back unchanged; ``{"base64": ...}`` otherwise: mupdate-admin's rule.
json_field = field_json


def entry_record(line: DataLine) -> dict[str, object]:
    match line:
        case MailboxLine():
            return {
                "kind": "mailbox",
                "name": json_field(line.name),
                "location": json_field(line.location),
                "acl": json_field(line.acl),
            }
        case ReserveLine():
            return {
                "kind": "reserve",
                "name": json_field(line.name),
                "location": json_field(line.location),
                "acl": None,
            }
        case DeleteLine():
            return {"kind": "delete", "name": json_field(line.name), "location": None, "acl": None}
    raise TypeError(f"not a data line: {line!r}")


def watch_record(line: DataLine, *, change: bool) -> dict[str, object]:
    record = entry_record(line)
    record["change"] = record["kind"] if change else None
    return record


def missing_record(name: bytes) -> dict[str, object]:
    return {"kind": "missing", "name": json_field(name), "location": None, "acl": None}


def json_line(record: dict[str, object]) -> str:
    return json.dumps(record, ensure_ascii=False)


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class ServerCount:
    server: bytes
    active: int
    reserved: int


@dataclass(frozen=True)
class StatusReport:
    """What ``status`` learns from a server without extensions (§3.1, §5.5, §5.7)."""

    address: str
    servername: bytes
    implementation: bytes
    version: bytes
    role: str  # "master", "slave" or "unknown"
    master: bytes | None  # a slave's mupdate_server, or the raw role string when unknown
    capabilities: tuple[tuple[bytes, tuple[bytes, ...]], ...]
    mechanisms: tuple[str, ...]
    active: int
    reserved: int
    servers: tuple[ServerCount, ...] = field(default=())
    noop_ms: float = 0.0

    @property
    def total(self) -> int:
        return self.active + self.reserved


def parse_role(role: bytes) -> tuple[str, bytes | None]:
    """The banner's last string (§3.1): ``(master)`` or ``mupdate://<its master>``."""
    if role == b"(master)":
        return "master", None
    if role.startswith(b"mupdate://"):
        return "slave", role.removeprefix(b"mupdate://")
    return "unknown", role


def count_entries(entries: Iterable[Entry]) -> tuple[int, int, tuple[ServerCount, ...]]:
    """Active and reserved totals, and both per server part (sorted by server)."""
    active: Counter[bytes] = Counter()
    reserved: Counter[bytes] = Counter()
    for entry in entries:
        counter = active if isinstance(entry, MailboxLine) else reserved
        counter[server_of(entry.location)] += 1
    servers = tuple(
        ServerCount(server, active[server], reserved[server])
        for server in sorted(set(active) | set(reserved))
    )
    return sum(active.values()), sum(reserved.values()), servers


def status_lines(report: StatusReport) -> list[str]:
    if report.role == "master":
        role = "master"
    elif report.role == "slave":
        role = f"slave of {show(report.master or b'')}"
    else:
        role = f"unknown ({show(report.master or b'')})"
    capabilities = [
        " ".join([show(name), *(show(arg) for arg in args)]) for name, args in report.capabilities
    ]
    pairs = [
        ("server", report.address),
        ("servername", show(report.servername)),
        ("implementation", show(report.implementation)),
        ("version", show(report.version)),
        ("role", role),
        ("capabilities", ", ".join(capabilities) or NONE),
        ("mechanisms", " ".join(report.mechanisms) or NONE),
        ("entries", f"{report.total} ({report.active} active, {report.reserved} reserved)"),
        *(
            (
                f"  {show_field(count.server)}",
                f"{count.active + count.reserved} ({count.active} active, {count.reserved} reserved)",
            )
            for count in report.servers
        ),
        ("noop", f"{report.noop_ms:.1f} ms"),
    ]
    width = max(len(key) for key, _ in pairs) + 1
    return [f"{key + ':':<{width}} {value}" for key, value in pairs]


def status_record(report: StatusReport) -> dict[str, object]:
    return {
        "kind": "status",
        "server": report.address,
        "servername": json_field(report.servername),
        "implementation": json_field(report.implementation),
        "version": json_field(report.version),
        "role": report.role,
        "master": None if report.master is None else json_field(report.master),
        "capabilities": [
            {"name": json_field(name), "args": [json_field(arg) for arg in args]}
            for name, args in report.capabilities
        ],
        "mechanisms": list(report.mechanisms),
        "entries": {
            "total": report.total,
            "active": report.active,
            "reserved": report.reserved,
            "servers": [
                {"server": json_field(c.server), "active": c.active, "reserved": c.reserved}
                for c in report.servers
            ],
        },
        "noop_ms": round(report.noop_ms, 3),
    }

"""Export and import of the mailbox list as one JSON document (design.md "A mailbox entry").

Format, version 1::

    {"format": "mupdate-export", "version": 1, "entries": [
    {"name": "user.alice", "state": "active", "location": "be1!default", "acl": "alice\\tlrs\\t"},
    {"name": {"base64": "dXNlci7p"}, "state": "reserved", "location": "be1!default", "acl": ""}
    ]}

Names, locations and ACLs are bytes: a field is written as text when it is valid UTF-8 made
of printable characters and tabs, otherwise as ``{"base64": ...}``, so every value comes back
byte for byte. Import accepts either form for any field and validates strictly. Imports
nothing from Twisted.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from typing import IO, Final

from mupdate.model import EntryState, MailboxEntry

FORMAT: Final = "mupdate-export"
VERSION: Final = 1

_FIELDS: Final = ("name", "state", "location", "acl")
_BYTES_FIELDS: Final = ("name", "location", "acl")
_STATES: Final = {state.value: state for state in EntryState}


def field_json(value: bytes) -> str | dict[str, str]:
    """Text when it reads back unchanged and unsurprising; base64 otherwise."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}
    if text.replace("\t", "").isprintable():
        return text
    return {"base64": base64.b64encode(value).decode("ascii")}


def export_entries(
    entries: Iterable[MailboxEntry],
    out: IO[str],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``entries`` to ``out`` as one export document, one entry a line; return the count.

    Streams: the whole list is never held as JSON in memory. ``progress`` is told the count
    after each entry.
    """
    out.write(f'{{"format": "{FORMAT}", "version": {VERSION}, "entries": [')
    count = 0
    for entry in entries:
        record = {
            "name": field_json(entry.name),
            "state": entry.state.value,
            "location": field_json(entry.location),
            "acl": field_json(entry.acl),
        }
        out.write(("\n" if count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
        count += 1
        if progress is not None:
            progress(count)
    out.write("\n]}\n")
    return count


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r} in a JSON object")
        result[key] = value
    return result


def _field_bytes(value: object, where: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates from \ud800-style escapes
            raise ValueError(f"{where}: text is not encodable as UTF-8 ({e.reason})") from e
    if isinstance(value, dict):
        if set(value) != {"base64"} or not isinstance(value["base64"], str):
            raise ValueError(f'{where}: expected a string or {{"base64": "<text>"}}')
        try:
            return base64.b64decode(value["base64"].encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error) as e:
            raise ValueError(f"{where}: invalid base64 ({e})") from e
    raise ValueError(f'{where}: expected a string or {{"base64": ...}}, got {type(value).__name__}')


def _entry(index: int, record: object) -> MailboxEntry:
    where = f"entries[{index}]"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    missing = [field for field in _FIELDS if field not in record]
    extra = sorted(set(record) - set(_FIELDS))
    if missing or extra:
        raise ValueError(f"{where}: missing fields {missing}, unknown fields {extra}")
    state = record["state"]
    if not isinstance(state, str) or state not in _STATES:
        raise ValueError(f"{where}.state: expected 'active' or 'reserved', got {state!r}")
    name, location, acl = (_field_bytes(record[f], f"{where}.{f}") for f in _BYTES_FIELDS)
    if not name:
        raise ValueError(f"{where}.name: empty mailbox name")
    if _STATES[state] is EntryState.RESERVED and acl:
        raise ValueError(f"{where}.acl: a reserved entry must have an empty ACL")
    return MailboxEntry(name, _STATES[state], location, acl)


def import_entries(
    src: IO[str], progress: Callable[[int], None] | None = None
) -> list[MailboxEntry]:
    """Read an export document; ``ValueError`` names the entry index and field at fault.
    ``progress`` is told the count after each entry is checked."""
    try:
        document = json.load(src, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON document: {e}") from e
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object at the top level")
    if set(document) != {"format", "version", "entries"}:
        raise ValueError(
            f"top level: expected keys format, version, entries; got {sorted(document)}"
        )
    if document["format"] != FORMAT:
        raise ValueError(f"format: expected {FORMAT!r}, got {document['format']!r}")
    version = document["version"]
    if type(version) is not int or version != VERSION:
        raise ValueError(f"version: expected {VERSION}, got {version!r}")
    records = document["entries"]
    if not isinstance(records, list):
        raise ValueError("entries: expected a list")
    entries: list[MailboxEntry] = []
    first_index: dict[bytes, int] = {}
    for index, record in enumerate(records):
        entry = _entry(index, record)
        if entry.name in first_index:
            raise ValueError(
                f"entries[{index}].name: {entry.name!r} already given at entries[{first_index[entry.name]}]"
            )
        first_index[entry.name] = index
        entries.append(entry)
        if progress is not None:
            progress(len(entries))
    return entries

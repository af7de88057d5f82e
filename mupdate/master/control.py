"""The master's local control socket: atomic import of a whole list into a running master.

How it works: ``mupdate-admin import`` finds the master running (it holds the data
directory's lock) and sends ``IMPORT`` and the JSON export over a unix socket,
``<configdirectory>/mupdate-control``, mode 0600 (only the master's own user, root aside).
It half-closes; the master checks the JSON strictly, turns the difference between its list
and the import into changes (puts, and removals with tombstones), applies them to the index
and submits them in one reactor turn, so they land in ONE commit batch: all or nothing. It
answers ``OK <added> <changed> <removed>`` once durable (streams have the changes by then)
or ``NO <reason>``, and closes. Not MUPDATE: no backend or slave ever talks to it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Final

from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mupdate.db.export import import_entries
from mupdate.db.store import Change, PutEntry, RemoveEntry
from mupdate.logs import milliseconds
from mupdate.master.service import MasterHandler, WriteContext
from mupdate.model import MailboxEntry, Tombstone

SOCKET_NAME: Final = "mupdate-control"
MAX_IMPORT: Final = 1024 * 1024 * 1024  # bytes of JSON accepted on the socket


def import_changes(
    current: list[MailboxEntry], wanted: list[MailboxEntry], now: float
) -> list[tuple[Change, MailboxEntry | None, MailboxEntry | None]]:
    """Changes that turn ``current`` into ``wanted``, by set; each with (old, new)."""
    have = {e.name: e for e in current}
    want = {e.name: e for e in wanted}
    changes: list[tuple[Change, MailboxEntry | None, MailboxEntry | None]] = []
    for name, entry in want.items():
        old = have.get(name)
        if old != entry:
            changes.append((PutEntry(entry), old, entry))
    for name, old in have.items():
        if name not in want:
            changes.append((RemoveEntry(name, Tombstone(name, old.location, now)), old, None))
    return changes


@implementer(IHalfCloseableProtocol)
class ControlProtocol(Protocol):
    log = Logger()

    def __init__(self, handler: MasterHandler, seconds: Callable[[], float]) -> None:
        self.handler = handler
        self.seconds = seconds
        self._data = bytearray()
        self._refused = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        self._data += data
        if len(self._data) > MAX_IMPORT:
            self._refused = True
            self._answer(b"NO import larger than the control socket accepts\n")

    def readConnectionLost(self) -> None:
        """The client half-closed: the whole request is here."""
        if self._refused:
            return
        verb, _, body = bytes(self._data).partition(b"\n")
        if verb.strip() != b"IMPORT":
            self._answer(b"NO unknown request; expected IMPORT\n")
            return
        try:
            wanted = import_entries(io.StringIO(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            self._answer(f"NO import refused, nothing changed: {exc}\n".encode())
            return
        self._apply(wanted)

    def writeConnectionLost(self) -> None:
        pass

    def _apply(self, wanted: list[MailboxEntry]) -> None:
        changes = import_changes(list(self.handler.index.in_order()), wanted, self.seconds())
        added = sum(1 for _, old, new in changes if old is None)
        removed = sum(1 for _, _, new in changes if new is None)
        changed = len(changes) - added - removed
        for change, _, _ in changes:
            self.handler.index.apply(change)
        durable = self.handler.committer.submit_all(
            [(change, WriteContext("import", "IMPORT", old, new)) for change, old, new in changes]
        )
        started = self.seconds()
        self.log.info(
            "import of {count} entries: committing {added} added, {updated} changed, "
            "{removed} removed",
            count=len(wanted),
            added=added,
            updated=changed,
            removed=removed,
        )

        def done(_: object) -> None:
            self.log.info(
                "import of {count} entries committed in {duration_ms} ms",
                count=len(wanted),
                duration_ms=milliseconds(self.seconds() - started),
            )
            self._answer(b"OK %d %d %d\n" % (added, changed, removed))

        def failed(failure: Failure) -> None:
            self.log.error(
                "import of {count} entries failed, nothing changed: {reason}",
                count=len(wanted),
                reason=failure.getErrorMessage(),
            )
            self._answer(
                f"NO import failed, nothing changed: {failure.getErrorMessage()}\n".encode()
            )

        gatherResults(durable, consumeErrors=True).addCallbacks(done, failed)

    def _answer(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.write(line)
            self.transport.loseConnection()


class ControlFactory(Factory):
    def __init__(self, handler: MasterHandler, seconds: Callable[[], float]) -> None:
        self.handler = handler
        self.seconds = seconds

    def buildProtocol(self, addr: object) -> ControlProtocol:
        return ControlProtocol(self.handler, self.seconds)

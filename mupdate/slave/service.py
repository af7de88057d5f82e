"""The slave's read-only command handler: FIND, LIST, UPDATE and NOOP from its copy (§5, §9.5).

Writes never reach here: the engine answers them ``BAD "read-only session"`` (read_only).
A slave that starts with an empty copy makes readers wait until the first sync, as Cyrus
does; one with a copy from an earlier run serves that last-known-good copy at once, also
while it resyncs (Cyrus goes unready and drops idle clients instead).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from mupdate.master.streams import dump_chunks, entry_line
from mupdate.net.server import MupdateServerProtocol, Reply
from mupdate.protocol import texts
from mupdate.protocol.commands import Command, Find, List, Noop, Update
from mupdate.protocol.responses import Done, Status
from mupdate.slave.replica import Replica


class SlaveHandler:
    log = Logger()
    read_only = True

    def __init__(self, replica: Replica, role: bytes, ready: bool) -> None:
        self.replica = replica
        self.role = role
        self._ready = ready
        self._waiting: list[Deferred[None]] = []

    @property
    def ready(self) -> bool:
        return self._ready

    def mark_ready(self) -> None:
        if self._ready:
            return
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def when_ready(self) -> Deferred[None]:
        if self._ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def handle(self, command: Command, session: MupdateServerProtocol) -> Reply | Deferred[Reply]:
        if isinstance(command, Noop):
            return [Done(command.tag, Status.OK, texts.NOOP_DONE)]
        if not self._ready:
            d = self.when_ready()
            d.addCallback(lambda _: self._read(command, session))
            return d  # type: ignore[return-value]  # fires with the reply
        return self._read(command, session)

    def _read(self, command: Command, session: MupdateServerProtocol) -> Reply:
        index = self.replica.index
        match command:
            case Find():
                entry = index.get(command.name)
                found = [entry_line(command.tag, entry)] if entry is not None else []
                return [*found, Done(command.tag, Status.OK, texts.SEARCH_COMPLETED)]
            case List():
                entries = list(index.in_order(command.prefix))
                return [
                    dump_chunks(command.tag, entries),
                    Done(command.tag, Status.OK, texts.LIST_COMPLETE),
                ]
            case Update():
                entries = list(
                    index.for_servers(command.hosts) if command.hosts else index.in_order()
                )
                self.replica.hub.subscribe(session, command.tag, command.hosts)
                return [
                    dump_chunks(command.tag, entries),
                    Done(command.tag, Status.OK, texts.STREAMING_STARTS),
                ]
        raise AssertionError(f"the engine handed a slave an unexpected {command!r}")

    def connection_closed(self, session: MupdateServerProtocol) -> None:
        self.replica.hub.unsubscribe(session)

"""The master's command handler: reads from the index, writes through rules and group commit.

How it works: a write is decided by the pure rules (``rules.decide``) against the in-memory
index, applied to the index at once (so the next write, from any connection, is decided
against it), and submitted to the group committer. Its OK is sent only when its batch is
durable and has been published to every stream (§7.7). A write that changes nothing is
answered once everything before it is durable, so an OK never rests on an unwritten change.
If a commit fails, every write not yet durable gets NO and the index is reloaded from disk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.db.index import MailboxIndex, load_index
from mupdate.db.store import (
    Change,
    ExpireTombstones,
    MailboxStore,
    change_name,
)
from mupdate.logs import LARGE_DUMP, audit, milliseconds, text
from mupdate.master import authority as authority_rules
from mupdate.master.commit import GroupCommitter, RunBlocking
from mupdate.master.rules import Apply, Refuse, Unchanged, decide
from mupdate.master.streams import StreamChange, StreamHub, dump_chunks, entry_line
from mupdate.model import MailboxEntry
from mupdate.net.server import MupdateServerProtocol, Reply
from mupdate.protocol import texts
from mupdate.protocol.commands import (
    Activate,
    Command,
    Deactivate,
    Delete,
    Find,
    List,
    Noop,
    Reserve,
    Update,
)
from mupdate.protocol.responses import Done, Status

ROLE: Final = b"(master)"

WriteCommand = Reserve | Activate | Deactivate | Delete


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What the audit log and the streams need once a change is durable."""

    user: str
    command: str
    old: MailboxEntry | None
    new: MailboxEntry | None


class _Counted:
    """Passes entries through, counting them (for the dump's log line)."""

    def __init__(self, entries: Iterable[MailboxEntry]) -> None:
        self._entries = entries
        self.count = 0

    def __iter__(self) -> Iterator[MailboxEntry]:
        for entry in self._entries:
            self.count += 1
            yield entry


class MasterHandler:
    log = Logger()
    role = ROLE
    read_only = False

    def __init__(
        self,
        index: MailboxIndex,
        store: MailboxStore,
        run_blocking: RunBlocking,
        clock: IReactorTime,
        tombstone_window: float,
        authority: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.index = index
        self.authority: Mapping[str, frozenset[str]] = authority or {}
        self.hub = StreamHub(clock)
        self.clock = clock
        self.refusals: Counter[str] = Counter()  # writes answered NO: "authority", "rules"
        self.tombstone_window = tombstone_window
        self._store = store
        self._run_blocking = run_blocking
        self.committer: GroupCommitter[WriteContext | None] = GroupCommitter(
            store, run_blocking, self._committed, self._reload
        )

    # -- CommandHandler ------------------------------------------------------------------

    def handle(self, command: Command, session: MupdateServerProtocol) -> Reply | Deferred[Reply]:
        match command:
            case Noop():
                self.hub.flush()  # lines held for a batch leave before this OK (§8.3)
                return [Done(command.tag, Status.OK, texts.NOOP_DONE)]
            case Find():
                entry = self.index.get(command.name)
                found = [entry_line(command.tag, entry)] if entry is not None else []
                return [*found, Done(command.tag, Status.OK, texts.SEARCH_COMPLETED)]
            case List():
                entries = self.index.in_order(command.prefix)
                return [
                    self._dump(command.tag, entries, "LIST", session),
                    Done(command.tag, Status.OK, texts.LIST_COMPLETE),
                ]
            case Update():
                return self._update(command, session)
            case Reserve() | Activate() | Deactivate() | Delete():
                return self._write(command, session)
        raise AssertionError(f"the engine handed the master an unexpected {command!r}")

    def connection_closed(self, session: MupdateServerProtocol) -> None:
        self.hub.unsubscribe(session)

    # -- reads -------------------------------------------------------------------------

    def _dump(
        self,
        tag: bytes,
        entries: Iterable[MailboxEntry],
        command: str,
        session: MupdateServerProtocol,
    ) -> Iterator[bytes]:
        """The dump's chunks, rendered as the transport takes them; a large one logs its size
        and how long it took to send, and an UPDATE logs that its stream has started."""
        started = self.clock.seconds()
        counted = _Counted(entries)
        yield from dump_chunks(tag, counted)
        if command == "UPDATE":
            self.log.info(
                "{user} at {peer} streaming {count} entries",
                user=session.user,
                peer=session.peer,
                count=counted.count,
            )
        if counted.count >= LARGE_DUMP:
            self.log.info(
                "sent {count} entries to {user} at {peer} for {tag} {command} in {duration_ms} ms",
                count=counted.count,
                user=session.user,
                peer=session.peer,
                tag=text(tag),
                command=command,
                duration_ms=milliseconds(self.clock.seconds() - started),
            )

    def _update(self, command: Update, session: MupdateServerProtocol) -> Reply:
        # The dump's names are fixed and the stream subscribed in the same reactor turn, so
        # no change can fall between the dump and the stream (§8.1). The dump is read lazily
        # as the slave takes it (a million entries never block writers): an entry changed
        # meanwhile goes out as it is when reached, and its change follows on the stream.
        entries = self.index.for_servers(command.hosts) if command.hosts else self.index.in_order()
        self.hub.subscribe(session, command.tag, command.hosts)
        return [
            self._dump(command.tag, entries, "UPDATE", session),
            Done(command.tag, Status.OK, texts.STREAMING_STARTS),
        ]

    # -- writes ------------------------------------------------------------------------

    def _write(
        self, command: WriteCommand, session: MupdateServerProtocol
    ) -> Reply | Deferred[Reply]:
        current = self.index.get(command.name)
        tag = command.tag
        refusal = authority_rules.check(self.authority, session.authcid, command, current)
        if refusal is not None:
            self.refusals["authority"] += 1
            location = getattr(command, "location", None)
            audit.warn(
                "{user} refused {command} {mailbox} at {location}: {reason}",
                user=session.authcid,
                command=type(command).__name__.upper(),
                mailbox=text(command.name),
                location=text(location),
                old_location=text(current.location) if current else "-",
                reason=text(refusal.text),
            )
            return [Done(tag, Status.NO, refusal.text)]
        decision = decide(
            command,
            current,
            self.index.tombstone(command.name),
            now=self.clock.seconds(),
            tombstone_window=self.tombstone_window,
        )
        match decision:
            case Refuse(text=reason):
                self.refusals["rules"] += 1
                self.log.info(
                    "refused {command} {mailbox} from {user} at {peer}: {reason}",
                    command=type(command).__name__.upper(),
                    mailbox=text(command.name),
                    user=session.user,
                    peer=session.peer,
                    reason=text(reason),
                )
                return [Done(tag, Status.NO, reason)]
            case Unchanged():
                return self._answer(self.committer.barrier(), tag)
            case Apply(change=change, old=old, new=new):
                self.index.apply(change)
                context = WriteContext(
                    session.user or "?", type(command).__name__.upper(), old, new
                )
                return self._answer(self.committer.submit(change, context), tag)
        raise AssertionError(f"unknown decision {decision!r}")

    @staticmethod
    def _answer(durable: Deferred[None], tag: bytes) -> Deferred[Reply]:
        def ok(_: object) -> Reply:
            return [Done(tag, Status.OK, texts.DONE)]

        def failed(_: Failure) -> Reply:
            return [Done(tag, Status.NO, texts.STORAGE_FAILURE)]

        return durable.addCallbacks(ok, failed)

    def _committed(self, batch: list[tuple[Change, WriteContext | None]]) -> None:
        changes: list[StreamChange] = []
        for change, context in batch:
            if context is None or isinstance(change, ExpireTombstones):
                continue
            old, new = context.old, context.new
            audit.info(
                "{user} {command} {mailbox}: {old_location} -> {location} ({state})",
                user=context.user,
                command=context.command,
                mailbox=text(change_name(change)),
                old_location=text(old.location) if old else "-",
                location=text(new.location) if new else "-",
                state=new.state.value if new else "deleted",
            )
            changes.append(StreamChange(change_name(change), old.server if old else None, new))
        self.hub.publish(changes)

    def _reload(self, failure: Failure) -> Deferred[None]:
        """After a failed commit the index may hold unacknowledged changes: reload it."""
        self.log.critical(
            "storage failure; reloading the mailbox list from disk: {reason}",
            reason=str(failure.value),
        )

        def replace(index: object) -> None:
            assert isinstance(index, MailboxIndex)
            self.index = index
            self.log.info("reloaded {count} entries after storage failure", count=len(index))

        d = self._run_blocking(lambda: load_index(self._store))
        d.addCallback(replace)
        return d  # type: ignore[return-value]  # fires with None after replace()

    # -- housekeeping --------------------------------------------------------------------

    def expire_tombstones(self) -> Deferred[None] | None:
        before = self.clock.seconds() - self.tombstone_window
        change = ExpireTombstones(before)
        self.index.apply(change)
        return self.committer.submit(change, None)

"""Re-announce local mailboxes the master lacks, as ``ctl_mboxlist -m`` would (design.md).

Only mailboxes the slave is sure are local reach here: an entry at its own location AND a
``cyrus.header`` on one of its partitions (an own-server entry alone may be a stale echo of
a mailbox deleted since; re-announcing it would resurrect it). Each one gets RESERVE, then
ACTIVATE, at its own location, on a connection of its own (the uplink is streaming and may
only NOOP). A conflict, the master placing the name elsewhere, is reported and never forced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.config.settings import SlaveSettings
from mupdate.logs import text
from mupdate.model import MailboxEntry
from mupdate.net.client import CommandFailed, MupdateClientProtocol
from mupdate.net.login import secure_then_login
from mupdate.net.server_login import is_loopback
from mupdate.protocol.commands import Activate, Find, Reserve
from mupdate.protocol.responses import MailboxLine, ReserveLine


@dataclass
class HealCounters:
    healed: int = 0
    conflicts: int = 0
    failures: int = 0


class Healer:
    log = Logger()

    def __init__(
        self,
        settings: SlaveSettings,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        on_disk: Callable[[bytes], bool],
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.clock = clock
        self.on_disk = on_disk
        self.counters = HealCounters()
        self._running: Deferred[None] | None = None

    def heal(self, entries: Sequence[MailboxEntry]) -> Deferred[None] | None:
        sure = [e for e in entries if self.on_disk(e.name)]
        unsure = len(entries) - len(sure)
        if unsure:
            self.log.warn(
                "not re-announcing {count} own-server entries without a cyrus.header on our partitions",
                count=unsure,
            )
        if not sure or self._running is not None:
            return None
        d = Deferred.fromCoroutine(self._heal(sure))
        d.addErrback(self._failed)
        self._running = d

        def done(result: object) -> object:
            self._running = None
            return result

        d.addBoth(done)
        return d

    async def _heal(self, entries: Sequence[MailboxEntry]) -> None:
        protocol = MupdateClientProtocol(self.clock)
        await connectProtocol(self.endpoint, protocol)
        try:
            assert protocol.transport is not None
            await secure_then_login(  # the uplink's TLS and plaintext policy
                protocol,
                self.settings.client_tls,
                self.settings.master_address[0],
                is_loopback(protocol.transport.getPeer()),
                self.settings.authname,
                self.settings.password,
                self.settings.username,
            )
            for entry in entries:
                await self._announce(protocol, entry)
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    async def _announce(self, protocol: MupdateClientProtocol, entry: MailboxEntry) -> None:
        try:
            await protocol.command(Reserve(b"", entry.name, entry.location))
            if entry.active:
                await protocol.command(Activate(b"", entry.name, entry.location, entry.acl))
        except CommandFailed as exc:
            found = await protocol.command(Find(b"", entry.name))
            where = b"?"
            for line in found.data:
                if isinstance(line, MailboxLine | ReserveLine):
                    where = line.location
            self.counters.conflicts += 1
            self.log.error(
                "cannot re-announce local mailbox {mailbox} at {location}: master says {reason}, has it at {old_location}",
                mailbox=text(entry.name),
                location=text(entry.location),
                reason=text(exc.text),
                old_location=text(where),
            )
            return
        self.counters.healed += 1
        self.log.warn(
            "re-announced local mailbox {mailbox} at {location} to the master",
            mailbox=text(entry.name),
            location=text(entry.location),
        )

    def _failed(self, failure: Failure) -> None:
        self.counters.failures += 1
        self.log.error(
            "healing the master failed: {reason}; retried at the next resync",
            reason=failure.getErrorMessage(),
        )

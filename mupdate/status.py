"""What ``/status`` and ``/health`` say about a running master or slave (issue 8, item 3).

Small views over the live objects of one process: they read, change nothing, and keep no
state of their own; time comes in as ``now``. The HTTP side is ``mupdate.net.status_http``;
the metrics (``mupdate.metrics``) use the same connection and sync-state rules, so the
two never disagree.

A slave's sync state is one of:

* ``synced``: streaming from its master (the copy is current up to the last NOOP answered);
* ``syncing``: a dump is being received and reconciled;
* ``held``: the mass-delete brake held the last resync; the last-known-good copy is served;
* ``disconnected``: none of these (the master is unreachable or refused the login).

Its health is good once it has a copy to serve (from an earlier run or a first sync), as
readers are answered from then on; a slave with an empty copy and no sync yet makes readers
wait, so it reports 503 with the reason.

A master is unhealthy while its store does not take writes: when the last commit failed
(every write is answered NO until one succeeds again: the next write, or the tombstone
expiry, at least hourly), or when one commit has been running for ``STUCK_COMMIT`` seconds
(a disk that stopped answering, or another process holding the database's write lock), as
writers then wait for their OK. Reads (FIND, LIST, streams) are served from memory either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from mupdate.model import EntryState
from mupdate.protocol.server import ServerState

if TYPE_CHECKING:
    from mupdate.db.index import MailboxIndex
    from mupdate.master.service import MasterHandler
    from mupdate.net.server import MupdateServerFactory
    from mupdate.slave.heal import Healer
    from mupdate.slave.replica import Replica
    from mupdate.slave.service import SlaveHandler
    from mupdate.slave.uplink import Uplink

SYNC_STATES: Final = ("syncing", "synced", "held", "disconnected")
#: Seconds one store commit may run before a master reports itself unhealthy (a batch of
#: writes commits in milliseconds; a very large import through the control socket may be
#: reported for as long as it runs, and writers wait for it meanwhile).
STUCK_COMMIT: Final = 5.0

#: Connection states as reported: the engine's states folded into what an operator sees.
CONNECTION_STATES: Final = ("not_authenticated", "authenticated", "streaming", "closing")
_STATE_LABEL: Final = {
    ServerState.NOT_AUTHENTICATED: "not_authenticated",
    ServerState.AUTHENTICATING: "not_authenticated",
    ServerState.TLS_NEGOTIATING: "not_authenticated",
    ServerState.AUTHENTICATED: "authenticated",
    ServerState.STREAMING: "streaming",
    ServerState.CLOSED: "closing",
}


def sync_state(replica: Replica, uplink: Uplink) -> str:
    if uplink.connected:
        return "synced"
    if replica.resyncing:
        return "syncing"
    if replica.held is not None:
        return "held"
    return "disconnected"


def connection_counts(factory: MupdateServerFactory) -> dict[str, int]:
    """Open connections by state (every state present, zero or not)."""
    counts = dict.fromkeys(CONNECTION_STATES, 0)
    for session in factory.sessions:
        counts[_STATE_LABEL[session.engine.state]] += 1
    return counts


def entry_counts(index: MailboxIndex) -> dict[str, int]:
    by_state = index.count_by_state()
    return {
        "total": len(index),
        "active": by_state.get(EntryState.ACTIVE, 0),
        "reserved": by_state.get(EntryState.RESERVED, 0),
    }


def store_size(path: Path) -> int:
    """Bytes on disk of an SQLite database with its WAL and shared-memory files."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            total += part.stat().st_size
        except OSError:
            continue  # no WAL yet, or a path the store has not created
    return total


def timestamp(seconds: float | None) -> str | None:
    """ISO 8601 in UTC, to the second; None stays None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ProcessFacts:
    """What every process reports: who it is, since when, where its store is."""

    role: str  # "master" or "slave"
    servername: str
    version: str
    store_path: Path
    started: float  # Unix time
    now: Callable[[], float]

    def status(self) -> dict[str, object]:
        return {
            "role": self.role,
            "version": self.version,
            "servername": self.servername,
            "started": timestamp(self.started),
            "uptime_seconds": round(max(0.0, self.now() - self.started), 3),
            "store": {"path": str(self.store_path), "size_bytes": store_size(self.store_path)},
        }


class MasterStatus:
    def __init__(
        self, process: ProcessFacts, factory: MupdateServerFactory, handler: MasterHandler
    ) -> None:
        self.process = process
        self._factory = factory
        self._handler = handler

    def status(self) -> dict[str, object]:
        index = self._handler.index
        return {
            **self.process.status(),
            "entries": entry_counts(index),
            "tombstones": len(index.tombstones()),
            "connections": connection_counts(self._factory),
            "streams": len(self._handler.hub),
        }

    def health(self) -> tuple[bool, str]:
        committer = self._handler.committer
        if committer.last_failure is not None:
            return False, f"the last store commit failed: {committer.last_failure}"
        started = committer.batch_started
        if started is not None and committer.now() - started >= STUCK_COMMIT:
            running = committer.now() - started
            return False, f"a store commit has been running for {running:.0f} s"
        return True, "ok"


class SlaveStatus:
    def __init__(
        self,
        process: ProcessFacts,
        factory: MupdateServerFactory,
        handler: SlaveHandler,
        uplink: Uplink,
        healer: Healer | None,
    ) -> None:
        self.process = process
        self._factory = factory
        self._handler = handler
        self._uplink = uplink
        self._healer = healer

    @property
    def master(self) -> str:
        return self._uplink.settings.mupdate_server

    def status(self) -> dict[str, object]:
        replica = self._handler.replica
        counters = replica.counters
        last = counters.last_sync
        heal = None
        if self._healer is not None:
            h = self._healer.counters
            heal = {"healed": h.healed, "conflicts": h.conflicts, "failures": h.failures}
        return {
            **self.process.status(),
            "master": self.master,
            "mode": self._uplink.settings.murder_mode,
            "entries": entry_counts(replica.index),
            "connections": connection_counts(self._factory),
            "streams": len(replica.hub),
            "sync": {
                "state": sync_state(replica, self._uplink),
                "last_sync": timestamp(last),
                "lag_seconds": None if last is None else round(self.process.now() - last, 3),
                "resyncs": counters.resyncs,
                "failures_in_a_row": self._uplink.failures,
            },
            "brake": {
                "held": replica.held,
                "holds": counters.brake_holds,
                "releases": counters.brake_releases,
            },
            "guard_refusals": counters.guard_refusals,
            "heal": heal,
        }

    def health(self) -> tuple[bool, str]:
        if self._handler.ready:
            return True, "ok"
        state = sync_state(self._handler.replica, self._uplink)
        return False, f"no copy to serve yet: first sync with {self.master} pending ({state})"

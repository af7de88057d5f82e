"""Prometheus metrics of one master or slave process (issue 8; style.md §5).

How it works: each process has its own ``CollectorRegistry`` (never the library's global
one: tests build several servers in one process). Most figures already live in the glue's
own counters (``ServerCounters``, the index, the stream hub, ``ReplicaCounters``, the
uplink, ``HealCounters``); the collectors below read them when Prometheus scrapes, so
nothing is counted twice and nothing is kept for connections that have gone. Only what has
no counter of its own is observed as it happens, through ``Metrics``: each command's
outcome and latency, protocol errors, commit batch size and time, resync duration, TLS
handshake and SASL failures. ``watch_master`` and ``watch_slave`` wire one process.

Names follow Prometheus conventions: ``mupdate_..._total`` for counters, ``_seconds`` and
``_bytes`` for units. Labels carry only bounded values (command names, outcomes, our
mechanisms, states, stream peers up to ``mupdate_connections_max``). Imports nothing from
the sans-I/O core but its enums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mupdate.model import EntryState
from mupdate.status import SYNC_STATES, connection_counts, sync_state

if TYPE_CHECKING:
    from mupdate.db.index import MailboxIndex
    from mupdate.master.service import MasterHandler
    from mupdate.master.streams import StreamHub
    from mupdate.net.server import MupdateServerFactory
    from mupdate.slave.heal import Healer
    from mupdate.slave.replica import Replica
    from mupdate.slave.uplink import Uplink

_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_RESYNC_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

# A ``_created`` sample per counter and histogram: a start time nothing here reads, doubling
# the scrape. The switch is the library's own, process-wide; no other registry lives here.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in the library


class Metrics:
    """One process's registry, and the events the glue reports into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._commands = Counter(
            "mupdate_commands", "Commands answered, by name and outcome (ok, no, bad)",
            ["command", "outcome"], registry=r,
        )  # fmt: skip
        self._command_seconds = Histogram(
            "mupdate_command_seconds", "Time from a command's arrival to its tagged answer",
            ["command"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._protocol_errors = Counter(
            "mupdate_protocol_errors",
            "Input refused by the protocol engine before any handler saw it, by answer",
            ["outcome"], registry=r,
        )  # fmt: skip
        self._batch_size = Histogram(
            "mupdate_store_commit_batch_size", "Changes per store commit (group commit)",
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        # No separate fsync histogram: the store interface (``apply``) reports no COMMIT time
        # of its own. SQLite (WAL, synchronous=FULL) syncs inside COMMIT and the statements
        # before it only change pages in memory, so this is mostly the fsync; the help text
        # says what it covers.
        self._commit_seconds = Histogram(
            "mupdate_store_commit_seconds",
            "Time of one store transaction on the store's worker thread: the batch's writes, "
            "COMMIT and its fsync (SQLite WAL, synchronous=FULL; the fsync happens at COMMIT "
            "and is not timed apart), or one cyr_dbtool transaction for a Cyrus store",
            buckets=_COMMIT_BUCKETS, registry=r,
        )  # fmt: skip
        self._tls_failures = Counter(
            "mupdate_tls_handshake_failures", "Connections lost before their TLS handshake ended",
            registry=r,
        )  # fmt: skip
        self._sasl_failures = Counter(
            "mupdate_sasl_failures", "Failed AUTHENTICATEs, by SASL mechanism",
            ["mechanism"], registry=r,
        )  # fmt: skip
        self._resync_seconds: Histogram | None = None
        self._command_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    # -- events -----------------------------------------------------------------------

    def command(self, command: str, outcome: str, seconds: float) -> None:
        # ``labels()`` validates and looks its child up on every call; a few names and
        # outcomes exist, so their children are kept (a per-command cost otherwise).
        children = self._command_children.get((command, outcome))
        if children is None:
            children = self._command_children[command, outcome] = (
                self._commands.labels(command, outcome),
                self._command_seconds.labels(command),
            )
        children[0].inc()
        children[1].observe(max(seconds, 0.0))

    def protocol_error(self, outcome: str) -> None:
        self._protocol_errors.labels(outcome).inc()

    def commit(self, size: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._commit_seconds.observe(seconds)

    def tls_handshake_failed(self) -> None:
        self._tls_failures.inc()

    def sasl_failed(self, mechanism: str) -> None:
        self._sasl_failures.labels(mechanism).inc()

    def track_resyncs(self) -> None:
        """A slave's: resync durations (a master has none to show)."""
        if self._resync_seconds is None:
            self._resync_seconds = Histogram(
                "mupdate_resync_seconds", "Time from UPDATE sent to the resync applied",
                buckets=_RESYNC_BUCKETS, registry=self.registry,
            )  # fmt: skip

    def resync(self, seconds: float) -> None:
        if self._resync_seconds is None:
            raise RuntimeError("resync durations are a slave's: track_resyncs first")
        self._resync_seconds.observe(max(seconds, 0.0))

    # -- scraping ---------------------------------------------------------------------

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything registered."""
        return generate_latest(self.registry)


# -- collect-time collectors -------------------------------------------------------------


class _Collector(Collector):
    def describe(self) -> Iterable[Metric]:
        return ()  # families depend on live state; collect() names them


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ProcessCollector(_Collector):
    """Which process this is, since when, and how large its store is on disk."""

    def __init__(
        self,
        role: str,
        version: str,
        servername: str,
        started: float,
        store_size: Callable[[], int],
    ) -> None:
        self._labels = {"role": role, "version": version, "servername": servername}
        self._started = started
        self._store_size = store_size

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "mupdate_info", "Always 1; the labels say what runs", labels=list(self._labels)
        )
        info.add_metric(list(self._labels.values()), 1)
        yield info
        yield _gauge("mupdate_start_time_seconds", "When the process started (Unix time)", self._started)  # fmt: skip
        yield _gauge("mupdate_store_size_bytes", "Size of the database files on disk", self._store_size())  # fmt: skip


class ServerCollector(_Collector):
    """Connections by state, and the accept/refuse counters of the listener."""

    def __init__(self, factory: MupdateServerFactory) -> None:
        self._factory = factory

    def collect(self) -> Iterator[Metric]:
        counts = connection_counts(self._factory)
        by_state = GaugeMetricFamily(
            "mupdate_connections", "Open MUPDATE connections by state", labels=["state"]
        )
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        counters = self._factory.counters
        yield _counter("mupdate_connections_accepted", "Connections accepted", counters.connections)
        yield _counter(
            "mupdate_connections_refused",
            "Connections refused at mupdate_connections_max",
            counters.refused_connections,
        )


class StreamCollector(_Collector):
    """UPDATE streams: how many, what each has queued unread (its lag), changes sent."""

    def __init__(self, hub: Callable[[], StreamHub]) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self._hub()
        streams = hub.streams()
        yield _gauge("mupdate_streams", "UPDATE streams being served", len(streams))
        lag = GaugeMetricFamily(
            "mupdate_stream_queued_bytes",
            "Bytes queued for a stream that its reader has not taken yet",
            labels=["peer"],
        )
        for stream in streams:
            output = getattr(stream.sink, "output", None)
            lag.add_metric([_peer(stream.sink)], getattr(output, "queued_bytes", 0))
        yield lag
        yield _counter(
            "mupdate_stream_changes", "Committed changes published to streams", hub.published
        )


def _peer(sink: object) -> str:
    return str(getattr(sink, "peer", "?"))  # HOST:PORT, as in the logs' peer field


class IndexCollector(_Collector):
    """Entries by state (one pass over the index at scrape time), tombstones on a master."""

    def __init__(self, index: Callable[[], MailboxIndex], tombstones: bool) -> None:
        self._index = index
        self._tombstones = tombstones

    def collect(self) -> Iterator[Metric]:
        index = self._index()
        counts = index.count_by_state()
        entries = GaugeMetricFamily("mupdate_entries", "Mailbox entries by state", labels=["state"])
        for state in EntryState:
            entries.add_metric([state.value.lower()], counts.get(state, 0))
        yield entries
        if self._tombstones:
            yield _gauge(
                "mupdate_tombstones", "Deleted names remembered (mupdate_tombstone_window)",
                len(index.tombstones()),
            )  # fmt: skip


class MasterCollector(_Collector):
    """Writes the master refused: by an authority binding, or by the rules."""

    def __init__(self, handler: MasterHandler) -> None:
        self._handler = handler

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "mupdate_write_refusals",
            "Writes answered NO, by what refused them (authority, rules)",
            labels=["reason"],
        )
        for reason in ("authority", "rules"):
            refused.add_metric([reason], self._handler.refusals[reason])
        yield refused


class SlaveCollector(_Collector):
    """The slave's copy and its link: sync state, resyncs, guard, brake, uplink, healing."""

    def __init__(
        self, replica: Replica, uplink: Uplink, healer: Healer | None, now: Callable[[], float]
    ) -> None:
        self._replica = replica
        self._uplink = uplink
        self._healer = healer
        self._now = now

    def collect(self) -> Iterator[Metric]:
        replica, uplink, c = self._replica, self._uplink, self._replica.counters
        current = sync_state(replica, uplink)
        state = GaugeMetricFamily(
            "mupdate_sync_state", "1 for the slave's current sync state", labels=["state"]
        )
        for name in SYNC_STATES:
            state.add_metric([name], 1 if name == current else 0)
        yield state
        if c.last_sync is not None:
            yield _gauge("mupdate_last_sync_timestamp_seconds", "When the copy was last known current (Unix time)", c.last_sync)  # fmt: skip
            yield _gauge("mupdate_sync_lag_seconds", "Seconds since the copy was last known current", max(0.0, self._now() - c.last_sync))  # fmt: skip
        yield _counter("mupdate_resyncs", "Resyncs applied", c.resyncs)
        yield _counter("mupdate_resync_changes", "Changes applied by resyncs", c.resync_changes)
        yield _counter("mupdate_slave_stream_changes", "Streamed changes applied", c.stream_changes)
        yield _counter("mupdate_guard_refusals", "Changes the local-authority guard refused", c.guard_refusals)  # fmt: skip
        yield _counter("mupdate_brake_holds", "Resyncs held by the mass-delete brake", c.brake_holds)  # fmt: skip
        yield _counter("mupdate_brake_releases", "Held resyncs released by the operator", c.brake_releases)  # fmt: skip
        yield _gauge("mupdate_brake_held", "1 while the brake holds the last resync", 1 if replica.held else 0)  # fmt: skip
        yield _gauge("mupdate_uplink_connected", "1 while streaming from the master", 1 if uplink.connected else 0)  # fmt: skip
        yield _counter("mupdate_uplink_connections", "Sessions with the master that synced", uplink.connections)  # fmt: skip
        yield _gauge("mupdate_uplink_failures", "Sessions with the master failed in a row", uplink.failures)  # fmt: skip
        if self._healer is not None:
            heal = CounterMetricFamily(
                "mupdate_heal_actions",
                "Local mailboxes re-announced to the master, by result",
                labels=["result"],
            )
            h = self._healer.counters
            for result, value in (("healed", h.healed), ("conflict", h.conflicts), ("failed", h.failures)):  # fmt: skip
                heal.add_metric([result], value)
            yield heal


# -- wiring ------------------------------------------------------------------------------


def watch_master(metrics: Metrics, factory: MupdateServerFactory, handler: MasterHandler) -> None:
    """Register the master's collectors and observe its commits."""
    metrics.add(ServerCollector(factory))
    metrics.add(StreamCollector(lambda: handler.hub))
    metrics.add(IndexCollector(lambda: handler.index, tombstones=True))
    metrics.add(MasterCollector(handler))
    handler.committer.observe = metrics.commit


def watch_slave(
    metrics: Metrics,
    factory: MupdateServerFactory,
    replica: Replica,
    uplink: Uplink,
    healer: Healer | None,
    now: Callable[[], float],
) -> None:
    """Register the slave's collectors and observe its commits and resyncs."""
    metrics.track_resyncs()
    metrics.add(ServerCollector(factory))
    metrics.add(StreamCollector(lambda: replica.hub))
    metrics.add(IndexCollector(lambda: replica.index, tombstones=False))
    metrics.add(SlaveCollector(replica, uplink, healer, now))
    replica.committer.observe = metrics.commit
    replica.observe_resync = metrics.resync


__all__ = [
    "Metrics",
    "watch_master",
    "watch_slave",
]

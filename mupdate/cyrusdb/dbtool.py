"""One long-lived ``cyr_dbtool DB BACKEND batch`` child, driven from the reactor.

Cyrus's database code does the writing (twoskip, its locks, its fsyncs, its recovery); we
only speak the batch wire (``batch.py``). One transaction at a time: ``BEGIN``, a ``GET``
of every key the change touches (read under the transaction's write lock, so the backend's
imapd cannot change them between our look and our write), then the writes chosen by the
caller's ``decide`` and ``COMMIT``. The tool prints nothing for a missing key, a write or a
commit, so each phase ends with a probe: ``SET`` and ``GET`` of a key of ours that is
deleted (inside the transaction) or aborted (after the commit) and so never reaches the
file. Seeing the probe's record means every command before it was done.

Any failure - the tool exiting (``FAILED: ...`` on its stderr ends it), its output making no
sense, no answer within ``timeout`` (the child is then killed) - fails the transaction with
``DbToolError``; twoskip discards the uncommitted transaction when the file is next opened,
and the next transaction starts a new child.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mupdate.cyrusdb import batch
from mupdate.db.store import StoreError

PROBE_KEY: Final = b"=mupdate-slave-probe"
"""Set and read back inside a transaction or an aborted one; never committed."""

STDERR_KEPT: Final = 4096

T = TypeVar("T")


class DbToolError(StoreError):
    """cyr_dbtool failed, died, or did not answer; nothing of the transaction was kept."""


class ChildEnded(DbToolError):
    """The child ended while an exchange waited for its answer."""


@dataclass(frozen=True)
class DbToolCommand:
    """How to start the tool: ``argv`` (absolute paths), and the user to run it as."""

    argv: tuple[str, ...]
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def batch(
        cls,
        dbtool: str,
        imapd_conf: str,
        database: str,
        backend: str,
        uid: int | None = None,
        gid: int | None = None,
    ) -> DbToolCommand:
        # -n: create the file if missing, as a fresh frontend's slave does on first sync.
        argv = (dbtool, "-C", imapd_conf, "-n", database, backend, "batch")
        return cls(argv, uid, gid)


Records = list[tuple[bytes, bytes]]
Decide = Callable[[dict[bytes, bytes]], bytes]
"""Given the current records of the keys looked at, the write commands to send."""


class _Child(ProcessProtocol):
    log = Logger()

    def __init__(self, tool: DbTool) -> None:
        self.tool = tool
        self.parser = batch.OutputParser()
        self.stderr = bytearray()
        self.ended: Deferred[None] = Deferred()
        self.alive = True

    def outReceived(self, data: bytes) -> None:
        try:
            records = self.parser.feed(data)
        except batch.BatchOutputError as exc:
            self.tool._child_failed(self, f"unreadable output from cyr_dbtool: {exc}")
            return
        if records:
            self.tool._records(self, records)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        del self.stderr[:-STDERR_KEPT]

    def processEnded(self, reason: Failure) -> None:
        self.alive = False
        status = "exited normally" if isinstance(reason.value, ProcessDone) else str(reason.value)
        message = self.stderr.decode("utf-8", "replace").strip()
        self.tool._ended(self, f"cyr_dbtool {status}" + (f": {message}" if message else ""))
        self.ended.callback(None)


class DbTool:
    """Runs transactions on one child at a time; starts a new child when the last one died."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorProcess,
        clock: IReactorTime,
        command: DbToolCommand,
        timeout: float,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._command = command
        self._timeout = timeout
        self._child: _Child | None = None
        self._transport: Any = None
        self._waiting: Deferred[Records] | None = None
        self._collected: Records = []
        self._queue: list[tuple[Callable[[], Coroutine[Any, Any, Any]], Deferred[Any]]] = []
        self._busy = False
        self.spawned = 0  # children started so far (status, tests)
        self.stopping = False
        self._discarded: set[_Child] = set()  # killed and forgotten, not yet reaped

    @property
    def command(self) -> DbToolCommand:
        return self._command

    @property
    def pid(self) -> int | None:
        return None if self._transport is None else self._transport.pid

    # -- transactions ------------------------------------------------------------------

    def transaction(self, keys: Sequence[bytes], decide: Decide) -> Deferred[None]:
        """Look at ``keys`` under a write lock, send what ``decide`` returns, commit.

        Fires when the commit is on disk (or, when ``decide`` returns nothing, when the
        transaction was aborted); errbacks with ``DbToolError``; ``decide``'s own exception
        aborts the transaction and is passed on.
        """
        return self._enqueue(lambda: self._transaction(keys, decide))

    def read_all(self, prefix: bytes) -> Deferred[Records]:
        """Every record under ``prefix``, in key order, read by the same child."""
        return self._enqueue(lambda: self._read(prefix))

    def _enqueue(self, job: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        done: Deferred[T] = Deferred()
        self._queue.append((job, done))
        if not self._busy:
            self._next()
        return done

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        job, done = self._queue.pop(0)

        def finished(result: object) -> None:
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(result)
            self._next()

        Deferred.fromCoroutine(self._started(job)).addBoth(finished)

    async def _started(self, job: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        if self.stopping:
            raise DbToolError("the Cyrus store is closing")
        self._ensure_child()
        return await job()

    async def _transaction(self, keys: Sequence[bytes], decide: Decide) -> None:
        looks = b"".join(batch.get(key) for key in keys)
        found = await self._first_exchange(batch.begin() + looks + _probe())
        try:
            writes = decide(dict(found))
        except BaseException:
            await self._exchange(batch.abort() + _probe_aborted())
            raise
        if writes:
            await self._exchange(
                writes + batch.delete(PROBE_KEY) + batch.commit() + _probe_aborted()
            )
        else:
            await self._exchange(batch.abort() + _probe_aborted())

    async def _read(self, prefix: bytes) -> Records:
        return await self._first_exchange(batch.show(prefix) + _probe_aborted())

    async def _first_exchange(self, commands: bytes) -> Records:
        """A job's first exchange, which writes nothing: once more on a new child when the
        child ended under it. A child that died while idle (killed, say) may be noticed
        only after the next job wrote to it; that job must not fail for it."""
        try:
            return await self._exchange(commands)
        except ChildEnded:
            if self.stopping:
                raise
            self._ensure_child()
            return await self._exchange(commands)

    # -- the exchange ------------------------------------------------------------------

    def _exchange(self, commands: bytes) -> Deferred[Records]:
        """Send ``commands`` (ending in a probe); fire with the records before the probe's."""
        assert self._waiting is None, "one exchange at a time"
        child = self._child
        if child is None or not child.alive:
            raise DbToolError("cyr_dbtool is not running")
        self._collected = []
        waiting: Deferred[Records] = Deferred()
        self._waiting = waiting
        self._transport.write(commands)

        def timed_out(result: Any, timeout: float) -> Any:
            self.log.error(
                "cyr_dbtool did not answer within {duration_ms} ms; killing it",
                duration_ms=int(timeout * 1000),
            )
            if self._waiting is waiting:
                self._waiting = None
            self._discard()
            raise DbToolError(f"cyr_dbtool did not answer within {timeout:g} s")

        waiting.addTimeout(self._timeout, self._clock, onTimeoutCancel=timed_out)
        return waiting

    def _records(self, child: _Child, records: Records) -> None:
        if child is not self._child:
            return
        for key, value in records:
            if key == PROBE_KEY:
                waiting, self._waiting = self._waiting, None
                collected, self._collected = self._collected, []
                if waiting is None:
                    self._child_failed(child, "cyr_dbtool answered a probe nobody sent")
                    return
                waiting.callback(collected)
            else:
                self._collected.append((key, value))

    def _child_failed(self, child: _Child, reason: str) -> None:
        if child is not self._child:
            return  # one we already gave up on
        self.log.error("{reason}; stopping the child", reason=reason)
        self._fail(DbToolError(reason))
        self._discard()

    def _ended(self, child: _Child, reason: str) -> None:
        if child is not self._child:
            return  # given up on earlier (killed after a timeout or garbage): not news
        self._child = None
        self._transport = None
        if self._waiting is not None:
            self.log.error("{reason}", reason=reason)
            self._fail(ChildEnded(reason))
        elif not self.stopping:
            self.log.warn("{reason}; a new one starts with the next transaction", reason=reason)

    def _fail(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.errback(exc)

    # -- the child ---------------------------------------------------------------------

    def _ensure_child(self) -> None:
        if self._child is not None and self._child.alive:
            return
        child = _Child(self)
        argv = self._command.argv
        try:
            self._transport = self._reactor.spawnProcess(
                child,
                argv[0],
                list(argv),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                path="/",
                uid=self._command.uid,
                gid=self._command.gid,
            )
        except OSError as exc:
            raise DbToolError(f"cannot start {argv[0]}: {exc}") from None
        self._child = child
        self.spawned += 1
        self.log.info(
            "started cyr_dbtool (pid {pid}) on {path}",
            pid=self._transport.pid,
            path=argv[-3] if len(argv) >= 3 else argv[0],  # the database, in batch() argv
        )

    def _discard(self) -> None:
        """Kill the child and forget it, so the next job starts a new one at once.

        A child given up on may still be alive for a moment (the signal is asynchronous);
        a job that reused it would have its exchange failed by that child's end.
        """
        child = self._child
        if child is not None and child.alive:
            self._discarded.add(child)

            def reaped(_: object) -> None:
                self._discarded.discard(child)

            child.ended.addBoth(reaped)
        self._kill()
        self._child = None
        self._transport = None

    def _kill(self) -> None:
        if self._transport is not None and self._child is not None and self._child.alive:
            with suppress(ProcessExitedAlready, OSError):
                self._transport.signalProcess("KILL")

    def stop(self) -> Deferred[None]:
        """Close the child's input (it exits after its last command); fires when it is gone."""
        self.stopping = True
        gone = [c.ended for c in self._discarded if c.alive]  # killed already, ending
        child = self._child
        if child is not None and child.alive:
            self._transport.closeStdin()
            call = self._clock.callLater(self._timeout, self._kill)
            child.ended.addBoth(lambda r: call.cancel() if call.active() else None)
            gone.append(child.ended)
        return gatherResults(gone).addCallback(lambda _: None)


def _probe() -> bytes:
    return batch.set_(PROBE_KEY, b"1") + batch.get(PROBE_KEY)


def _probe_aborted() -> bytes:
    return batch.begin() + _probe() + batch.abort()

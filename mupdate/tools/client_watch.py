"""``mupdate-client watch``: an UPDATE stream shown as it arrives (protocol doc §5.8, §8).

``U01 UPDATE`` (with hosts: PARTIAL-UPDATE, §8.4) fires with the whole dump at ``OK
"streaming starts"``; the dump is printed (unless ``--changes-only``) and then every
MAILBOX, RESERVE or DELETE line of the stream, one per line, flushed at once. The watch ends
with exit 0 after ``--count`` changes, after ``--seconds`` (the reactor's clock), or on
SIGINT / SIGTERM (a shutdown trigger ends it and waits for the LOGOUT); it fails with exit 4
when the server ends the stream or a keepalive NOOP goes unanswered.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from mupdate.net.client import ConnectionClosed, MupdateClientProtocol
from mupdate.protocol.responses import DeleteLine, MailboxLine, ReserveLine
from mupdate.tools import client_output as fmt
from mupdate.tools.connect import EXIT_OK

DataLine = MailboxLine | ReserveLine | DeleteLine


class Watch:
    """One watch. ``interrupt`` is the shutdown trigger; ``cleaned`` must be fired by the
    caller once the session is logged out, so shutdown waits for it."""

    def __init__(self, reactor: Any, args: argparse.Namespace, timeout: float, out: TextIO) -> None:
        self._reactor = reactor
        self._args = args
        self._timeout = timeout
        self._out = out
        self._finished: Deferred[None] = Deferred()
        self._changes = 0
        self._widths = fmt.column_widths([])
        self._timer: IDelayedCall | None = None
        self._keepalive: LoopingCall | None = None
        self.interrupted = False
        self.cleaned: Deferred[None] = Deferred()

    # -- the end --------------------------------------------------------------------------

    def interrupt(self) -> Deferred[None]:
        self.interrupted = True
        self._stop()
        return self.cleaned

    def _stop(self) -> None:
        if not self._finished.called:
            self._finished.callback(None)

    def _fail(self, reason: Failure | BaseException) -> None:
        if not self._finished.called:
            self._finished.errback(reason)

    # -- the stream -----------------------------------------------------------------------

    async def run(self, client: MupdateClientProtocol) -> int:
        hosts = [os.fsencode(host) for host in self._args.hosts]
        dump = await client.update(self._changed, hosts)
        self._show_dump(dump)
        if self._args.count == 0:
            self._stop()
        if self._args.seconds:
            self._timer = self._reactor.callLater(self._args.seconds, self._stop)
        if self._args.keepalive > 0:
            self._keepalive = LoopingCall(
                lambda: client.noop().addTimeout(self._timeout, self._reactor)
            )
            self._keepalive.clock = self._reactor
            self._keepalive.start(self._args.keepalive, now=False).addErrback(self._fail)
        client.closed.addCallback(
            lambda _: self._fail(ConnectionClosed("the server ended the stream"))
        )
        try:
            await self._finished
        finally:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            if self._keepalive is not None and self._keepalive.running:
                self._keepalive.stop()
        return EXIT_OK

    def _show_dump(self, dump: list[MailboxLine | ReserveLine]) -> None:
        changes_only = self._args.changes_only
        if self._args.json:
            if not changes_only:
                for entry in dump:
                    self._write(fmt.json_line(fmt.watch_record(entry, change=False)))
        else:
            # widths from the dump even when it is not shown, so the changes line up with
            # the header for names like those already there; STATE fits every state word
            rows = [fmt.entry_row(entry) for entry in dump]
            self._widths = fmt.column_widths(rows)
            self._widths[1] = max(self._widths[1], len("MAILBOX"))
            self._write(fmt.format_row(fmt.HEADER, self._widths))
            for row in [] if changes_only else rows:
                self._write(fmt.format_row(row, self._widths))
        self._out.flush()

    def _changed(self, line: DataLine) -> None:
        if self._finished.called:
            return  # already past --count or interrupted: the rest is not shown
        self._changes += 1
        try:
            if self._args.json:
                self._write(fmt.json_line(fmt.watch_record(line, change=True)))
            else:
                self._write(fmt.format_row(fmt.entry_row(line), self._widths))
            self._out.flush()
        except BrokenPipeError as exc:  # the reader went away: end quietly (client.run)
            self._fail(exc)
            return
        if self._args.count is not None and self._changes >= self._args.count:
            self._stop()

    def _write(self, line: str) -> None:
        print(line, file=self._out)

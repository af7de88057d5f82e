"""``mupdate-push``: make the MUPDATE master agree with one backend (``ctl_mboxlist -m``).

Reads the backend's own list (``--from-cyrus-db``, ``--from-dump``, ``--from-slave-db`` or
``--from-partitions``), asks the master ``LIST "<servername>!"``, FINDs the local names that
list lacks, and sends ACTIVATE / DELETE as ``mupdate.tools.pushplan`` decides (protocol doc
§10.3; the decisions and how they differ from Cyrus are documented there). It talks only to
the master: nothing local is ever changed or deleted.

Output: the plan on stdout, one line per step as ``ctl_mboxlist -m -w`` prints it
(``Remove from MUPDATE: NAME``, ``Force Activate: NAME``) plus ``Take: NAME from LOCATION``
and ``Conflict: NAME is at LOCATION``; then one summary line. ``--json``: one object per
line, the summary last (``{"summary": {...}}``). Refusals and progress go to stderr.

Exit codes: 0 done (or nothing to do); 2 bad arguments or the local list unreadable;
3 the master refused some command (NO/BAD; the rest was still sent); 4 connection failed
or lost; 5 login refused; 6 stopped by the mass-delete brake (nothing changed; ``--force``);
7 conflicts were left alone (everything else done). The highest-priority one wins in the
order 4/5, 2, 6, 3, 7. ``--dry-run`` exits with 6 or 7 where a real run would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

from mupdate.config import ConfigFileError, SettingsError, parse_imapd_conf
from mupdate.config.settings import last_values
from mupdate.model import EntryState, MailboxEntry
from mupdate.protocol.responses import MailboxLine, ReserveLine
from mupdate.tools.connect import (
    EXIT_CONNECTION,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    ToolError,
    ToolParser,
    add_connection_options,
    open_session,
    resolve_target,
)
from mupdate.tools.pushplan import (
    DEFAULT_BRAKE_MINIMUM,
    DEFAULT_MAX_DELETE_SHARE,
    Plan,
    PushOptions,
    confirm_deletions,
    make_plan,
    names_to_find,
    plan_lines,
    plan_records,
)
from mupdate.tools.sources import (
    DEFAULT_DBTOOL,
    LocalList,
    SourceError,
    read_cyrus_db,
    read_dump,
    read_slave_db,
    scan_partitions,
)

EXIT_BRAKE: Final = 6
EXIT_CONFLICTS: Final = 7

T = TypeVar("T")


@dataclass
class Outcome:
    activated: int = 0
    deleted: int = 0
    refused: list[str] = field(default_factory=list)
    skipped_deletes: list[bytes] = field(default_factory=list)


# -- arguments --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="mupdate-push", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_connection_options(parser)
    source = parser.add_argument_group("the backend's own list (exactly one)")
    one = source.add_mutually_exclusive_group(required=True)
    one.add_argument(
        "--from-cyrus-db",
        nargs="?",
        const="",
        metavar="DB",
        help="a Cyrus mailboxes.db, read with cyr_dbtool (default: <configdirectory>/mailboxes.db)",
    )
    one.add_argument("--from-dump", metavar="FILE", help="`ctl_mboxlist -d` JSON; - for stdin")
    one.add_argument("--from-slave-db", metavar="FILE", help="our slave's SQLite store")
    one.add_argument(
        "--from-partitions",
        nargs="*",
        metavar="NAME=PATH",
        help="scan partitions for cyrus.header (default: partition-* of the Cyrus config)",
    )
    source.add_argument(
        "--cyrus-conf", help="the backend's imapd.conf for cyr_dbtool -C (default: --config)"
    )
    source.add_argument("--dbtool", default=DEFAULT_DBTOOL, help="cyr_dbtool to run")
    source.add_argument(
        "--dbtool-user", default="cyrus", help="user to run cyr_dbtool as when root (cyrus)"
    )
    plan = parser.add_argument_group("the plan")
    plan.add_argument("--servername", help="this backend's servername (default: servername)")
    plan.add_argument("--dry-run", "-w", action="store_true", help="print the plan, change nothing")
    plan.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="keep running: push again SECONDS after each run ends, whatever its outcome "
        "(a master that lost its list is refilled without an operator)",
    )
    plan.add_argument(
        "--authoritative",
        "-a",
        action="store_true",
        help="the local list wins: conflicts are taken (re-activated here) as with --take",
    )
    plan.add_argument(
        "--take",
        action="append",
        default=[],
        metavar="NAME",
        help="re-activate this conflicting mailbox here (repeatable)",
    )
    plan.add_argument(
        "--max-delete-share",
        type=float,
        default=DEFAULT_MAX_DELETE_SHARE,
        help=f"brake: largest share of this server's entries to delete ({DEFAULT_MAX_DELETE_SHARE})",
    )
    plan.add_argument(
        "--brake-minimum",
        type=int,
        default=DEFAULT_BRAKE_MINIMUM,
        help=f"brake: never stop for this many deletions or fewer ({DEFAULT_BRAKE_MINIMUM})",
    )
    plan.add_argument("--force", action="store_true", help="release the mass-delete brake")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("--progress", action="store_true", help="progress on stderr, even if no tty")
    out.add_argument("--progress-every", type=int, default=1000, metavar="N")
    out.add_argument(
        "--window", type=int, default=64, help="commands in flight at once (default 64)"
    )
    return parser


def _config_values(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
        return {k: r.value for k, r in last_values(parse_imapd_conf(text, path)).items()}
    except (OSError, ConfigFileError, SettingsError, ValueError) as exc:
        raise ToolError(f"cannot use {path}: {exc}", EXIT_USAGE) from None


def push_options(args: argparse.Namespace, values: dict[str, str]) -> PushOptions:
    servername = args.servername or values.get("servername")
    if not servername:
        raise ToolError("no servername: give --servername or servername in --config", EXIT_USAGE)
    if args.window < 1 or args.progress_every < 1:
        raise ToolError("--window and --progress-every must be at least 1", EXIT_USAGE)
    try:
        return PushOptions(
            servername=os.fsencode(servername),
            authoritative=args.authoritative,
            take=frozenset(os.fsencode(n) for n in args.take),
            max_delete_share=args.max_delete_share,
            brake_minimum=args.brake_minimum,
            force=args.force,
        )
    except ValueError as exc:
        raise ToolError(str(exc), EXIT_USAGE) from None


def source_reader(
    args: argparse.Namespace, values: dict[str, str], servername: bytes, stdin: TextIO
) -> Callable[[], LocalList]:
    """A function reading the chosen source (called after the master's LIST, as Cyrus)."""
    conf_path = args.cyrus_conf or args.config
    cyrus = _config_values(args.cyrus_conf) if args.cyrus_conf else values
    if args.from_cyrus_db is not None:
        if not conf_path:
            raise ToolError("--from-cyrus-db needs the backend's imapd.conf", EXIT_USAGE)
        db = args.from_cyrus_db
        if not db:
            if "configdirectory" not in cyrus:
                raise ToolError(f"no configdirectory in {conf_path}; name the DB", EXIT_USAGE)
            db = str(Path(cyrus["configdirectory"]) / "mailboxes.db")
        if not Path(db).is_file():
            raise ToolError(f"no mailboxes.db at {db}", EXIT_USAGE)
        return lambda: read_cyrus_db(
            Path(db), Path(conf_path), dbtool=args.dbtool, user=args.dbtool_user
        )
    if args.from_dump is not None:
        name = args.from_dump
        if name != "-" and not Path(name).is_file():
            raise ToolError(f"no dump file {name}", EXIT_USAGE)
        if name == "-":
            return lambda: read_dump(stdin.read(), "stdin (ctl_mboxlist -d)")
        return lambda: read_dump(_read_text(name), f"{name} (ctl_mboxlist -d)")
    if args.from_slave_db is not None:
        if not Path(args.from_slave_db).is_file():
            raise ToolError(f"no slave database {args.from_slave_db}", EXIT_USAGE)
        return lambda: read_slave_db(Path(args.from_slave_db), servername)
    partitions = _partitions(args.from_partitions, cyrus)
    return lambda: scan_partitions(partitions)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None


def _partitions(given: Sequence[str], values: dict[str, str]) -> dict[bytes, Path]:
    result: dict[bytes, Path] = {}
    for item in given:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise ToolError(f"--from-partitions wants NAME=PATH, not {item!r}", EXIT_USAGE)
        result[os.fsencode(name)] = Path(path)
    if not given:
        for key, value in values.items():
            if key.startswith("partition-") and len(key) > len("partition-"):
                result[os.fsencode(key.removeprefix("partition-"))] = Path(value)
    if not result:
        raise ToolError("no partitions: give NAME=PATH or partition-* in --config", EXIT_USAGE)
    return result


# -- output -----------------------------------------------------------------------------


class Reporter:
    def __init__(self, out: TextIO, err: TextIO, as_json: bool, progress: bool, every: int) -> None:
        self.out, self.err, self.as_json = out, err, as_json
        self.progress, self.every = progress, every

    def plan(self, plan: Plan) -> None:
        if self.as_json:
            for record in plan_records(plan):
                self.out.write(json.dumps(record) + "\n")
        else:
            for line in plan_lines(plan):
                self.out.write(line + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.err.write(f"mupdate-push: {text}\n")
        self.err.flush()

    def ticker(self, what: str, total: int) -> Callable[[], None]:
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if self.progress and (done % self.every == 0 or done == total) and total > 1:
                self.note(f"{what} {done}/{total}")

        return tick

    def summary(self, counts: dict[str, Any]) -> None:
        if self.as_json:
            self.out.write(json.dumps({"summary": counts}) + "\n")
        else:
            words = [f"{k} {counts[k]}" for k in _SUMMARY_KEYS]
            tail = " (dry run, nothing changed)" if counts["dry_run"] else ""
            tail += " (stopped by the brake)" if counts["stopped"] else ""
            self.out.write(f"mupdate-push: {', '.join(words)} in {counts['seconds']:.2f} s{tail}\n")
        self.out.flush()


_SUMMARY_KEYS: Final = ("activated", "deleted", "conflicts", "unchanged", "refused", "skipped")


# -- the run ----------------------------------------------------------------------------


def _entry(line: MailboxLine | ReserveLine) -> MailboxEntry:
    if isinstance(line, ReserveLine):
        return MailboxEntry(line.name, EntryState.RESERVED, line.location)
    return MailboxEntry(line.name, EntryState.ACTIVE, line.location, line.acl)


async def _pipelined(
    items: Iterable[T], send: Callable[[T], Any], window: int, tick: Callable[[], None]
) -> list[tuple[T, Any]]:
    """Send at most ``window`` commands at a time; (item, result or Failure) in order."""
    from twisted.internet.defer import DeferredSemaphore, gatherResults

    semaphore = DeferredSemaphore(window)

    def one(item: T) -> Any:
        d = semaphore.run(send, item)

        def done(result: object) -> tuple[T, object]:
            tick()
            return item, result

        return d.addBoth(done)

    return list(await gatherResults([one(item) for item in items]))


def _check_connection(results: list[tuple[T, Any]]) -> None:
    from twisted.python.failure import Failure

    from mupdate.net.client import CommandFailed

    for _, result in results:
        if isinstance(result, Failure) and not result.check(CommandFailed):
            raise ToolError(f"lost the master: {result.getErrorMessage()}", EXIT_CONNECTION)


async def _finds(
    protocol: Any, names: list[bytes], window: int, report: Reporter, what: str
) -> dict[bytes, MailboxEntry | None]:
    from twisted.python.failure import Failure

    results = await _pipelined(names, protocol.find, window, report.ticker(what, len(names)))
    _check_connection(results)
    found: dict[bytes, MailboxEntry | None] = {}
    for name, result in results:
        if isinstance(result, Failure):  # FIND refused: we cannot tell, so we stop
            raise ToolError(
                f"the master refused FIND {name!r}: {result.getErrorMessage()}", EXIT_REFUSED
            )
        found[name] = None if result is None else _entry(result)
    return found


async def _apply(protocol: Any, plan: Plan, window: int, report: Reporter) -> Outcome:
    from mupdate.protocol.commands import Activate, Delete

    outcome = Outcome()
    names = [d.name for d in plan.deletions]
    now = await _finds(protocol, names, window, report, "re-checking deletions")
    send, skip = confirm_deletions(plan.deletions, now)
    for d in skip:
        outcome.skipped_deletes.append(d.name)
        report.note(
            f"not deleting {d.name.decode(errors='backslashreplace')}: it changed meanwhile"
        )
    deleted = await _pipelined(
        send,
        lambda d: protocol.command(Delete(b"", d.name)),
        window,
        report.ticker("deleting", len(send)),
    )
    activated = await _pipelined(
        plan.activations,
        lambda a: protocol.command(Activate(b"", a.name, a.location, a.acl)),
        window,
        report.ticker("activating", len(plan.activations)),
    )
    _check_connection(deleted)
    _check_connection(activated)
    for verb, results in (("DELETE", deleted), ("ACTIVATE", activated)):
        for step, result in results:
            if hasattr(result, "getErrorMessage"):
                text = f"{verb} {step.name.decode(errors='backslashreplace')}: {result.getErrorMessage()}"
                outcome.refused.append(text)
                report.note(f"refused: {text}")
            elif verb == "DELETE":
                outcome.deleted += 1
            else:
                outcome.activated += 1
    return outcome


async def push(
    reactor: Any, args: argparse.Namespace, stdin: TextIO, out: TextIO, err: TextIO
) -> int:
    started = time.monotonic()
    values = _config_values(args.config)
    options = push_options(args, values)
    read_local = source_reader(args, values, options.servername, stdin)
    target = resolve_target(args)
    report = Reporter(out, err, args.json, args.progress or err.isatty(), args.progress_every)
    protocol, _info = await open_session(reactor, target)
    try:
        from twisted.internet.threads import deferToThreadPool

        from mupdate.net.client import MupdateError

        try:
            listed = [_entry(e) for e in await protocol.list(options.servername + b"!")]
        except MupdateError as exc:
            code = EXIT_REFUSED if hasattr(exc, "status") else EXIT_CONNECTION
            raise ToolError(f"LIST failed: {exc}", code) from None
        try:
            local = await deferToThreadPool(reactor, reactor.getThreadPool(), read_local)
        except SourceError as exc:
            raise ToolError(f"cannot read the local list: {exc}", EXIT_USAGE) from None
        report.note(local.describe())
        to_find = names_to_find(local.mailboxes, listed, options.servername)
        found = await _finds(protocol, to_find, args.window, report, "finding")
        plan = make_plan(local.mailboxes, listed, found, options)
        report.plan(plan)
        for name in plan.unused_takes:
            report.note(f"--take {name.decode(errors='backslashreplace')}: not a conflict")
        outcome = Outcome()
        if plan.brake is not None:
            report.note(
                ("a real run would stop: " if args.dry_run else "stopped: ") + plan.brake.describe()
            )
        elif not args.dry_run:
            outcome = await _apply(protocol, plan, args.window, report)
        await protocol.logout().addTimeout(target.timeout, reactor)
    finally:
        protocol.close()
    report.summary(
        {
            "activated": len(plan.activations) if args.dry_run else outcome.activated,
            "deleted": len(plan.deletions) if args.dry_run else outcome.deleted,
            "conflicts": len(plan.conflicts),
            "unchanged": plan.unchanged,
            "refused": len(outcome.refused),
            "skipped": len(outcome.skipped_deletes),
            "master_entries": plan.master_entries,
            "local": len(local.mailboxes),
            "dry_run": args.dry_run,
            "stopped": plan.brake is not None,
            "seconds": round(time.monotonic() - started, 3),
        }
    )
    if plan.brake is not None:
        return EXIT_BRAKE
    if outcome.refused:
        return EXIT_REFUSED
    return EXIT_CONFLICTS if plan.conflicts else EXIT_OK


def main(
    argv: list[str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    code = [EXIT_OK]

    if args.every is not None and (args.every <= 0 or args.dry_run):
        stderr.write("mupdate-push: --every wants a number of seconds above 0 and no --dry-run\n")
        return EXIT_USAGE

    async def once(reactor: Any) -> None:
        try:
            code[0] = await push(reactor, args, stdin, stdout, stderr)
        except ToolError as exc:
            stderr.write(f"mupdate-push: {exc}\n")
            code[0] = exc.code

    async def run(reactor: Any) -> None:
        await once(reactor)
        while args.every is not None:  # until SIGTERM / SIGINT stops the reactor
            stdout.flush()
            stderr.flush()
            await deferLater(reactor, args.every, lambda: None)
            await once(reactor)

    from twisted.internet.task import deferLater, react

    try:
        react(run)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 1
    return code[0]


if __name__ == "__main__":
    raise SystemExit(main())

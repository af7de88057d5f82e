"""``mupdate-client``: ask any MUPDATE server (ours, Cyrus's master or slave) from the shell,
the job of Cyrus's ``mupdatetest`` made scriptable (protocol doc §3, §5, §6, §8).

    mupdate-client [connection options] [--json] SUBCOMMAND ...

    find NAME...        FIND each name; a line per name (MISSING when not found)
    list [PREFIX]       LIST every entry, or those whose location starts with PREFIX
    watch [HOST...]     UPDATE (PARTIAL-UPDATE with hosts): the dump, then each change as it
                        arrives, until Ctrl-C, --count changes or --seconds
    raw                 an interactive session (client_raw.py): type LIST, FIND user.x, ...
    status              servername, version, role, capabilities, entry counts, NOOP time;
                        with --status-url URL, our server's HTTP /status instead (no login)

Output formats are described in ``client_output.py``. Connection options and password
sources are those of every tool (``connect.py``); the password is never an argument.

Exit codes: 0 done; 1 a FIND name not found; 2 usage (bad arguments, no password); 3 the
server refused a command (NO or BAD); 4 connection failed, timed out, was closed or the
server broke the protocol; 5 login refused; 70 a bug in this tool. Errors are one line on
stderr starting ``mupdate-client:``, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError as TxTimeout
from twisted.internet.task import react

from mupdate.net.client import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionClosed,
    MupdateClientProtocol,
    MupdateError,
    ProtocolViolation,
    ServerBye,
    ServerInfo,
)
from mupdate.protocol.responses import DeleteLine, MailboxLine, ReserveLine
from mupdate.tools import client_output as fmt
from mupdate.tools.client_http import fetch_status, status_json, status_text, status_url
from mupdate.tools.client_raw import RawSession
from mupdate.tools.client_watch import Watch
from mupdate.tools.connect import (
    EXIT_AUTH,
    EXIT_CONNECTION,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    Target,
    ToolError,
    ToolParser,
    add_connection_options,
    open_session,
    resolve_target,
)

PROG: Final = "mupdate-client"
EXIT_INTERNAL: Final = 70  # sysexits EX_SOFTWARE: a bug here, not a problem out there

Reactor = Any  # IReactorTime + IReactorTCP + IReactorCore + IReactorFDSet: the real reactor
Runner = Callable[[Reactor, argparse.Namespace, Target, TextIO], Awaitable[int]]
DataLine = MailboxLine | ReserveLine | DeleteLine


def complain(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- arguments


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"seconds must be positive: {text!r}")
    return value


def _host(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("an UPDATE host cannot be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog=PROG,
        description="Query a MUPDATE server (RFC 3656, Cyrus murder) from the shell.",
        epilog=(
            "exit codes: 0 ok, 1 not found, 2 usage, 3 refused (NO/BAD), "
            "4 connection, 5 login refused, 70 internal error"
        ),
    )
    add_connection_options(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def add(name: str, help_: str, *, json: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        if json:
            p.add_argument(
                "--json", action="store_true", default=argparse.SUPPRESS, help="JSON lines"
            )
        return p

    add("find", "FIND each name (exit 1 if any is missing)").add_argument(
        "names", nargs="+", metavar="NAME"
    )
    add("list", "LIST every entry, or those whose location starts with PREFIX").add_argument(
        "prefix", nargs="?", metavar="PREFIX"
    )
    watch = add("watch", "UPDATE: the dump, then each change as it arrives")
    watch.add_argument("--count", type=_count, metavar="N", help="stop after N changes")
    watch.add_argument("--seconds", type=_seconds, metavar="S", help="stop after S seconds")
    watch.add_argument("--changes-only", action="store_true", help="do not print the dump")
    watch.add_argument(
        "--keepalive",
        type=float,
        default=60.0,
        metavar="S",
        help="send NOOP every S seconds (default 60; 0: never)",
    )
    watch.add_argument(
        "hosts", nargs="*", type=_host, metavar="HOST", help="PARTIAL-UPDATE for these servers"
    )
    add("raw", "interactive session like mupdatetest; LOGOUT or end of input ends it", json=False)
    status = add("status", "servername, version, role, capabilities, entry counts, NOOP round trip")
    status.add_argument(
        "--status-url",
        metavar="URL",
        help="instead, our master's or slave's HTTP /status (mupdate_metrics_listen): "
        "http://HOST:PORT or HOST:PORT; no login",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, resolve the password (a prompt comes before the reactor runs), then react."""
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if getattr(args, "status_url", None):  # HTTP, no MUPDATE login: no target, no password
        react(_main_http_status, (args,))
        return
    try:
        target = resolve_target(args)
    except ToolError as exc:
        complain(str(exc))
        raise SystemExit(exc.code) from None
    react(_main, (args, target))


async def _main(reactor: Reactor, args: argparse.Namespace, target: Target) -> None:
    code = await run(reactor, args, target, sys.stdout)
    if code:
        raise SystemExit(code)


async def _main_http_status(reactor: Reactor, args: argparse.Namespace) -> None:
    code = await run_http_status(reactor, args, sys.stdout)
    if code:
        raise SystemExit(code)


async def run_http_status(reactor: Reactor, args: argparse.Namespace, out: TextIO) -> int:
    """``status --status-url``: the JSON of ``/status`` as lines, or as one JSON line."""
    try:
        record = await fetch_status(reactor, status_url(args.status_url), args.timeout)
    except ToolError as exc:
        complain(str(exc))
        return exc.code
    lines = [status_json(record)] if args.json else status_text(record)
    for line in lines:
        print(line, file=out)
    out.flush()
    return EXIT_OK


async def run(reactor: Reactor, args: argparse.Namespace, target: Target, out: TextIO) -> int:
    """Run one subcommand; every failure becomes one line on stderr and an exit code."""
    runner = RUNNERS[args.command]
    try:
        return await runner(reactor, args, target, out)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush cannot fail again
        return EXIT_OK
    except Exception as exc:  # every failure ends as one line, never a traceback
        message, code = explain(exc, target)
        complain(message)
        return code


def explain(exc: BaseException, target: Target) -> tuple[str, int]:
    """The operator's line and exit code for a failure (style.md §7)."""
    where = target.address
    match exc:
        case ToolError():
            return str(exc), exc.code
        case CommandFailed():
            status = exc.status.decode("ascii", "replace")
            return f"{where} answered {status} {fmt.show(exc.text)}", EXIT_REFUSED
        case AuthenticationFailed():
            return f"login to {where} refused: {fmt.show(exc.text)}", EXIT_AUTH
        case ServerBye():
            return f"{where} closed the connection: BYE {fmt.show(exc.text)}", EXIT_CONNECTION
        case ConnectionClosed():
            return f"the connection to {where} was closed ({exc})", EXIT_CONNECTION
        case ProtocolViolation():
            return f"{where} broke the protocol: {exc.reason}", EXIT_CONNECTION
        case TxTimeout():
            return f"no answer from {where} within {target.timeout:g} s", EXIT_CONNECTION
        case MupdateError():
            return f"{where}: {exc}", EXIT_CONNECTION
    return f"internal error ({type(exc).__name__}: {exc}); please report it", EXIT_INTERNAL


# ---------------------------------------------------------------- sessions


@asynccontextmanager
async def session(
    reactor: Reactor, target: Target
) -> AsyncIterator[tuple[MupdateClientProtocol, ServerInfo]]:
    """A logged-in connection, logged out (bounded by the timeout) however the block ends."""
    client, info = await open_session(reactor, target)
    try:
        yield client, info
    finally:
        await goodbye(reactor, client, target.timeout)


async def goodbye(reactor: Reactor, client: MupdateClientProtocol, timeout: float) -> None:
    # The work is done (or has failed with its own report): a LOGOUT that goes wrong adds
    # nothing for the operator, so it is bounded and then the connection is dropped.
    with suppress(MupdateError, TxTimeout):
        await client.logout().addTimeout(timeout, reactor)
    await client.close()


async def in_order(deferreds: list[Deferred[Any]]) -> list[Any]:
    """Results of pipelined commands in order; after a failure the rest are consumed."""
    results = []
    try:
        for d in deferreds:
            results.append(await d)
    finally:
        for d in deferreds:
            d.addErrback(lambda _: None)
    return results


# ---------------------------------------------------------------- subcommands


def _names(values: Sequence[str]) -> list[bytes]:
    return [os.fsencode(value) for value in values]  # bytes exact, as typed


async def run_find(reactor: Reactor, args: argparse.Namespace, target: Target, out: TextIO) -> int:
    names = _names(args.names)
    async with session(reactor, target) as (client, _):
        found = await in_order(
            [client.find(name).addTimeout(target.timeout, reactor) for name in names]
        )
    missing = [name for name, entry in zip(names, found, strict=True) if entry is None]
    if args.json:
        for name, entry in zip(names, found, strict=True):
            record = fmt.missing_record(name) if entry is None else fmt.entry_record(entry)
            print(fmt.json_line(record), file=out)
    else:
        rows = [
            fmt.missing_row(name) if entry is None else fmt.entry_row(entry)
            for name, entry in zip(names, found, strict=True)
        ]
        for line in fmt.format_table(rows):
            print(line, file=out)
    out.flush()
    if missing:
        complain(f"{len(missing)} of {len(names)} name(s) not found")
        return EXIT_NOT_FOUND
    return EXIT_OK


async def run_list(reactor: Reactor, args: argparse.Namespace, target: Target, out: TextIO) -> int:
    prefix = None if args.prefix is None else os.fsencode(args.prefix)
    async with session(reactor, target) as (client, _):
        entries = await client.list(prefix)
    if args.json:
        for entry in entries:
            print(fmt.json_line(fmt.entry_record(entry)), file=out)
    else:
        for line in fmt.format_table([fmt.entry_row(entry) for entry in entries]):
            print(line, file=out)
    out.flush()
    return EXIT_OK


async def run_status(
    reactor: Reactor, args: argparse.Namespace, target: Target, out: TextIO
) -> int:
    async with session(reactor, target) as (client, info):
        started = reactor.seconds()
        await client.noop().addTimeout(target.timeout, reactor)
        noop_ms = (reactor.seconds() - started) * 1000.0
        entries = await client.list()
    parts = info.ready.parts
    servername, implementation, version, raw_role = (
        (*parts[1:5],) if len(parts) >= 5 and parts[0].upper() == b"MUPDATE" else (b"",) * 4
    )
    role, master = fmt.parse_role(raw_role)
    active, reserved, servers = fmt.count_entries(entries)
    report = fmt.StatusReport(
        address=target.address,
        servername=servername,
        implementation=implementation,
        version=version,
        role=role,
        master=master,
        capabilities=tuple(info.capabilities.items()),
        mechanisms=info.mechanisms,
        active=active,
        reserved=reserved,
        servers=servers,
        noop_ms=noop_ms,
    )
    if args.json:
        print(fmt.json_line(fmt.status_record(report)), file=out)
    else:
        for line in fmt.status_lines(report):
            print(line, file=out)
    out.flush()
    return EXIT_OK


async def run_raw(reactor: Reactor, args: argparse.Namespace, target: Target, out: TextIO) -> int:
    client, info = await open_session(reactor, target)
    if sys.stdin.isatty():
        name = info.ready.parts[1] if len(info.ready.parts) > 1 else b"?"
        complain(
            f"logged in to {fmt.show(name)} at {target.address} as {target.authname}; "
            "type commands (LIST, FIND user.x, ...), LOGOUT or end of input to finish"
        )
    out.flush()
    return await RawSession(reactor, client, target.timeout, complain).run()


async def run_watch(reactor: Reactor, args: argparse.Namespace, target: Target, out: TextIO) -> int:
    watch = Watch(reactor, args, target.timeout, out)
    trigger = reactor.addSystemEventTrigger("before", "shutdown", watch.interrupt)
    try:
        async with session(reactor, target) as (client, _):
            return await watch.run(client)
    finally:
        if not watch.interrupted:
            reactor.removeSystemEventTrigger(trigger)
        watch.cleaned.callback(None)


RUNNERS: Final[dict[str, Runner]] = {
    "find": run_find,
    "list": run_list,
    "watch": run_watch,
    "raw": run_raw,
    "status": run_status,
}

if __name__ == "__main__":
    main()

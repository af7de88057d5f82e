"""``mupdate-admin``: backup, restore and check the master's store.

``export`` writes the whole list as JSON (safe while the master runs: SQLite's WAL gives a
consistent read). ``import`` replaces the whole list atomically: into a stopped master's
database in one transaction, or, when the master runs (it holds the data directory's
lock), through its control socket, in one commit batch that its streams see.
``verify`` runs the store's consistency check. ``conflicts`` lists entries that need an
operator: reserved ones (an interrupted create or XFER), locations with an empty partition
(Cyrus's rename bug, §10.2) and locations without a server part.

``export`` and ``import`` report progress on stderr every ``--progress-every`` entries when
stderr is a terminal, or always with ``--progress``.

Exit codes: 0 done (``verify``: no problem; ``conflicts``: none found); 1 ``verify`` found
problems or ``conflicts`` found entries, an import was refused (nothing changed), or the
database is missing or cannot be read or written; 2 bad arguments or config. Every message
is one line on stderr starting ``mupdate-admin:``, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import time
from pathlib import Path
from typing import Final, TextIO

from mupdate.config import ConfigFileError, SettingsError
from mupdate.db.export import export_entries, field_json, import_entries
from mupdate.db.lock import DirectoryLock, DirectoryLocked
from mupdate.db.sqlite import SqliteStore
from mupdate.db.store import StoreError
from mupdate.master.control import SOCKET_NAME
from mupdate.master.tap import build_settings
from mupdate.model import MailboxEntry
from mupdate.tools.client_output import show
from mupdate.tools.connect import ToolParser

CONTROL_TIMEOUT = 600.0
PROGRESS_EVERY: Final = 100_000

#: Exit codes (README "Operator tools"): done and nothing found; the store has problems or
#: entries needing an operator, or the import was refused, or the database is missing or
#: unreadable; bad arguments or config.
EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2


class Progress:
    """``mupdate-admin: exported 200000 entries (1.9 s)`` every ``every`` entries, on stderr."""

    def __init__(self, what: str, enabled: bool, every: int, err: TextIO | None = None) -> None:
        self.what, self.enabled, self.every = what, enabled, every
        self.err = err or sys.stderr
        self.started = time.monotonic()

    def __call__(self, done: int) -> None:
        if self.enabled and done % self.every == 0:
            self.say(f"{self.what} {done} entries")

    def say(self, message: str) -> None:
        if self.enabled:
            seconds = time.monotonic() - self.started
            self.err.write(f"mupdate-admin: {message} ({seconds:.1f} s)\n")
            self.err.flush()


def conflicts(entries: list[MailboxEntry]) -> list[tuple[str, MailboxEntry]]:
    found: list[tuple[str, MailboxEntry]] = []
    for entry in entries:
        if not entry.active:
            found.append(("reserved", entry))
        if b"!" not in entry.location:
            found.append(("no-server", entry))
        elif entry.location.endswith(b"!"):
            found.append(("empty-partition", entry))
    return found


def import_running(control: Path, body: str) -> tuple[int, str]:
    """Send the import to a running master; its one-line answer decides the exit code."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONTROL_TIMEOUT)
        sock.connect(str(control))
        sock.sendall(b"IMPORT\n" + body.encode("utf-8"))
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    line = reply.decode("utf-8", "replace").strip()
    if line.startswith("OK "):
        added, changed, removed = line.split()[1:4]
        return (
            EXIT_OK,
            f"imported into the running master: {added} added, {changed} changed, {removed} removed",
        )
    return EXIT_PROBLEMS, line.removeprefix(
        "NO "
    ) or "the master closed the control socket without an answer"


def _import(settings_dir: Path, path: Path, stdin: TextIO, progress: Progress) -> int:
    body = stdin.read()
    try:
        entries = import_entries(io.StringIO(body), progress)
    except ValueError as exc:
        print(f"mupdate-admin: import refused, nothing changed: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    settings_dir.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(settings_dir)
    try:
        lock.acquire()
    except DirectoryLocked:
        progress.say(f"sending {len(entries)} checked entries to the running master")
        try:
            code, message = import_running(settings_dir / SOCKET_NAME, body)
        except OSError as exc:
            print(
                f"mupdate-admin: the master runs but its control socket failed: {exc}",
                file=sys.stderr,
            )
            return EXIT_PROBLEMS
        print(f"mupdate-admin: {message}", file=sys.stderr)
        return code
    try:
        progress.say(f"writing {len(entries)} checked entries in one transaction")
        store = SqliteStore(path)
        try:
            store.replace_all(entries)
        finally:
            store.close()
    finally:
        lock.release()
    print(f"mupdate-admin: imported {len(entries)} entries into {path}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(prog="mupdate-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the master's config file")
    parser.add_argument(
        "--data-dir", help="the master's data directory (overrides configdirectory)"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("export", help="write the whole list as JSON to stdout")
    sub.add_parser("import", help="replace the whole list with JSON from stdin, atomically")
    sub.add_parser("verify", help="check the store's consistency")
    found = sub.add_parser("conflicts", help="entries that need an operator")
    found.add_argument("--json", action="store_true", help="one JSON object per line")
    for name in ("export", "import"):
        action = sub.choices[name]
        action.add_argument(
            "--progress", action="store_true", help="progress on stderr, even if no tty"
        )
        action.add_argument("--progress-every", type=int, default=PROGRESS_EVERY, metavar="N")
    return parser


def main(
    argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """Run one action; every failure is one line on stderr and an exit code (see above)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    args = build_parser().parse_args(argv)
    progress: Progress | None = None
    if args.action in ("export", "import"):
        if args.progress_every < 1:
            print("mupdate-admin: --progress-every must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        enabled = args.progress or sys.stderr.isatty()
        progress = Progress(f"{args.action}ed", enabled, args.progress_every)
    try:
        settings = build_settings(args.config, args.data_dir, [])
    except (ConfigFileError, SettingsError) as exc:
        print(f"mupdate-admin: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _act(args, settings.configdirectory, settings.database_path, stdin, stdout, progress)
    except StoreError as exc:
        print(f"mupdate-admin: {exc}", file=sys.stderr)
    except BrokenPipeError:
        print("mupdate-admin: the output was closed before the end", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mupdate-admin: {where}{exc.strerror or exc}", file=sys.stderr)
    return EXIT_PROBLEMS


def _act(
    args: argparse.Namespace,
    directory: Path,
    path: Path,
    stdin: TextIO,
    stdout: TextIO,
    progress: Progress | None,
) -> int:
    if args.action == "import":
        assert progress is not None
        progress.what = "checked"
        return _import(directory, path, stdin, progress)
    if not path.exists():
        print(f"mupdate-admin: no database at {path}", file=sys.stderr)
        return EXIT_PROBLEMS
    store = SqliteStore(path)
    try:
        if args.action == "export":
            count = export_entries(store.load_entries(), stdout, progress)
            stdout.flush()  # the summary after the output, also when both share a pipe
            print(f"mupdate-admin: exported {count} entries", file=sys.stderr)
            return EXIT_OK
        if args.action == "conflicts":
            found = conflicts(sorted(store.load_entries(), key=lambda e: e.name))
            print_conflicts(found, args.json, stdout)
            stdout.flush()
            print(f"mupdate-admin: {len(found)} entr(ies) need an operator", file=sys.stderr)
            return EXIT_PROBLEMS if found else EXIT_OK
        problems = store.check()
    finally:
        store.close()
    for problem in problems:
        print(problem, file=stdout)
    stdout.flush()
    print(f"mupdate-admin: {len(problems)} problem(s) in {path}", file=sys.stderr)
    return EXIT_PROBLEMS if problems else EXIT_OK


def print_conflicts(found: list[tuple[str, MailboxEntry]], as_json: bool, stdout: TextIO) -> None:
    """Text: kind, name and location in aligned columns, bytes shown as ``mupdate-client``
    shows them; JSON: ``conflict``, ``name``, ``location``, ``state`` (byte strings as in
    ``export``: text, or ``{"base64": ...}``)."""
    if as_json:
        for kind, entry in found:
            record = {
                "conflict": kind,
                "name": field_json(entry.name),
                "location": field_json(entry.location),
                "state": "active" if entry.active else "reserved",
            }
            print(json.dumps(record), file=stdout)
        return
    rows = [(kind, show(entry.name), show(entry.location)) for kind, entry in found]
    kind_width = max((len(row[0]) for row in rows), default=0)
    name_width = max((len(row[1]) for row in rows), default=0)
    for kind, name, location in rows:
        print(f"{kind:<{kind_width}}  {name:<{name_width}}  {location}", file=stdout)


if __name__ == "__main__":
    raise SystemExit(main())

"""``mupdate-admin``: backup, restore and check the master's store.

``export`` writes the whole list as JSON (safe while the master runs: SQLite's WAL gives a
consistent read). ``import`` replaces the whole list in one transaction and needs the
master stopped (it takes the data directory's lock, which a running master holds).
``verify`` runs the store's consistency check.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from mupdate.config import ConfigFileError, SettingsError
from mupdate.db.export import export_entries, import_entries
from mupdate.db.lock import DirectoryLock, DirectoryLocked
from mupdate.db.sqlite import SqliteStore
from mupdate.master.tap import build_settings


def main(
    argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    parser = argparse.ArgumentParser(prog="mupdate-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the master's config file")
    parser.add_argument(
        "--data-dir", help="the master's data directory (overrides configdirectory)"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("export", help="write the whole list as JSON to stdout")
    sub.add_parser("import", help="replace the whole list with JSON from stdin (master stopped)")
    sub.add_parser("verify", help="check the store's consistency")
    args = parser.parse_args(argv)
    try:
        settings = build_settings(args.config, args.data_dir, [])
    except (ConfigFileError, SettingsError) as exc:
        print(f"mupdate-admin: {exc}", file=sys.stderr)
        return 2
    path = settings.database_path
    if args.action != "import" and not path.exists():
        print(f"mupdate-admin: no database at {path}", file=sys.stderr)
        return 1
    if args.action == "import":
        try:
            entries = import_entries(stdin)
        except ValueError as exc:
            print(f"mupdate-admin: import refused, nothing changed: {exc}", file=sys.stderr)
            return 1
        settings.configdirectory.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(settings.configdirectory)
        try:
            lock.acquire()
        except DirectoryLocked as exc:
            print(f"mupdate-admin: {exc}; stop the master first", file=sys.stderr)
            return 1
        try:
            store = SqliteStore(path)
            try:
                store.replace_all(entries)
            finally:
                store.close()
        finally:
            lock.release()
        print(f"mupdate-admin: imported {len(entries)} entries into {path}", file=sys.stderr)
        return 0
    store = SqliteStore(path)
    try:
        if args.action == "export":
            count = export_entries(store.load_entries(), stdout)
            print(f"mupdate-admin: exported {count} entries", file=sys.stderr)
            return 0
        problems = store.check()
    finally:
        store.close()
    for problem in problems:
        print(problem, file=stdout)
    print(f"mupdate-admin: {len(problems)} problem(s) in {path}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

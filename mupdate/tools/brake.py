"""``mupdate-slave-brake``: release a held mass-delete brake once, or show whether it is armed.

``release --config FILE`` leaves a one-shot marker in the slave's configdirectory; the next
resync that the brake would hold is applied instead, and the marker is consumed. For a
permanent release set ``mupdate_brake_release: yes`` in the slave's config.
"""

from __future__ import annotations

import argparse
import sys

from mupdate.config import ConfigFileError, SettingsError
from mupdate.slave.tap import RELEASE_FILE, build_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mupdate-slave-brake", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=("release", "status"))
    parser.add_argument("--config", required=True, help="the slave's config file")
    parser.add_argument("--data-dir", help="the slave's data directory (overrides configdirectory)")
    args = parser.parse_args(argv)
    try:
        settings = build_settings(args.config, args.data_dir, [])
    except (ConfigFileError, SettingsError) as exc:
        print(f"mupdate-slave-brake: {exc}", file=sys.stderr)
        return 2
    marker = settings.configdirectory / RELEASE_FILE
    if args.action == "release":
        settings.configdirectory.mkdir(parents=True, exist_ok=True)
        marker.touch()
        print(f"mupdate-slave-brake: the next held resync will be applied ({marker})")
        return 0
    state = "released for the next resync" if marker.exists() else "armed"
    if settings.brake_release:
        state = "released permanently (mupdate_brake_release: yes)"
    print(f"mupdate-slave-brake: {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

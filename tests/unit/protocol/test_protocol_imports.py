"""The wire layer imports nothing from Twisted (style.md §2, §10)."""

from __future__ import annotations

import subprocess
import sys

import mupdate.protocol


def test_protocol_package_imports_no_twisted() -> None:
    code = (
        "import sys, mupdate.protocol, mupdate.protocol.server, mupdate.protocol.client\n"
        "bad = sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


def test_public_names_are_exported() -> None:
    for name in mupdate.protocol.__all__:
        assert hasattr(mupdate.protocol, name), name
    assert {"ServerConnection", "ClientConnection", "PeerError", "NEED_DATA", "PAUSED"} <= set(
        mupdate.protocol.__all__
    )

"""The systemd units in etc/ parse, run twistd in the foreground, and are sandboxed.

With ``systemd-analyze`` on the machine (Debian's ``systemd`` package), each unit is checked by
``systemd-analyze verify`` (a copy whose ExecStart points at an existing twistd, since verify
insists the binary exists) and must produce no warning about it, and by
``systemd-analyze security --offline=yes``, whose overall exposure must stay low. Without it
those two are skipped; the key checks below run everywhere: a small parser of the unit
syntax (sections, ``Key=value``, repeated keys, backslash continuations) checks the required
keys and values: the foreground twistd command line with --config, Type=notify with a
watchdog, a dedicated user, Restart=on-failure, and the sandboxing the operator's guide
promises.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.cyrus import repo_root

UNITS = {
    "mupdate-master.service": ("mupdate-master", "/etc/mupdate/master.conf", "/var/lib/mupdate"),
    "mupdate-slave.service": ("mupdate-slave", "/etc/mupdate/slave.conf", "/var/lib/mupdate-slave"),
}
# Units that are not twistd: checked for sandboxing and by systemd-analyze only.
OTHER_UNITS = ("mupdate-push.service",)
SANDBOXED = sorted(UNITS) + list(OTHER_UNITS)
SANDBOXING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "LockPersonality": "yes",
}
MAX_EXPOSURE = 2.5  # systemd-analyze security scale, 0 (locked down) .. 10 (unprotected)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (in order), as systemd reads a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"bad section header {line!r}"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"not Key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    assert not pending, "file ends inside a continuation"
    return sections


def unit_path(name: str) -> Path:
    return repo_root() / "etc" / name


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_twistd_in_the_foreground_as_a_dedicated_user(name):
    plugin, config, data_dir = UNITS[name]
    unit = parse_unit(unit_path(name).read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    argv = exec_start.split()
    assert Path(argv[0]).name == "twistd"
    assert argv[0].startswith("/")
    assert argv[1:] == ["-n", "--pidfile=", "--logfile=-", plugin, "--config", config]
    assert service["User"][-1] not in ("", "root", "nobody")
    assert service["Restart"] == ["on-failure"]
    # twistd sends READY=1 / STATUS= / WATCHDOG=1 itself (mupdate/net/sdnotify.py, tested
    # with a real notify socket in tests/integration/test_sdnotify.py).
    assert service["Type"][-1] == "notify"
    assert service["NotifyAccess"][-1] == "main"  # twistd -n is the main process
    assert re.fullmatch(r"\d+(s|min)", service["WatchdogSec"][-1])
    assert data_dir in service["ReadWritePaths"][-1].split()
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Unit"]["After"][-1]


@pytest.mark.parametrize("name", SANDBOXED)
def test_unit_is_sandboxed(name):
    service = parse_unit(unit_path(name).read_text())["Service"]
    for key, value in SANDBOXING.items():
        assert service.get(key, [None])[-1] == value, f"{name}: {key}={value} expected"
    assert "@system-service" in service["SystemCallFilter"]
    assert not service.get("AmbientCapabilities", [""])[-1]


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_comments_on_the_health_check(name):
    text = unit_path(name).read_text()
    assert re.search(r"^#.*GET /health", text, re.M)
    assert "mupdate_metrics_listen" in text


def _analyzable(tmp_path: Path, name: str) -> Path:
    """A copy whose ExecStart names an executable that exists here (verify checks that)."""
    twistd = shutil.which("twistd") or "/bin/true"  # any existing executable will do
    text = unit_path(name).read_text()
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={twistd}", text, flags=re.M)
    copy = tmp_path / name
    copy.write_text(text)
    return copy


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt systemd)"
)


@needs_analyze
@pytest.mark.parametrize("name", SANDBOXED)
def test_systemd_analyze_verify(tmp_path, name):
    copy = _analyzable(tmp_path, name)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    about_us = [line for line in (done.stdout + done.stderr).splitlines() if name in line]
    assert done.returncode == 0, done.stdout + done.stderr
    assert not about_us, done.stdout + done.stderr


@needs_analyze
@pytest.mark.parametrize("name", SANDBOXED)
def test_systemd_analyze_security_exposure_is_low(tmp_path, name):
    copy = _analyzable(tmp_path, name)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    if match is None:
        pytest.skip(f"systemd-analyze security --offline not supported here: {done.stderr[-300:]}")
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout[-2000:]


def test_push_unit_keeps_mupdate_push_running_against_the_cyrus_db():
    unit = parse_unit(unit_path("mupdate-push.service").read_text())
    (exec_start,) = unit["Service"]["ExecStart"]
    argv = exec_start.split()
    assert Path(argv[0]).name == "mupdate-push"
    assert argv[1:3] == ["--every", "300"]
    assert "--from-cyrus-db" in argv
    assert unit["Service"]["User"] == ["cyrus"]
    assert unit["Service"]["Restart"] == ["on-failure"]

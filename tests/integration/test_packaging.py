"""Packaging: an sdist and a wheel built from this tree each install, into a fresh virtual
environment, the twistd plugins and every console script.

How:

- the tree is copied first (the files git tracks plus new ones it does not ignore; without
  git, everything but caches, venvs and build output), so the build writes no ``build/`` or
  ``*.egg-info`` into the working tree and a file that exists only locally (ignored) cannot
  make the build pass;
- ``python -m build --outdir DIST`` builds the sdist, then the wheel FROM that sdist, so a
  file missing from the sdist (MANIFEST.in) breaks the wheel as well; ``build`` comes from the
  test extra (setup.cfg), or, outside a venv that has it, from a builder venv made here;
- the sdist and the wheel are each installed into a fresh ``python -m venv`` in tmp_path,
  both at once (pip uses the machine's configured index and cache for the dependencies);
- then, from a directory that is not the source tree and without PYTHONPATH, each venv's
  ``twistd --help`` must list mupdate-master and mupdate-slave, ``twistd mupdate-master
  --help`` and ``twistd mupdate-slave --help`` must show their options, every console script's
  ``--help`` must work, ``mupdate`` must be imported from the venv, and the sample configs,
  systemd units and the operator's guide must be installed under ``share/``.

Every subprocess has a timeout; the whole module takes about 25 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.cyrus import repo_root

SCRIPTS = (
    "mupdate-passwd",
    "mupdate-admin",
    "mupdate-slave-brake",
    "mupdate-client",
    "mupdate-push",
)
PLUGINS = ("mupdate-master", "mupdate-slave")
# Every sample config and systemd unit in etc/ (read from the tree, so a new one that
# setup.cfg's data_files forgets fails here), and the operator's documentation.
DATA_FILES = (
    *(
        f"share/mupdate/etc/{p.name}"
        for p in sorted((repo_root() / "etc").iterdir())
        if p.suffix in (".conf", ".service")
    ),
    "share/doc/mupdate/README.md",
    "share/doc/mupdate/operators-guide.md",
)
SDIST_MUST_HAVE = (
    "README.md",
    "MANIFEST.in",
    "setup.cfg",
    "pyproject.toml",
    "twisted/plugins/mupdate_plugins.py",
    "mupdate/db/schema/schema-v1.sql",
    "etc/mupdate-master.conf",
    "etc/mupdate-replication-pair.conf",
    "etc/mupdate-slave-frontend.conf",
    "etc/mupdate-slave-unified.conf",
    "etc/mupdate-master.service",
    "etc/mupdate-slave.service",
    "docs/operators-guide.md",
)
BUILD_TIMEOUT = 180
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 60
_SKIP_DIRS = {
    ".git",
    ".venv",
    "build",
    "dist",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".benchmarks",
    "mupdate-data",
}


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(argv: list[str | Path], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-3000:]}"
    )
    return done


def _source_files(root: Path) -> list[Path]:
    """The tree as a fresh checkout plus local work would have it (relative paths)."""
    if (root / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if listed.returncode == 0:
            names = [n for n in listed.stdout.decode().split("\0") if n]
            return [Path(n) for n in names if (root / n).is_file()]
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        skipped = _SKIP_DIRS.intersection(rel.parts) or rel.parts[0].endswith(".egg-info")
        if path.is_file() and not skipped and rel.suffix != ".pyc" and rel.name != "dropin.cache":
            found.append(rel)
    return found


def _copy_tree(root: Path, dest: Path) -> None:
    for rel in _source_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def _builder(tmp: Path) -> Path:
    """An interpreter with `build`: this one, or a small venv made for it."""
    if importlib.util.find_spec("build") is not None:
        return Path(sys.executable)
    venv = tmp / "builder"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp, timeout=INSTALL_TIMEOUT)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", "build"], cwd=tmp, timeout=INSTALL_TIMEOUT)
    return python


def _install(artifact: Path, venv: Path) -> Path:
    _run([sys.executable, "-m", "venv", venv], cwd=venv.parent, timeout=INSTALL_TIMEOUT)
    _run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", artifact],
        cwd=venv.parent,
        timeout=INSTALL_TIMEOUT,
    )
    return venv


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    _copy_tree(repo_root(), src)
    dist = tmp / "dist"
    _run([_builder(tmp), "-m", "build", "--outdir", dist, src], cwd=tmp, timeout=BUILD_TIMEOUT)
    (sdist,) = dist.glob("mupdate-*.tar.gz")
    (wheel,) = dist.glob("mupdate-*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def installed(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("venvs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {kind: pool.submit(_install, path, tmp / kind) for kind, path in built.items()}
        return {kind: future.result() for kind, future in futures.items()}


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory without the source tree (no twisted/plugins, no mupdate/)."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def test_sdist_carries_docs_configs_units_schema_and_plugin(built):
    with tarfile.open(built["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [n for n in SDIST_MUST_HAVE if n not in names]
    assert not missing, f"the sdist lacks {missing} (MANIFEST.in)"
    assert not [n for n in names if n.endswith((".pyc", "dropin.cache"))]


def test_wheel_ships_the_plugin_and_schema_but_never_a_plugin_cache(built):
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
    assert "twisted/plugins/mupdate_plugins.py" in names
    assert "mupdate/db/schema/schema-v1.sql" in names
    # a dropin.cache in the wheel would overwrite Twisted's own in site-packages
    assert not [n for n in names if n.endswith("dropin.cache")]
    assert not [n for n in names if n.startswith(("tests/", "twisted/__init__"))]
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    assert set(DATA_FILES) <= data


@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_install_provides_plugins_and_scripts(installed, kind, elsewhere):
    venv = installed[kind]
    bindir = venv / "bin"
    where = _run(
        [bindir / "python", "-c", "import mupdate, sys; print(mupdate.__file__)"],
        cwd=elsewhere,
        timeout=RUN_TIMEOUT,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    listed = _run([bindir / "twistd", "--help"], cwd=elsewhere, timeout=RUN_TIMEOUT).stdout
    commands = {line.split()[0] for line in listed.splitlines() if line.startswith("    ")}
    assert set(PLUGINS) <= commands, listed
    for plugin in PLUGINS:
        shown = _run([bindir / "twistd", plugin, "--help"], cwd=elsewhere, timeout=RUN_TIMEOUT)
        assert "--config" in shown.stdout, shown.stdout
        assert "--port" in shown.stdout, shown.stdout
    for script in SCRIPTS:
        shown = _run([bindir / script, "--help"], cwd=elsewhere, timeout=RUN_TIMEOUT)
        assert f"usage: {script}" in shown.stdout, shown.stdout
    missing = [n for n in DATA_FILES if not (venv / n).is_file()]
    assert not missing, f"not installed: {missing}"

"""Start and stop OUR MUPDATE master as a subprocess, through its operator interface.

    mupdate-passwd --file CREDS add admin          (password on stdin)
    twistd -n --pidfile= mupdate-master --config FILE --port tcp:PORT:interface=127.0.0.1

run with cwd = repo root and PYTHONPATH = repo root, so the plugin in
<repo>/twisted/plugins is found without installing the package. Readiness is
the greeting line `* OK MUPDATE` on the port, polled with a deadline; the
process's early exit is detected while polling. `stop()` sends SIGTERM, then
SIGKILL after a bound; it only ever signals the process it started.

The attributes (kind, host, port, address, servername, admin, password,
start, stop, log_tail) are shared with cyrus.CyrusMasterUnderTest so a test can
run against either master.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.cyrus import HOST, PortAllocator, repo_root

__all__ = ["OurMaster", "OurMasterError", "our_master_available", "twistd_plugin_available"]


class OurMasterError(AssertionError):
    """Our master could not be set up or did not become ready; carries its log."""


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    # A runner under systemd must not hand its own notify socket to the daemons it tests.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _twistd() -> list[str]:
    # prefer the twistd of the interpreter running the tests (same venv)
    candidate = Path(sys.executable).parent / "twistd"
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _passwd_tool() -> list[str]:
    candidate = Path(sys.executable).parent / "mupdate-passwd"
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which("mupdate-passwd")
    if found:
        return [found]
    return [sys.executable, "-m", "mupdate.tools.passwd"]


def our_master_available(timeout: float = 20.0) -> str | None:
    """None when the `mupdate-master` twistd plugin is found, else why not."""
    return twistd_plugin_available("mupdate-master", timeout)


def twistd_plugin_available(plugin: str, timeout: float = 20.0) -> str | None:
    """None when `twistd --help` (cwd and PYTHONPATH = repo root) lists `plugin`, else why not."""
    root = repo_root()
    try:
        p = subprocess.run(
            [*_twistd(), "--help"],
            cwd=root,
            env=_env(root),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"twistd --help failed: {e}"
    if not any(line.split()[:1] == [plugin] for line in p.stdout.splitlines()):
        return f"twistd has no {plugin} plugin (not in the tree yet?)"
    return None


class OurMaster:
    kind = "ours"
    plugin = "mupdate-master"  # the twistd subcommand (ourslave.OurSlave overrides it)
    process_name = "our master"  # in error messages

    def __init__(
        self,
        workdir: Path,
        *,
        servername: str = "mupdate-test",
        admin: str = "admin",
        password: str = "secret",
        port: int | None = None,
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.root = repo_root()
        self.workdir = workdir
        self.servername = servername
        self.admin = admin
        self.password = password
        self.host = HOST
        self.port = port or PortAllocator()()
        self.extra_config = dict(extra_config or {})
        self.config_path = workdir / "mupdate.conf"
        self.credentials_path = workdir / "credentials"
        self.store_dir = workdir / "db"
        self.log_path = workdir / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def cwd(self) -> Path:
        return self.root

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"our master {self.servername!r} on {self.address} (log {self.log_path})"

    # ------------------------------------------------------------- set up

    def _run_tool(self, argv: list[str], stdin: str, timeout: float = 30.0) -> None:
        try:
            p = subprocess.run(
                argv,
                cwd=self.cwd,
                env=_env(self.root),
                input=stdin,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise OurMasterError(f"{argv} timed out after {timeout}s") from e
        if p.returncode != 0:
            raise OurMasterError(f"{argv} exited {p.returncode}:\n{p.stdout}")

    def configure(self) -> None:
        """Write credentials and the imapd.conf-style config (idempotent)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.credentials_path.exists():
            self._run_tool(
                [*_passwd_tool(), "--file", str(self.credentials_path), "add", self.admin],
                stdin=self.password + "\n",
            )
        lines = {
            "servername": self.servername,
            "configdirectory": str(self.store_dir),
            "admins": self.admin,
            "mupdate_credentials": str(self.credentials_path),
            "allowplaintext": "yes",
            **self.extra_config,
        }
        self.config_path.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))

    # ------------------------------------------------------------- run

    def argv(self) -> list[str]:
        """The twistd command line; a subclass may drop --port to keep the config's."""
        return [
            *_twistd(),
            "-n",
            "--pidfile=",
            self.plugin,
            "--config",
            str(self.config_path),
            "--port",
            f"tcp:{self.port}:interface={self.host}",
        ]

    def start(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise OurMasterError("already running")
        self.configure()
        argv = self.argv()
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                cwd=self.root,
                env=_env(self.root),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last_error = "never connected"
        while True:
            if self.proc.poll() is not None:
                raise OurMasterError(
                    f"{self.process_name} exited with {self.proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise OurMasterError(
                    f"{self.process_name} did not greet `* OK MUPDATE` on {self.address} within "
                    f"{timeout}s ({last_error}):\n" + self.log_tail()
                )
            greeting = self._try_greeting(min(left, 2.0))
            if greeting is True:
                return
            last_error = str(greeting)
            # poll interval that also notices the process dying
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=min(0.1, max(0.01, deadline - time.monotonic())))

    def _try_greeting(self, timeout: float) -> bool | str:
        end = time.monotonic() + timeout
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            return f"connect: {e}"
        buf = b""
        try:
            while time.monotonic() < end:
                sock.settimeout(max(0.01, end - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    return f"closed after {buf!r}"
                buf += chunk
                if any(self._ready_greeting(line) for line in buf.split(b"\r\n")):
                    with contextlib.suppress(OSError):
                        sock.sendall(b"Q01 LOGOUT\r\n")
                    return True
            return f"no `* OK MUPDATE` in {buf!r}"
        except OSError as e:
            return f"read: {e} after {buf!r}"
        finally:
            sock.close()

    def _ready_greeting(self, line: bytes) -> bool:
        """Whether one greeting line (no CRLF) says the server is ready."""
        return line.startswith(b"* OK MUPDATE")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM our twistd, SIGKILL its process group after `timeout`; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the session we created for it
                proc.wait(timeout=timeout)
        return proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

"""Test harness around shared/interop/cyrus-murder (real Cyrus 3.6 murder daemons).

`CyrusMurder` wraps the tool's subcommands with `subprocess` and a timeout on
every call; it allocates free ports on 127.0.0.1, puts node directories under
one base directory below /tmp (mode 755: the daemons run as user `cyrus` and
must reach them), remembers every node and tap it started, and `stop_all()`
stops them (idempotent; call it from fixture teardown).

Locating the tool: env CYRUS_MURDER, else <repo>/../shared/interop/cyrus-murder.

Nothing here knows about our master; see ourmaster.py. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "HOST",
    "CyrusMasterUnderTest",
    "CyrusMurder",
    "CyrusMurderError",
    "ImapResult",
    "Node",
    "PortAllocator",
    "Tap",
    "TapLine",
    "cyrus_available",
    "locate_cyrus_murder",
    "repo_root",
    "wait_until",
]

HOST = "127.0.0.1"


def repo_root() -> Path:
    """The repository root (tests/helpers/cyrus.py is two levels below it)."""
    return Path(__file__).resolve().parents[2]


def locate_cyrus_murder() -> Path:
    env = os.environ.get("CYRUS_MURDER")
    if env:
        return Path(env).resolve()
    return (repo_root().parent / "shared" / "interop" / "cyrus-murder").resolve()


def cyrus_available() -> str | None:
    """None when interop tests can run here, else the reason they cannot."""
    tool = locate_cyrus_murder()
    if not tool.is_file():
        return f"cyrus-murder not found at {tool} (set CYRUS_MURDER)"
    if os.geteuid() != 0:
        return "cyrus-murder needs root"
    for binary in ("/usr/sbin/cyrmaster", "/usr/lib/cyrus/bin/mupdate", "/usr/lib/cyrus/bin/imapd"):
        if not os.path.exists(binary):
            return f"Cyrus is not installed ({binary} missing; `cyrus-murder install`)"
    if shutil.which("unshare") is None or shutil.which("runuser") is None:
        return "util-linux (unshare, runuser) missing"
    return None


class CyrusMurderError(AssertionError):
    """A cyrus-murder call failed or timed out; the message carries its output."""


class PortAllocator:
    """Free TCP ports on 127.0.0.1, never the same one twice in this process."""

    _handed_out: set[int] = set()  # noqa: RUF012 - shared on purpose across instances

    def __call__(self) -> int:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((HOST, 0))
                port = int(s.getsockname()[1])
            if port not in self._handed_out:
                self._handed_out.add(port)
                return port
        raise RuntimeError("no free port found on 127.0.0.1")


@dataclass(frozen=True)
class Node:
    """A node started by cyrus-murder: its directory, role, servername and ports."""

    dir: Path
    role: str
    servername: str
    ports: dict[str, int]

    @property
    def imap_addr(self) -> str:
        return f"{HOST}:{self.ports['imap_port']}"

    @property
    def mupdate_addr(self) -> str:
        """Where this node's mupdate server listens (master or slave)."""
        return f"{HOST}:{self.ports.get('port') or self.ports['mupdate_port']}"

    @property
    def mupdate_port(self) -> int:
        return self.ports.get("port") or self.ports["mupdate_port"]

    @property
    def syslog_path(self) -> Path:
        return self.dir / "log" / "syslog.log"


@dataclass(frozen=True)
class TapLine:
    conn: int
    direction: str  # "C>" client to server, "<S" server to client, "--" tap notes
    text: str


@dataclass
class Tap:
    """A logging TCP proxy (`cyrus-murder tap`) and its parsed log."""

    dir: Path
    port: int
    to: str
    _lines_seen: int = field(default=0, repr=False)

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / f"tap-{self.port}.log"

    _LINE = re.compile(r"^\S+ #(\d+) (C>|<S|--) ?(.*)$")

    def lines(self) -> list[TapLine]:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for raw in text.split("\n"):
            m = self._LINE.match(raw)
            if m:
                out.append(TapLine(int(m.group(1)), m.group(2), m.group(3)))
        return out

    def connections(self) -> dict[int, list[TapLine]]:
        conns: dict[int, list[TapLine]] = {}
        for line in self.lines():
            if line.conn:
                conns.setdefault(line.conn, []).append(line)
        return conns

    def mark(self) -> int:
        """Highest connection number so far; pass to `new_connections`."""
        return max(self.connections(), default=0)

    def new_connections(self, since: int) -> dict[int, list[TapLine]]:
        return {k: v for k, v in self.connections().items() if k > since}

    def wait_closed(
        self, since: int, count: int, timeout: float = 10.0
    ) -> dict[int, list[TapLine]]:
        """Wait (bounded) until `count` connections newer than `since` were closed on both sides."""
        deadline = time.monotonic() + timeout
        while True:
            conns = self.new_connections(since)
            closed = {
                k: v for k, v in conns.items() if sum(1 for x in v if x.text == "<closed>") >= 2
            }
            if len(closed) >= count:
                return closed
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"tap {self.addr}: expected {count} closed connection(s) after #{since} "
                    f"within {timeout}s, have {sorted(closed)} of {sorted(conns)}:\n"
                    + self.excerpt(since)
                )
            _pause(0.05)

    def excerpt(self, since: int = 0, last: int = 400) -> str:
        lines = [x for x in self.lines() if x.conn > since or x.conn == 0]
        return "\n".join(f"#{x.conn} {x.direction} {x.text}" for x in lines[-last:])


@dataclass(frozen=True)
class ImapResult:
    """Outcome of one `cyrus-murder imap` call: exit code, output, per-command status."""

    returncode: int
    output: str
    statuses: list[tuple[str, str, str]]  # (command as typed, OK/NO/BAD/ERR, rest)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(s == "OK" for _, s, _ in self.statuses)


def _pause(seconds: float) -> None:
    """Poll interval inside a loop bounded by a deadline (never a bare fixed wait)."""
    select.select([], [], [], seconds)


class CyrusMurder:
    """One set of Cyrus nodes (a topology) under one base directory.

    Every method runs the tool with a timeout and raises CyrusMurderError with
    the tool's output on failure (unless check=False)."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        tool: Path | None = None,
        timeout: float = 60.0,
        ports: PortAllocator | None = None,
        lifetime: int = 3600,
    ) -> None:
        """`lifetime`: nodes and taps stop by themselves after that many seconds, a safety net
        for a test process that dies before its teardown (the tool's default is 6 h)."""
        self.tool = tool or locate_cyrus_murder()
        self.lifetime = lifetime
        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix="mupdate-interop-", dir="/tmp"))
        base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(base_dir, 0o755)
        if any(c in str(base_dir) for c in " \t\"'"):
            raise ValueError(f"node directories must not contain blanks or quotes: {base_dir}")
        self.base_dir = base_dir
        self.timeout = timeout
        self.free_port = ports or PortAllocator()
        self.nodes: dict[str, Node] = {}
        self.taps: dict[str, Tap] = {}
        self._started_dirs: list[Path] = []

    # ---------------------------------------------------------------- running

    def run(
        self,
        *args: str,
        timeout: float | None = None,
        check: bool = True,
        ok_codes: Iterable[int] = (0,),
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.tool), *args]
        try:
            p = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                timeout=timeout or self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            raise CyrusMurderError(
                f"{shlex.join(argv)} timed out after {e.timeout}s; output:\n{out or ''}"
            ) from e
        if check and p.returncode not in tuple(ok_codes):
            raise CyrusMurderError(f"{shlex.join(argv)} exited {p.returncode}; output:\n{p.stdout}")
        return p

    def _dir(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"bad node name {name!r}")
        return self.base_dir / name

    # ---------------------------------------------------------------- nodes

    def _start(
        self, name: str, role: str, servername: str, ports: dict[str, int], argv: list[str]
    ) -> Node:
        d = self._dir(name)
        if name in self.nodes:
            raise ValueError(f"node {name} already started")
        self._started_dirs.append(d)  # before the call: a half-started node is stopped too
        self.run(*argv, "--lifetime", str(self.lifetime), timeout=self.timeout)
        node = Node(d, role, servername, ports)
        self.nodes[name] = node
        return node

    def master(
        self,
        name: str = "master",
        *,
        servername: str = "mupdate-master",
        port: int | None = None,
        extra: Sequence[str] = (),
    ) -> Node:
        port = port or self.free_port()
        return self._start(
            name,
            "master",
            servername,
            {"port": port},
            [
                "master",
                str(self._dir(name)),
                "--port",
                str(port),
                "--servername",
                servername,
                *extra,
            ],
        )

    def backend(
        self,
        name: str,
        *,
        servername: str,
        mupdate: str,
        imap_port: int | None = None,
        extra: Sequence[str] = (),
    ) -> Node:
        imap_port = imap_port or self.free_port()
        return self._start(
            name,
            "backend",
            servername,
            {"imap_port": imap_port},
            [
                "backend",
                str(self._dir(name)),
                "--servername",
                servername,
                "--imap-port",
                str(imap_port),
                "--mupdate",
                mupdate,
                *extra,
            ],
        )

    def frontend(
        self,
        name: str,
        *,
        mupdate: str,
        servername: str = "frontend",
        port: int | None = None,
        imap_port: int | None = None,
        extra: Sequence[str] = (),
    ) -> Node:
        port = port or self.free_port()
        ports = {"port": port}
        argv = [
            "frontend",
            str(self._dir(name)),
            "--port",
            str(port),
            "--mupdate",
            mupdate,
            "--servername",
            servername,
        ]
        if imap_port is not None:
            ports["imap_port"] = imap_port
            argv += ["--imap-port", str(imap_port)]
        return self._start(name, "frontend", servername, ports, argv + list(extra))

    def tap(self, name: str, *, to: str, port: int | None = None) -> Tap:
        port = port or self.free_port()
        d = self._dir(name)
        self._started_dirs.append(d)
        self.run(
            "tap",
            str(d),
            "--listen",
            f"{HOST}:{port}",
            "--to",
            to,
            "--lifetime",
            str(self.lifetime),
        )
        tap = Tap(d, port, to)
        self.taps[name] = tap
        return tap

    def start(self, node: Node) -> None:
        """Start a stopped node again with its saved settings."""
        self.run("start", str(node.dir))

    def stop(self, *nodes: Node | Tap | Path, timeout: float = 15.0) -> str:
        dirs = [str(n.dir if isinstance(n, Node | Tap) else n) for n in nodes]
        if not dirs:
            return ""
        # the tool waits up to --timeout per daemon group, several groups per dir
        return self.run(
            "stop",
            *dirs,
            "--timeout",
            str(timeout),
            timeout=timeout * 3 * len(dirs) + 30,
            check=False,
        ).stdout

    def stop_all(self) -> str:
        """Stop everything this harness started (idempotent)."""
        dirs = [d for d in dict.fromkeys(self._started_dirs) if d.is_dir()]
        return self.stop(*dirs) if dirs else ""

    def cyrmaster_pid(self, node: Node) -> int:
        """The pid of the node's running cyrmaster (from the pid file it writes)."""
        return int((node.dir / "run" / "cyrmaster.pid").read_text().split()[0])

    def add_service(
        self, node: Node, name: str, argv: Sequence[str], port: int, timeout: float = 20.0
    ) -> None:
        """Add a SERVICES entry (``name cmd="ARGV" listen=127.0.0.1:PORT``) to a running node's
        cyrus.conf and SIGHUP its cyrmaster, which starts listening without a restart; wait
        (bounded) until the port accepts. cyrus-murder rewrites cyrus.conf at every start, so
        the service is gone after a restart of the node. E.g. a replica's sync_server:
        ``add_service(node, "syncserver", ["/usr/lib/cyrus/bin/sync_server", "-C",
        f"{node.dir}/imapd.conf"], port)``."""
        if not re.fullmatch(r"[A-Za-z0-9]+", name):
            raise ValueError(f"cyrus.conf service names are letters and digits: {name!r}")
        conf = node.dir / "cyrus.conf"
        text = conf.read_text()
        entry = f'  {name} cmd="{shlex.join(argv)}" listen="{HOST}:{port}" prefork=0\n'
        if "SERVICES {\n" not in text:
            raise CyrusMurderError(f"{conf} has no SERVICES section:\n{text}")
        conf.write_text(text.replace("SERVICES {\n", "SERVICES {\n" + entry, 1))
        os.kill(self.cyrmaster_pid(node), signal.SIGHUP)

        def accepts() -> bool:
            try:
                with socket.create_connection((HOST, port), timeout=1.0):
                    return True
            except OSError:
                return False

        wait_until(accepts, timeout, f"{name} on {HOST}:{port} after SIGHUP to {node.dir}")

    def wipe_db(self, node: Node) -> None:
        self.run("wipe-db", str(node.dir))

    def cleanup(self) -> None:
        """Stop everything, then remove the base directory."""
        self.stop_all()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # ---------------------------------------------------------------- clients

    _STATUS = re.compile(r"^(?P<cmd>\S.*?): (?P<st>OK|NO|BAD|ERR)\b ?(?P<rest>.*)$")

    def imap(
        self,
        target: Node | str,
        *commands: Sequence[str] | str,
        user: str = "admin",
        password: str = "secret",
        check: bool = True,
        timeout: float = 60.0,
    ) -> ImapResult:
        """Run IMAP commands (each a list of words, or one shell-style string) in one session.

        With check=True every command must answer OK."""
        addr = target.imap_addr if isinstance(target, Node) else target
        words = [c if isinstance(c, str) else shlex.join(c) for c in commands]
        if len(words) == 1 and " " not in words[0]:
            words = [words[0]]
        argv = [
            "imap",
            addr,
            "--user",
            user,
            "--password",
            password,
            "--timeout",
            str(timeout / 2),
            *words,
        ]
        p = self.run(*argv, timeout=timeout, check=False)
        statuses = [
            (m.group("cmd"), m.group("st"), m.group("rest"))
            for m in (self._STATUS.match(line) for line in p.stdout.splitlines())
            if m
        ]
        result = ImapResult(p.returncode, p.stdout, statuses)
        if check and not result.ok:
            raise CyrusMurderError(
                f"imap {addr} {words!r} failed (exit {p.returncode}):\n{p.stdout}"
            )
        return result

    def ctl(
        self, node: Node, *args: str, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`ctl_mboxlist -C <node>/imapd.conf ARGS` (or another Cyrus tool) as user cyrus."""
        # options before DIR: after DIR everything belongs to the Cyrus tool (argparse REMAINDER)
        return self.run(
            "ctl",
            "--timeout",
            str(int(timeout)),
            str(node.dir),
            "--",
            *args,
            timeout=timeout + 30,
            check=check,
        )

    def dump(self, node: Node) -> list[dict[str, object]]:
        """The node's mailboxes.db (`ctl_mboxlist -d`) as dicts, in key order.

        Parsed from Cyrus's own JSON (`dump --raw`): unlike `dump --json` it keeps the
        ACL entries in their stored order, which is the order MUPDATE carries."""
        p = self.run("dump", str(node.dir), "--raw")
        records = json.loads(p.stdout)
        return [{**rec, "name": name} for name, rec in records.items()]

    def logs(self, node: Node | Path, grep: str | None = None, what: str = "syslog") -> str:
        d = node.dir if isinstance(node, Node) else node
        argv = ["logs", str(d), "--what", what]
        if grep:
            argv += ["--grep", grep]
        return self.run(*argv).stdout

    def mupdatetest(
        self,
        addr: str,
        *commands: str,
        cyrus: bool = False,
        mech: str | None = None,
        bare: bool = False,
        user: str = "admin",
        password: str = "secret",
        timeout: float = 15.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """The tool's MUPDATE client (or with cyrus=True, Cyrus's own `mupdatetest` binary).

        Each command is one full command without tag, e.g. 'FIND "user.x"'."""
        argv = [
            "mupdatetest",
            addr,
            "--user",
            user,
            "--password",
            password,
            "--timeout",
            str(timeout),
        ]
        if bare:
            argv.append("--bare")
        if cyrus:
            argv.append("--cyrus")
            if mech:
                argv += ["-m", mech]
        # one command per argument: the tool splits on blanks only when some argument has one
        cmds = list(commands)
        if len(cmds) == 1 and " " not in cmds[0]:
            cmds = [cmds[0]]
        return self.run(*argv, *cmds, timeout=timeout + 30, check=check)


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> object:
    """Poll `predicate` until it returns something truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        _pause(interval)


class CyrusMasterUnderTest:
    """A Cyrus `mupdate -m` master with the same face as ourmaster.OurMaster.

    Used to validate the interop tests themselves against the reference
    implementation. It offers `PLAIN LOGIN` only, like our master, so Cyrus
    clients negotiate the same mechanism against both."""

    kind = "cyrus"

    def __init__(
        self,
        murder: CyrusMurder,
        *,
        name: str = "cyrus-master",
        servername: str = "mupdate-test",
        admin: str = "admin",
        password: str = "secret",
        mechs: str = "PLAIN LOGIN",
    ) -> None:
        self.murder = murder
        self.name = name
        self.servername = servername
        self.admin = admin
        self.password = password
        self.mechs = mechs
        self.host = HOST
        self.port = murder.free_port()
        self.node: Node | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"Cyrus master {self.servername!r} on {self.address}"

    def start(self, timeout: float = 20.0) -> None:
        if self.node is None:
            self.node = self.murder.master(
                self.name,
                servername=self.servername,
                port=self.port,
                extra=[
                    "--admin",
                    self.admin,
                    "--password",
                    self.password,
                    "--mechs",
                    self.mechs,
                    "--wait",
                    str(timeout),
                ],
            )
        else:
            self.murder.start(self.node)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.node is not None:
            self.murder.stop(self.node, timeout=timeout)
        return None

    def log_tail(self, lines: int = 60) -> str:
        if self.node is None:
            return "(not started)"
        text = self.murder.logs(self.node)
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def workspace(request: pytest.FixtureRequest, prefix: str) -> Iterator[tuple[Path, CyrusMurder]]:
    """A module's node directory and its CyrusMurder; on exit every node is stopped and the
    directory removed, unless one of the module's tests failed (or MUPDATE_INTEROP_KEEP=1)."""
    base = Path(tempfile.mkdtemp(prefix=f"mupdate-interop-{prefix}-", dir="/tmp"))
    murder = CyrusMurder(base)
    failed_before = request.session.testsfailed
    try:
        yield base, murder
    finally:
        murder.stop_all()
        failed = request.session.testsfailed > failed_before
        if os.environ.get("MUPDATE_INTEROP_KEEP") != "1" and not failed:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"node directories kept: {base}")

"""Running ``mupdate-client`` as a subprocess against our master or slave (twistd
subprocesses, ``ourmaster.OurMaster`` / ``ourslave.OurSlave``), for the integration tests of
the operator tools: the command line, the environment with the password variable, one-line
error checks, the text table cut into columns, and bounded line reads from a running
``watch`` (select with a deadline, no sleeps).
"""

from __future__ import annotations

import base64
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from tests.helpers.cyrus import repo_root
from tests.helpers.ourmaster import OurMaster, _env
from tests.helpers.rawmupdate import Entry, MupdateClient

PASSWORD_VAR = "MUPDATE_CLIENT_TEST_PASSWORD"


def login(node: OurMaster) -> MupdateClient:
    c = MupdateClient.connect(node.host, node.port, timeout=20)
    c.authenticate_plain(node.admin, node.password)
    return c


def write(node: OurMaster, *commands: tuple[bytes, ...]) -> None:
    with login(node) as c:
        for verb, *args in commands:
            result = c.command(verb, *args)
            assert result.ok, result.raw


def listing(node: OurMaster) -> list[Entry]:
    with login(node) as c:
        return c.list()


def tool_env(**extra: str) -> dict[str, str]:
    env = _env(repo_root())
    env.pop(PASSWORD_VAR, None)
    env.update(extra)
    return env


def argv(node: OurMaster | None, *args: str, password: bool = True) -> list[str]:
    connection = [] if node is None else ["--server", node.address, "--user", node.admin]
    secret = ["--password-env", PASSWORD_VAR] if password else []
    return [sys.executable, "-m", "mupdate.tools.client", *connection, *secret, *args]


def run_tool(
    node: OurMaster | None, *args: str, password: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        argv(node, *args, password=password),
        cwd=repo_root(),
        env=env if env is not None else tool_env(**{PASSWORD_VAR: "secret"}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in p.stderr, p.stderr
    assert "Traceback" not in p.stdout, p.stdout
    return p


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("mupdate-client: "), p.stderr
    return lines[0]


def columns(lines: list[str]) -> list[tuple[str, str, str, str]]:
    """Rows of an aligned table, cut at the header's column starts."""
    header = lines[0]
    starts = [0, header.index("STATE"), header.index("LOCATION"), header.index("ACL")]
    assert header.split() == ["NAME", "STATE", "LOCATION", "ACL"]
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].rstrip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        assert all(line[s - 2 : s] == "  " for s in starts[1:]), line  # two spaces apart
        rows.append((cells[0], cells[1], cells[2], cells[3]))
    return rows


def b64(value: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(value).decode()}


class LineReader:
    """Bounded line reads from a child's pipe (select + os.read, no sleeps)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.seen: list[str] = []

    def line(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no line within {timeout}s; got {self.seen}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"end of output; got {self.seen} + {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.seen.append(line.decode())
        return self.seen[-1]

    def until(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.01, deadline - time.monotonic()))
            if predicate(line):
                return line


def _default_sigint() -> None:
    # A test run started in the background (nohup, `cmd &`) inherits SIGINT ignored, and
    # Twisted keeps an ignored SIGINT ignored: the watch would never see the test's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_watch(node: OurMaster, *args: str) -> tuple[subprocess.Popen[bytes], LineReader]:
    proc = subprocess.Popen(
        argv(node, "watch", *args),
        preexec_fn=_default_sigint,
        cwd=repo_root(),
        env=tool_env(**{PASSWORD_VAR: "secret"}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, LineReader(proc)


def finish(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert b"Traceback" not in err, err
    return proc.returncode, out.decode(), err.decode()


def status_fields(text: str) -> dict[str, str]:
    """``key: value`` lines of ``mupdate-client status`` as a dict (indented keys kept)."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields

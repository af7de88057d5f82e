"""The README's operator-tool examples ("Operator tools" section), run again and compared.

Every ```text block there holds a session: ```$ COMMAND``` lines, each followed by what
it printed (stdout and stderr as a terminal shows them). This test starts our master
(twistd subprocess) with the list the README's Cyrus backends had made, and replays the
commands in document order in a sandbox directory (``pw``, ``m.conf``, ``be1.json``;
``/var/lib/mupdate*`` moved into it; ``...`` the first command's connection options;
port 3905 the master's), then compares the output line by line. Only timings and the version
are masked. Three commands need more than a shell:

* ``ctl_mboxlist -d > be1.json`` runs on a Cyrus backend: be1.json is the dump it wrote;
* ``watch``: once its header is out, the test sends what Cyrus be2 sent when it created
  user.bob.Sent (RESERVE, then ACTIVATE);
* ``raw`` without a password option: driven through a pseudo-terminal (pexpect), the
  password typed at the prompt, each typed line sent and every other line expected in order.

So an example that no longer matches what the tools print fails here, not in a reader's
terminal. (test_docs_commands.py checks the same commands' options for every document.)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cyrus import repo_root
from tests.helpers.ourmaster import OurMaster, our_master_available
from tests.helpers.toolclient import LineReader, tool_env, write

_WHY_NOT = our_master_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))

README = repo_root() / "README.md"
SECTION = "## Operator tools"
CONNECTION = "--server 127.0.0.1:3905 --user admin --password-file pw"
TOOLS = {"mupdate-client": "client", "mupdate-push": "push", "mupdate-admin": "admin"}
ACL_ALICE = b"alice\tlrswipkxtecdan\t"

#: the master's list when the README's session began (made by Cyrus be1 and be2: IMAP
#: CREATEs, and be1's RENAME of user.alice.Drafts, which left user.alice.Archive at "be1!")
SEED: list[tuple[bytes, ...]] = [
    (b"ACTIVATE", b"shared", b"be1!default", b"anyone\tlrs\t"),
    (b"ACTIVATE", b"shared.news", b"be1!default", b"anyone\tlrs\t"),
    (b"ACTIVATE", b"user.alice", b"be1!default", ACL_ALICE),
    (b"ACTIVATE", b"user.alice.Archive", b"be1!", ACL_ALICE),
    (b"ACTIVATE", b"user.alice.Sent", b"be1!default", ACL_ALICE),
    (b"ACTIVATE", b"user.bob", b"be2!default", b"bob\tlrswipkxtecdan\t"),
]

#: what be2 (Cyrus 3.6) sent the master while creating user.bob.Sent during the watch
WATCH_WRITES: list[tuple[bytes, ...]] = [
    (b"RESERVE", b"user.bob.Sent", b"be2!default"),
    (b"ACTIVATE", b"user.bob.Sent", b"be2!default", b"bob\tlrswipkxtecdan\t"),
]

#: `ctl_mboxlist -d` on be1 (Cyrus 3.6.1), as the README's session used it
BE1_DUMP = """\
{
"shared": {"name": "shared", "mtime": "1795515925", "uidvalidity": "1795515926", "createdmodseq": "1", "foldermodseq": "1", "mbtype": "e", "partition": "default", "acl": {"anyone": "lrs"}, "uniqueid": "rsv0kptwuxeuvuelwj36j62p", "name_history": []},
"shared.news": {"name": "shared.news", "mtime": "1795515925", "uidvalidity": "1795515926", "createdmodseq": "1", "foldermodseq": "1", "mbtype": "e", "partition": "default", "acl": {"anyone": "lrs"}, "uniqueid": "op6t7dl2u5snh2lbcg5qi2ql", "name_history": []},
"user.alice": {"name": "user.alice", "mtime": "1795515925", "uidvalidity": "1795515926", "createdmodseq": "1", "foldermodseq": "1", "mbtype": "e", "partition": "default", "acl": {"alice": "lrswipkxtecdan"}, "uniqueid": "sghboafkyo76q3sn2o3fo8uv", "name_history": []},
"user.alice.Archive": {"name": "user.alice.Archive", "mtime": "1795515925", "uidvalidity": "1795515926", "createdmodseq": "1", "foldermodseq": "2", "mbtype": "e", "partition": "default", "acl": {"alice": "lrswipkxtecdan"}, "uniqueid": "prm5md9sedc4o20y03a2p1tk", "name_history": []},
"user.alice.Drafts": {"name": "user.alice.Drafts", "mtime": "1795515925", "uidvalidity": "1795515926", "createdmodseq": "1", "foldermodseq": "2", "mbtype": "ed", "acl": {}, "uniqueid": "prm5md9sedc4o20y03a2p1tk", "name_history": []},
"user.alice.Sent": {"name": "user.alice.Sent", "mtime": "1795515925", "uidvalidity": "1795515926", "createdmodseq": "1", "foldermodseq": "1", "mbtype": "e", "partition": "default", "acl": {"alice": "lrswipkxtecdan"}, "uniqueid": "fqo5lo4abqguy3cm6rrelm65", "name_history": []}
}
"""


# ---------------------------------------------------------------- the README


@dataclass(frozen=True)
class Example:
    line: int  # in README.md, 1-based
    command: str
    output: list[str]

    @property
    def where(self) -> str:
        return f"README.md:{self.line}: $ {self.command}"


def section_lines() -> list[tuple[int, str]]:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [(i + 1, lines[i]) for i in range(start, end)]


def examples() -> list[Example]:
    """Every ``$ ``-command of the section's output blocks, with the lines after it."""
    found: list[Example] = []
    in_block = False
    for number, line in section_lines():
        if line.startswith("```"):
            in_block = not in_block and line.strip() in ("```", "```text")
            continue
        if not in_block:
            continue
        if line.startswith("$ "):
            found.append(Example(number, line[2:], []))
        elif found:
            found[-1].output.append(line)
    return found


# ---------------------------------------------------------------- the session


class Session:
    """The sandbox the README's commands run in, and how each kind is run."""

    def __init__(self, root: Path, master: OurMaster) -> None:
        self.root, self.master = root, master
        self.cwd = root / "work"
        self.cwd.mkdir()
        (self.cwd / "pw").write_text(master.password + "\n", encoding="utf-8")
        (self.cwd / "pw").chmod(0o600)
        (self.cwd / "m.conf").write_text(master.config_path.read_text(), encoding="utf-8")
        bindir = root / "bin"
        bindir.mkdir()
        for name, module in TOOLS.items():
            wrapper = bindir / name
            command = [sys.executable, "-m", f"mupdate.tools.{module}"]
            wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(command)} "$@"\n')
            wrapper.chmod(0o755)
        self.env = tool_env()
        self.env["PATH"] = f"{bindir}{os.pathsep}{self.env['PATH']}"

    # -- translation between the README and the sandbox

    def command(self, text: str) -> str:
        text = text.replace(" ... ", f" {CONNECTION} ")
        text = text.replace("127.0.0.1:3905", self.master.address)
        return re.sub(r"(?<![\w/])/var/lib/mupdate", f"{self.root}/var/lib/mupdate", text)

    def expected(self, lines: list[str]) -> list[str]:
        return [mask(line.replace("127.0.0.1:3905", self.master.address)) for line in lines]

    def shown(self, text: str) -> list[str]:
        text = text.replace(f"{self.root}/var/lib/mupdate", "/var/lib/mupdate")
        return [mask(line) for line in text.replace("\r\n", "\n").splitlines()]

    # -- running

    def run(self, example: Example) -> list[str]:
        command = self.command(example.command)
        if command.startswith("ctl_mboxlist -d > "):
            (self.cwd / command.split()[-1]).write_text(BE1_DUMP, encoding="utf-8")
            return []
        if " watch " in command:
            return self.watch(command)
        if example.output and example.output[0].startswith("Password for "):
            return self.terminal(command, example)
        done = subprocess.run(
            ["bash", "-c", "exec 2>&1; " + command],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return self.shown(done.stdout)

    def watch(self, command: str) -> list[str]:
        proc = subprocess.Popen(
            ["bash", "-c", "exec 2>&1; exec " + command],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        try:
            header = LineReader(proc).line()
            write(self.master, *WATCH_WRITES)
            rest, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == 0, rest
        return self.shown(header + "\n" + rest.decode())

    def terminal(self, command: str, example: Example) -> list[str]:
        """Typed lines are sent; every other line must come, in order (the terminal echoes
        what is typed, so a typed line is expected before it is answered)."""
        pexpect = pytest.importorskip("pexpect")
        child = pexpect.spawn(
            "bash", ["-c", command], cwd=str(self.cwd), env=self.env, timeout=20, encoding="utf-8"
        )
        seen: list[str] = []
        try:
            for line in self.expected(example.output):
                if line.startswith("Password for "):
                    child.expect_exact(line)
                    child.sendline(self.master.password)
                elif line.startswith(("C: ", "S: ", "mupdate-client: ")):
                    child.expect_exact(line)
                else:
                    child.sendline(line)
                    child.expect_exact(line)  # the echo
                seen.append(line)
            child.expect(pexpect.EOF)
        except pexpect.TIMEOUT:
            raise AssertionError(f"{example.where}: after {seen}, got {child.before!r}") from None
        finally:
            child.close(force=True)
        assert child.exitstatus == 0, f"{example.where}: exit {child.exitstatus}"
        return seen


def mask(line: str) -> str:
    """Timings and the version vary from run to run and release to release."""
    line = re.sub(r"\b\d+(?:\.\d+)? (ms|s)\b", r"N \1", line.rstrip())
    return re.sub(r"^(version: +)\S+$", r"\1V", line)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    master = OurMaster(
        tmp_path / "master",
        servername="mupdate.test",
        extra_config={"configdirectory": str(tmp_path / "var/lib/mupdate")},
    )
    master.start()
    try:
        write(master, *SEED)
        yield Session(tmp_path, master)
    finally:
        master.stop()


# ---------------------------------------------------------------- tests


def test_the_readme_shows_an_example_of_every_tool():
    found = examples()
    commands = [e.command for e in found]
    assert commands[0] == f"mupdate-client {CONNECTION} list"
    for wanted in (
        "mupdate-client ... watch",
        "mupdate-client --server 127.0.0.1:3905 --user admin raw",
        "mupdate-push ... --servername be1 --from-dump be1.json",
        "mupdate-admin --config m.conf export",
        "mupdate-admin --config m.conf import",
        "mupdate-admin --config m.conf verify",
        "mupdate-admin --config m.conf conflicts",
    ):
        assert any(c.startswith(wanted) for c in commands), wanted
    assert all(e.output for e in found if not e.command.startswith("ctl_mboxlist")), found


def test_the_readme_examples_print_what_the_readme_shows(session: Session):
    for example in examples():
        shown = session.run(example)
        assert shown == session.expected(example.output), (
            f"{example.where}\n--- README\n"
            + "\n".join(example.output)
            + "\n--- now\n"
            + "\n".join(shown)
        )

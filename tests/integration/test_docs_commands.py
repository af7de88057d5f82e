"""Every command shown in docs/*.md and README.md is exercised: run, or checked.

Convention for fenced blocks in those files (the first word of the info string is what a
markdown renderer highlights, so readers just see shell):

- ```` ```sh ````: commands an operator types. Each is CHECKED: the program must be known, and
  every option it is given must appear in that program's own help: for our tools
  (mupdate-passwd, mupdate-admin, mupdate-slave-brake, mupdate-client, mupdate-push) the
  argparse ``--help`` of the tool and of the subcommand used (which must exist); for
  ``twistd`` its own options, then the plugin (mupdate-master or mupdate-slave) and the
  plugin's options; for Cyrus's tools (``ctl_mboxlist``) the usage text they print; for
  system programs (openssl, systemctl, journalctl, install, useradd, curl, pip, ...) that the
  program exists here and that their ``--help`` (``openssl SUB -help``) lists the options;
  ``systemctl``/``journalctl -u`` units must exist (ours in etc/, Cyrus's installed).
- ```` ```sh run ````: checked as above, and RUN, in document order, in one sandbox per
  document: ``bash -e -o pipefail`` in a tmp directory, where ``/etc/mupdate``,
  ``/var/lib/mupdate*``, ``/var/backups`` and ``/opt/mupdate`` are rewritten into the tmp
  directory (``/opt/mupdate/bin`` holds this checkout's twistd and tools, and
  ``/opt/mupdate/share/mupdate/etc`` the files of etc/, as an installed package has them) and
  ports 3905, 3906, 9105 and 9106 into free loopback ports. Each block must exit 0.
- ```` ```sh daemon ````: one foreground command (``twistd -n ...``), checked, then started in
  the background in that sandbox; the next block runs once it greets ``* OK MUPDATE`` on the
  port its ``--config`` file's ``mupdate_listen`` names. Daemons are stopped (SIGTERM to the
  process group the test created) when the document ends.
- ```` ```text ```` or no info string: output, config excerpts, file listings: not run; but a
  line starting with ``$ `` in them is a command and is CHECKED like a ```` ```sh ```` line
  (``...`` stands for elided options and is skipped).

Commands in prose: in the documents of ``INLINE_CHECKED`` (the operator's guide), every
inline code span whose first word is a program this test knows (our tools, ``twistd``,
Cyrus's tools, the system programs below, ``kill``) and that gives it arguments is CHECKED
like a ```` ```sh ```` line (``mupdate-push --config /etc/imapd.conf --from-cyrus-db``,
``kill -HUP $(cat /run/cyrus-master.pid)``, ``ctl_mboxlist -d``); a span that is a bare
``mupdate-*`` word must name one of our tools or plugins. Spans may wrap across lines.

Beyond the help texts, every complete command of our tools in a block (no ``...``) is parsed
by the tool's own argparse parser (``PARSE_ONLY``: the real ``main`` runs up to its
``parse_args`` and stops there), so a missing option value, a bad choice or a missing
required option fails too.

Lines of ```` ```sh ```` blocks and inline commands that are safe to run in the sandbox
(``sandbox_runnable``: only our tools and ``curl``, acting on 127.0.0.1 at one of the
sandbox's ports or on files under the sandbox's paths, never on Cyrus, a remote host, a
system service or another user) are RUN there too, in document order between the blocks,
and must exit 0.

Any other info string starting with ``sh`` or naming another shell (bash, console, shell)
fails the test, so a typo cannot silently exempt a block. Shell syntax understood by the
checker: ``\\`` continuations, comments, here-documents (skipped), ``;`` ``&&`` ``||`` ``|``
``&``, subshells, redirections, ``$(...)`` and ``<(...)`` (as one word), ``for ... do ...
done``, leading ``VAR=value``, ``runuser -u USER --`` and ``sudo``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cyrus import HOST, PortAllocator, repo_root

DOCS = sorted(p.relative_to(repo_root()).as_posix() for p in (repo_root() / "docs").glob("*.md"))
DOCS.append("README.md")

TOOLS = {
    "mupdate-passwd": "mupdate.tools.passwd",
    "mupdate-admin": "mupdate.tools.admin",
    "mupdate-slave-brake": "mupdate.tools.brake",
    "mupdate-client": "mupdate.tools.client",
    "mupdate-push": "mupdate.tools.push",
}
PLUGINS = ("mupdate-master", "mupdate-slave")
CYRUS_BIN = Path("/usr/lib/cyrus/bin")
CYRUS_TOOLS = ("ctl_mboxlist",)
#: documents whose inline code spans are checked as commands too
INLINE_CHECKED = ("docs/operators-guide.md",)
#: system programs and how to get the text that lists their options (None: no options used)
SYSTEM_HELP: dict[str, list[str] | None] = {
    "apt-get": ["apt-get", "--help"],
    "cat": ["cat", "--help"],
    "chown": ["chown", "--help"],
    "curl": ["curl", "--help", "all"],
    "diff": ["diff", "--help"],
    "install": ["install", "--help"],
    "journalctl": ["journalctl", "--help"],
    "pip": [sys.executable, "-m", "pip", "install", "--help"],
    "python": ["python3", "--help"],
    "python3": ["python3", "--help"],
    "systemctl": ["systemctl", "--help"],
    "systemd-analyze": ["systemd-analyze", "--help"],
    "useradd": ["useradd", "--help"],
}
BUILTINS = {"cd", "echo", "printf", "test", "true", "umask", "[", "exit"}
SYSTEMCTL_VERBS = {
    "daemon-reload",
    "enable",
    "disable",
    "start",
    "stop",
    "restart",
    "status",
    "reload",
    "edit",
    "cat",
    "is-active",
}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "\n"}
REDIRECTIONS = {">", ">>", "<", "<<", "<<-", "<<<", ">&", "<&", ">|", "&>"}
SANDBOX_PATHS = ("/etc/mupdate", "/var/lib/mupdate", "/var/backups", "/opt/mupdate")
SANDBOX_PORTS = (3905, 3906, 9105, 9106)
RUN_TIMEOUT = 120.0
HELP_TIMEOUT = 60.0


# ------------------------------------------------------------------ markdown


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")


def blocks(doc: str) -> list[Block]:
    lines = (repo_root() / doc).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, info, start = len(match["indent"]), " ".join(match["info"].split()), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i].lstrip())
            i += 1
        assert i < len(lines), f"{doc}:{start + 1}: unclosed code fence"
        found.append(Block(doc, start + 1, info, "\n".join(body) + "\n"))
        i += 1
    return found


def kind_of(block: Block) -> str:
    """sh, run, daemon, or output; anything else is a mistake in the document."""
    known = {"sh": "sh", "sh run": "run", "sh daemon": "daemon", "text": "output", "": "output"}
    if block.info in known:
        return known[block.info]
    raise AssertionError(
        f"{block.where}: unknown code block info string {block.info!r} "
        "(use sh, sh run, sh daemon or text; see test_docs_commands.py)"
    )


# ------------------------------------------------------------------ shell parsing


def logical_lines(script: str) -> list[str]:
    """Lines with continuations joined and here-document bodies dropped."""
    out: list[str] = []
    pending = ""
    heredoc: str | None = None
    for raw in script.splitlines():
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = pending + raw
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        found = re.search(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1", line)
        if found:
            heredoc = found.group(2)
        out.append(line)
    assert not pending, f"unterminated continuation in {script!r}"
    assert heredoc is None, f"unterminated here-document in {script!r}"
    return out


def simple_commands(script: str) -> list[list[str]]:
    """The argv of each simple command, wrappers and redirections removed."""
    commands: list[list[str]] = []
    for line in logical_lines(script):
        line = re.sub(r"\$\([^()]*\)", "SUBSTITUTED", line)
        line = re.sub(r"<\([^()]*\)", "/dev/fd/63", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        current: list[str] = []
        tokens = list(lexer)
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token in SEPARATORS:
                commands.append(current)
                current = []
            elif token in REDIRECTIONS:
                i += 1  # and its target
            else:
                current.append(token)
            i += 1
        commands.append(current)
    return [argv for argv in (_unwrap(c) for c in commands) if argv]


def _unwrap(argv: list[str]) -> list[str]:
    while argv:
        head = argv[0]
        if head in ("do", "then", "else", "time", "exec", "!", "if", "while"):
            argv = argv[1:]
        elif head in ("for", "done", "fi", "esac", "case"):
            return []
        elif re.fullmatch(r"[A-Za-z_]\w*=.*", head):
            argv = argv[1:]
        elif head == "sudo":
            argv = argv[3:] if argv[1:2] == ["-u"] else argv[1:]
        elif head == "runuser":
            rest = argv[1:]
            assert "--" in rest, f"runuser without --: {argv}"
            argv = rest[rest.index("--") + 1 :]
        else:
            return argv
    return argv


# ------------------------------------------------------------------ help texts


def _tool_argv(name: str) -> list[str]:
    installed = Path(sys.executable).parent / name
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-m", TOOLS[name]]


def _twistd_argv() -> list[str]:
    installed = Path(sys.executable).parent / "twistd"
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(repo_root())
    env["PYTHONPATH"] = os.pathsep.join(
        [root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return env


@functools.cache
def help_text(argv: tuple[str, ...]) -> str:
    done = subprocess.run(
        list(argv),
        cwd=repo_root(),
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT,
        check=False,
    )
    return done.stdout + done.stderr


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def _options(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-") and a not in ("-", "--")]


def _check_options(what: str, args: list[str], text: str) -> list[str]:
    problems = []
    for option in _options(args):
        if _mentions(text, option):
            continue
        letters = option[1:]
        if (
            not option.startswith("--")
            and len(letters) > 1
            and all(_mentions(text, f"-{c}") for c in letters)
        ):
            continue  # combined short flags, -fsS
        problems.append(f"{what}: option {option} is not in its help")
    return problems


def _subcommands(text: str) -> set[str]:
    names: set[str] = set()
    for choices in re.findall(r"\{([\w,-]+)\}", text):
        names.update(choices.split(","))
    section = text.split("positional arguments:", 1)[-1].split("options:", 1)[0]
    names.update(re.findall(r"^    ([a-z][\w-]*)(?:\s|$)", section, re.M))
    return names


def check_tool(name: str, args: list[str]) -> list[str]:
    top = help_text((*_tool_argv(name), "--help"))
    if f"usage: {name}" not in top:
        return [f"{name}: --help failed: {top[-300:]}"]
    subs = _subcommands(top)
    text = top
    if subs:
        used = [a for a in args if a in subs]
        if not used:
            return [f"{name} {' '.join(args)}: no subcommand (one of {sorted(subs)})"]
        text += help_text((*_tool_argv(name), used[0], "--help"))
    return _check_options(name, [a for a in args if a != "..."], text)


def check_twistd(args: list[str], plugin_only: bool = False) -> list[str]:
    problems: list[str] = []
    if plugin_only:
        plugin, own, rest = "mupdate-master", [], args
    else:
        positional = [i for i, a in enumerate(args) if not a.startswith("-")]
        if not positional:
            return [f"twistd {' '.join(args)}: no plugin"]
        plugin, own, rest = args[positional[0]], args[: positional[0]], args[positional[0] + 1 :]
        twistd_help = help_text((*_twistd_argv(), "--help"))
        if plugin not in PLUGINS or not re.search(rf"^\s+{plugin}\s", twistd_help, re.M):
            return [f"twistd: plugin {plugin!r} is not one of ours / not listed by twistd --help"]
        problems += _check_options("twistd", own, twistd_help)
    plugin_help = help_text((*_twistd_argv(), plugin, "--help"))
    problems += _check_options(f"twistd {plugin}", rest, plugin_help)
    return problems


def check_cyrus(name: str, args: list[str]) -> list[str]:
    path = CYRUS_BIN / name
    if not path.exists():
        pytest.skip(f"{path} not installed (Cyrus); cannot check {name}")
    usage = help_text((str(path), "-h"))
    return _check_options(name, args, usage)


def _unit_exists(unit: str) -> bool:
    name = unit if unit.endswith(".service") else f"{unit}.service"
    if (repo_root() / "etc" / name).exists():
        return True
    return any(Path(d, name).exists() for d in ("/lib/systemd/system", "/etc/systemd/system"))


def check_system(name: str, argv: list[str]) -> list[str]:
    args = argv[1:]
    if name in BUILTINS:
        return []
    if name == "runuser" or name not in SYSTEM_HELP:
        return [f"{name}: not a program this test knows (add it to SYSTEM_HELP in {__name__})"]
    if argv[0].startswith("/") and not argv[0].startswith("/opt/mupdate/"):
        if not Path(argv[0]).exists():
            return [f"{argv[0]} does not exist here"]
    elif shutil.which(name) is None and name != "pip":
        return [f"{name} is not installed here"]
    problems = _check_options(name, args, help_text(tuple(SYSTEM_HELP[name] or [name])))
    if name == "systemctl":
        verbs = [a for a in args if not a.startswith("-")]
        if not verbs or verbs[0] not in SYSTEMCTL_VERBS:
            problems.append(f"systemctl {' '.join(args)}: unexpected verb")
        else:
            units = [u for u in verbs[1:] if verbs[0] != "daemon-reload"]
            problems += [f"systemctl: no unit {u}" for u in units if not _unit_exists(u)]
    if name == "journalctl" and "-u" in args:
        unit = args[args.index("-u") + 1]
        if not _unit_exists(unit):
            problems.append(f"journalctl: no unit {unit}")
    return problems


def check_openssl(args: list[str]) -> list[str]:
    if not args:
        return ["openssl without a subcommand"]
    usage = help_text(("openssl", args[0], "-help"))
    if "Usage:" not in usage and "usage:" not in usage:
        return [f"openssl {args[0]}: not an openssl subcommand here"]
    return _check_options(f"openssl {args[0]}", args[1:], usage)


def check_command(argv: list[str]) -> list[str]:
    """Problems with one simple command (empty when it is fine)."""
    argv = [a for a in argv if a != "..."]
    program = argv[0]
    name = Path(program).name
    args = argv[1:]
    if name in TOOLS:
        return check_tool(name, args)
    if name == "twistd":
        return check_twistd(args)
    if program in ("./run-master", "./run-tests"):
        if not os.access(repo_root() / program, os.X_OK):
            return [f"{program} is not an executable in the repository"]
        return check_twistd(args, plugin_only=True) if program == "./run-master" else []
    if name in CYRUS_TOOLS:
        return check_cyrus(name, args)
    if name == "openssl":
        return check_openssl(args)
    if name == "kill":
        return check_kill(args)
    return check_system(name, argv)


def check_kill(args: list[str]) -> list[str]:
    """``kill -SIGNAL PID...``: the signal must exist here, and something must be signalled."""
    problems = []
    for option in (a for a in args if a.startswith("-")):
        name = option[1:].upper()
        name = name if name.startswith("SIG") or name.isdigit() else f"SIG{name}"
        if not name.isdigit() and name not in signal.Signals.__members__:
            problems.append(f"kill: {option} is not a signal")
    if not [a for a in args if not a.startswith("-")]:
        problems.append("kill: no process given")
    return problems


def commands_of(block: Block) -> list[list[str]]:
    if kind_of(block) == "output":
        shown = [line[2:] for line in block.text.splitlines() if line.startswith("$ ")]
        return simple_commands("\n".join(shown))
    return simple_commands(block.text)


# ------------------------------------------------------------------ commands in prose


@dataclass(frozen=True)
class Inline:
    doc: str
    line: int  # where the span starts, 1-based
    text: str  # whitespace collapsed (a span may wrap across lines)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line} (inline)"


def _known_program(name: str) -> bool:
    return (
        name in TOOLS
        or name == "twistd"
        or name in CYRUS_TOOLS
        or name in SYSTEM_HELP
        or name == "kill"
    )


def inline_spans(doc: str) -> list[Inline]:
    """Every inline code span outside the fenced blocks."""
    text = (repo_root() / doc).read_text()
    kept: list[str] = []
    fenced = False
    for line in text.split("\n"):
        if _FENCE.match(line) or (fenced and line.strip() == "```"):
            fenced = not fenced
            kept.append("")
        else:
            kept.append("" if fenced else line)
    prose = "\n".join(kept)
    return [
        Inline(doc, prose.count("\n", 0, m.start()) + 1, " ".join(m[1].split()))
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose)
    ]


def inline_commands(doc: str) -> list[tuple[Inline, list[str]]]:
    """The spans that are commands: a known program given at least one argument."""
    found = []
    for span in inline_spans(doc):
        try:
            commands = simple_commands(span.text)
        except ValueError:  # not shell at all (an unbalanced quote in a config excerpt)
            continue
        for argv in commands:
            if len(argv) > 1 and _known_program(Path(argv[0]).name):
                found.append((span, argv))
    return found


def check_tool_names(doc: str) -> list[str]:
    """A bare ``mupdate-*`` word in prose names one of our programs."""
    problems = []
    for span in inline_spans(doc):
        name = span.text
        if re.fullmatch(r"mupdate-[a-z-]+", name) and name not in TOOLS and name not in PLUGINS:
            problems.append(f"{span.where}: {span.text} is neither a tool nor a plugin")
    return problems


#: Runs a tool's ``main`` up to its ``parse_args``: prints "parsed" and exits 0 there, or
#: argparse's own error (exit 2). Nothing the tool does after parsing happens; a parser
#: class with a ``parse_args`` of its own (which would bypass the stop) refuses to run at all.
PARSE_ONLY = """
import argparse, importlib, runpy, sys
def subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)
importlib.import_module(sys.argv[1])
if any("parse_args" in vars(c) for c in subclasses(argparse.ArgumentParser)):
    sys.exit("a parser overrides parse_args: cannot stop it after parsing")
real = argparse.ArgumentParser.parse_args
def parse_only(self, args=None, namespace=None):
    real(self, args, namespace)
    print("parsed")
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_only
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@functools.cache
def parse_problem(name: str, args: tuple[str, ...]) -> str | None:
    done = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY, TOOLS[name], *args],
        cwd=repo_root(),
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT,
        check=False,
    )
    if done.returncode == 0 and done.stdout.strip() == "parsed":
        return None
    return f"{name} {' '.join(args)}: its parser says: {done.stderr.strip().splitlines()[-1:]}"


def check_parse(argv: list[str]) -> list[str]:
    """A complete command of one of our tools, parsed by that tool's parser."""
    name = Path(argv[0]).name
    if name not in TOOLS or "..." in argv:
        return []
    problem = parse_problem(name, tuple(argv[1:]))
    return [problem] if problem else []


#: What each tool must be told so that it acts only on the sandbox (see sandbox_runnable).
_SANDBOX_TARGET = {
    "mupdate-client": ("--server", "--status-url"),
    "mupdate-push": ("--server",),
    "mupdate-admin": ("--config",),
    "mupdate-slave-brake": ("--config",),
    "mupdate-passwd": ("--file",),
}
_LOCAL_ADDRESS = re.compile(
    rf"(?:https?://)?(?:127\.0\.0\.1|localhost):(?:{'|'.join(map(str, SANDBOX_PORTS))})(?:/\S*)?"
)


def _in_sandbox(path: str) -> bool:
    """As Sandbox.translate moves paths: /var/lib/mupdate covers /var/lib/mupdate-slave."""
    return path.startswith(SANDBOX_PATHS)


def sandbox_runnable(line: str) -> bool:
    """Whether one logical shell line is safe to run in the sandbox as written (after its
    paths and ports are moved): every command is one of our tools (or ``curl``) pointed at
    a sandbox port or a sandbox file, every absolute path and redirection is inside the
    sandbox, and nothing is elided, substituted, or run as another user."""
    if "..." in line or "$" in line or "`" in line:
        return False
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return False
    commands: list[list[str]] = [[]]
    for i, token in enumerate(tokens):
        if token in SEPARATORS:
            commands.append([])
        elif token.startswith("/") and not _in_sandbox(token):
            return False
        elif token not in REDIRECTIONS and not (i and tokens[i - 1] in REDIRECTIONS):
            commands[-1].append(token)
    commands = [c for c in commands if c]
    return bool(commands) and all(_runnable_command(argv) for argv in commands)


def _runnable_command(argv: list[str]) -> bool:
    program, name = argv[0], Path(argv[0]).name
    if "/" in program and not program.startswith("/opt/mupdate/bin/"):
        return False
    if name == "curl":
        urls = [a for a in argv[1:] if not a.startswith("-")]
        return bool(urls) and all(_LOCAL_ADDRESS.fullmatch(u) for u in urls)
    if name not in _SANDBOX_TARGET or "--from-cyrus-db" in argv:
        return False  # Cyrus's mailboxes.db is the host's, never the sandbox's
    targets = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in _SANDBOX_TARGET[name]]
    if not targets:
        return False  # it would act on its default (a config or server of this host)
    return all(_in_sandbox(t) or _LOCAL_ADDRESS.fullmatch(t) for t in targets)


def runnable_lines(block: Block) -> list[str]:
    """The lines of a ```sh block that the sandbox runs (see sandbox_runnable)."""
    if kind_of(block) != "sh":
        return []
    return [line for line in logical_lines(block.text) if sandbox_runnable(line)]


# ------------------------------------------------------------------ the sandbox


class Sandbox:
    """Runs ```sh run and ```sh daemon blocks with paths and ports moved (see the docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        allocate = PortAllocator()
        self.ports = {port: allocate() for port in SANDBOX_PORTS}
        self.daemons: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.bin = root / "opt/mupdate/bin"
        self.bin.mkdir(parents=True)
        for name in TOOLS:
            self._wrapper(name, _tool_argv(name))
        self._wrapper("twistd", _twistd_argv())
        self._wrapper("pip", [sys.executable, "-m", "pip"])
        share = root / "opt/mupdate/share/mupdate/etc"
        share.mkdir(parents=True)
        for path in (repo_root() / "etc").iterdir():
            shutil.copy(path, share / path.name)
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.env = _env()
        self.env["PATH"] = f"{self.bin}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONUNBUFFERED"] = "1"

    def _wrapper(self, name: str, argv: list[str]) -> None:
        script = self.bin / name
        script.write_text("#!/bin/sh\nexec " + " ".join(map(shlex.quote, argv)) + ' "$@"\n')
        script.chmod(0o755)

    def translate(self, text: str) -> str:
        paths = "|".join(map(re.escape, SANDBOX_PATHS))
        text = re.sub(rf"(?<![\w/.-])({paths})", lambda m: f"{self.root}{m[1]}", text)
        for port, local in self.ports.items():
            text = re.sub(rf"\b{port}\b", str(local), text)
        return text

    def run(self, block: Block) -> None:
        script = self.root / f"block-{block.line}.sh"
        script.write_text(self.translate(block.text))
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", str(script)],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, (
            f"{block.where}: exited {done.returncode}\n--- script\n{script.read_text()}"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
            + self.daemon_logs()
        )

    def run_line(self, where: str, line: str) -> None:
        """One safe command (sandbox_runnable) from a ```sh block or from the prose."""
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", self.translate(line)],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, (
            f"{where}: exited {done.returncode}\n--- command\n{self.translate(line)}\n"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
            + self.daemon_logs()
        )

    def start(self, block: Block) -> None:
        (argv,) = simple_commands(block.text)
        command = self.translate(shlex.join(argv))
        config = Path(shlex.split(command)[shlex.split(command).index("--config") + 1])
        listen = next(
            line.split(":", 1)[1].split()
            for line in config.read_text().splitlines()
            if line.startswith("mupdate_listen:")
        )
        port = int(listen[0].split(":")[1])
        log = self.root / f"daemon-{block.line}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemons.append((block.where, proc, log))
        deadline = time.monotonic() + 30.0
        while not self._greets(port):
            assert proc.poll() is None, (
                f"{block.where}: exited {proc.returncode}\n{log.read_text()}"
            )
            assert time.monotonic() < deadline, (
                f"{block.where}: no greeting on {port}\n{log.read_text()}"
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)

    @staticmethod
    def _greets(port: int) -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=2.0) as sock:
                sock.settimeout(2.0)
                data = b""  # capability lines, then * OK MUPDATE (a slave: after its sync)
                while not any(line.startswith(b"* OK") for line in data.split(b"\r\n")[:-1]):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
                with contextlib.suppress(OSError):
                    sock.sendall(b"Q01 LOGOUT\r\n")
                return b"\r\n* OK MUPDATE" in b"\r\n" + data
        except OSError:
            return False

    def daemon_logs(self) -> str:
        return "".join(
            f"\n--- daemon {where}\n"
            + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            for where, _, log in self.daemons
        )

    def close(self) -> None:
        for _, proc, _ in reversed(self.daemons):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the session this test created for it
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_is_known_and_uses_real_options(doc):
    problems: list[str] = []
    checked = 0
    for block in blocks(doc):
        for argv in commands_of(block):
            checked += 1
            problems += [f"{block.where}: {p}" for p in check_command(argv)]
            problems += [f"{block.where}: {p}" for p in check_parse(argv)]
    assert checked, f"{doc}: no command found"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", INLINE_CHECKED)
def test_every_command_in_the_prose_is_known_and_uses_real_options(doc):
    problems = check_tool_names(doc)
    commands = inline_commands(doc)
    for span, argv in commands:
        problems += [f"{span.where}: {p}" for p in check_command(argv)]
    shown = {" ".join(argv) for _, argv in commands}
    # The ones the audit found unchecked are among them (the extraction is not vacuous).
    assert {
        "mupdate-push --config /etc/imapd.conf --from-cyrus-db",
        "kill -HUP SUBSTITUTED",
        "ctl_mboxlist -d",
    } <= shown, sorted(shown)
    assert not problems, "\n".join(problems)


def _sandbox_steps(doc: str) -> list[Block | Inline]:
    """Blocks and safe inline commands of one document, in document order."""
    steps: list[Block | Inline] = list(blocks(doc))
    if doc in INLINE_CHECKED:
        for span in inline_spans(doc):
            if sandbox_runnable(span.text) and any(
                _known_program(Path(argv[0]).name) for argv in simple_commands(span.text)
            ):
                steps.append(span)
    return sorted(steps, key=lambda step: step.line)


def _runs_something(doc: str) -> bool:
    return any(kind_of(b) in ("run", "daemon") or runnable_lines(b) for b in blocks(doc))


@pytest.mark.parametrize("doc", [d for d in DOCS if _runs_something(d)])
def test_runnable_blocks_run_in_a_sandbox(doc, tmp_path):
    sandbox = Sandbox(tmp_path)
    lines_run = 0
    try:
        for step in _sandbox_steps(doc):
            if isinstance(step, Inline):
                sandbox.run_line(step.where, step.text)
                lines_run += 1
                continue
            assert isinstance(step, Block)
            kind = kind_of(step)
            if kind == "run":
                sandbox.run(step)
            elif kind == "daemon":
                sandbox.start(step)
            for line in runnable_lines(step):
                sandbox.run_line(step.where, line)
                lines_run += 1
    finally:
        sandbox.close()
    if doc == "docs/operators-guide.md":
        assert lines_run >= 10, "the guide's safe ```sh lines were not found"


def test_the_checker_catches_mistakes():
    """The checks above are not vacuous."""
    assert check_command(["mupdate-client", "--server", "h", "list"]) == []
    assert check_command(["mupdate-client", "--sever", "h", "list"])
    assert check_command(["mupdate-client", "--server", "h", "lst"])
    assert check_command(["mupdate-passwd", "--file", "f", "add", "--bogus", "u"])
    assert check_command(["twistd", "-n", "mupdate-master", "--config", "c"]) == []
    assert check_command(["twistd", "-n", "mupdate-master", "--confg", "c"])
    assert check_command(["twistd", "-n", "mupdate-mastr"])
    assert check_command(["systemctl", "enable", "--now", "mupdate-master"]) == []
    assert check_command(["systemctl", "enable", "mupdate-nothing"])
    assert check_command(["openssl", "req", "-newkey", "rsa:2048"]) == []
    assert check_command(["openssl", "req", "-nweky", "rsa:2048"])
    assert check_command(["frobnicate", "--now"])
    assert simple_commands(
        "a x | b y && c \\\n  z > f # note\ncat <<'EOF'\nnot a command\nEOF\n"
    ) == [["a", "x"], ["b", "y"], ["c", "z"], ["cat"]]
    assert simple_commands("for u in a b; do (umask 077; x $u) ; done") == [
        ["umask", "077"],
        ["x", "$u"],
    ]
    assert simple_commands("runuser -u cyrus -- ctl_mboxlist -m -w") == [
        ["ctl_mboxlist", "-m", "-w"]
    ]
    # the tool's own parser: a value missing, a bad choice, a required option missing
    assert check_parse(["mupdate-client", "--server", "h", "list"]) == []
    assert check_parse(["mupdate-client", "--server"])
    assert check_parse(["mupdate-passwd", "add", "u"])  # --file is required
    assert check_parse(["mupdate-push", "--window", "many", "--from-dump", "f"])
    assert check_parse(["mupdate-admin", "...", "conflicts"]) == []  # elided: help only
    assert check_command(["kill", "-HUP", "SUBSTITUTED"]) == []
    assert check_command(["kill", "-HUPP", "1"])
    # what the sandbox may run as written, and what it must not
    assert sandbox_runnable(
        "/opt/mupdate/bin/mupdate-client --server 127.0.0.1:3906 --user admin "
        "--password-file /etc/mupdate/admin.pw status"
    )
    assert sandbox_runnable("curl -fsS http://127.0.0.1:9105/health")
    assert sandbox_runnable(
        "/opt/mupdate/bin/mupdate-admin --config /etc/mupdate/master.conf export "
        "> /var/backups/mupdate/x.json"
    )
    for unsafe in (
        "mupdate-push --config /etc/imapd.conf --server 127.0.0.1:3906 --from-cyrus-db",
        "mupdate-client --server mupdate.example.test:3905 status",
        "mupdate-client list",  # its default server is this host's
        "runuser -u mupdate -- /opt/mupdate/bin/mupdate-admin --config /etc/mupdate/m.conf",
        "systemctl restart mupdate-master",
        "mupdate-admin --config /etc/mupdate/master.conf export > /root/x.json",
        "kill -HUP $(cat /run/cyrus-master.pid)",
        "/usr/bin/mupdate-client --server 127.0.0.1:3905 status",
    ):
        assert not sandbox_runnable(unsafe), unsafe
    wrapped = [  # in "Recovering a lost master", the span wraps across two lines
        span.line
        for span in inline_spans("docs/operators-guide.md")
        if span.text == "mupdate-push --config /etc/imapd.conf --from-cyrus-db"
    ]
    assert len(wrapped) == 2

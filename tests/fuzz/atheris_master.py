"""A coverage-guided fuzzer for the master's wire layer and connection glue (atheris +
libFuzzer): the long run behind issue 7 item 3, documented in docs/fuzzing.md. NOT run in
CI and not a dependency: ``pip install atheris`` first; without it this script says so and
exits 2. pytest never collects it (the name does not start with ``test_``).

Each input is one byte of mode, then the bytes a client sends:

* mode bit 0: the connection logs in first (else the bytes arrive before login);
* mode bits 1-7: 0 feeds the bytes whole, n > 0 in chunks of n bytes.

and the same invariants as the hypothesis tests are asserted, by the same code:

* ``test_fuzz_wire.run_server``: the server engine, in the state the mode names, gives only
  events, NEED_DATA/PAUSED or a PeerError that renders as one BAD/NO/BYE line, holds no more
  than its limits, and the record is the same whole and chunked;
* ``test_fuzz_wire.run_client``: the client engine gives only events or BadResponse;
* ``test_fuzz_live.check_live_input``: a real master in memory answers every command and
  error in order, logs nothing at error level, lets nothing escape ``dataReceived``, keeps
  other sessions working and changes the store only through well-formed writes.

A broken invariant raises; libFuzzer then writes the input to ``crash-<sha1>`` and stops.

Usage, from the repository root (a corpus directory that does not exist is created and
seeded, with its libFuzzer dictionary beside it; libFuzzer flags may be added and override
the defaults in ``DEFAULT_FLAGS``)::

    MUPDATE_FUZZ_SECONDS=600 .venv/bin/python3 tests/fuzz/atheris_master.py fuzz-corpus
    .venv/bin/python3 tests/fuzz/atheris_master.py crash-<sha1>     # replay one input
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

try:
    import atheris
except ImportError:  # optional: never a dependency of the project
    atheris = None

if atheris is not None:
    with atheris.instrument_imports(include=["mupdate"]):
        import mupdate.master.service
        import mupdate.net.server
        import mupdate.protocol  # noqa: F401

import strategies  # noqa: E402
import test_fuzz_live  # noqa: E402
import test_fuzz_wire  # noqa: E402

WORKDIR = Path(tempfile.mkdtemp(prefix="mupdate-atheris-"))
STATS = {"inputs": 0, "commands": 0, "errors": 0, "writes": 0, "closed": 0}


def _chunks(body: bytes, size: int) -> list[bytes]:
    """``body`` in chunks of ``size`` bytes, at most 256 of them (a 200 KB literal fed
    byte by byte would spend the run in dataReceived calls)."""
    if size == 0 or not body:
        return [body] if body else []
    size = max(size, -(-len(body) // 256))
    return [body[i : i + size] for i in range(0, len(body), size)]


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    logged_in = bool(mode & 1)
    chunks = _chunks(body, mode >> 1)
    STATS["inputs"] += 1

    setup = test_fuzz_wire.SETUPS[mode % len(test_fuzz_wire.SETUPS)]
    limits = test_fuzz_wire.DEFAULT if mode & 2 else test_fuzz_wire.SMALL
    whole = test_fuzz_wire.run_server(setup, limits, [body], auth_ok=bool(mode & 4))
    parts = test_fuzz_wire.run_server(setup, limits, chunks or [b""], auth_ok=bool(mode & 4))
    if not whole.starttls:
        assert parts.record == whole.record
    test_fuzz_wire.run_client(test_fuzz_wire.MODES[mode % 4], limits, chunks)

    result = test_fuzz_live.check_live_input(WORKDIR, chunks, logged_in=logged_in)
    STATS["commands"] += result.commands
    STATS["errors"] += result.errors
    STATS["writes"] += result.writes
    STATS["closed"] += result.closed
    if STATS["inputs"] % 1000 == 0:
        _report()  # libFuzzer ends the process without running atexit handlers


SEEDS = [
    b"\x00T1 NOOP\r\n",
    b'\x01T1 NOOP\r\nT2 FIND "user.alice"\r\nT3 LIST\r\n',
    b'\x01T1 ACTIVATE {8+}\r\nuser.new {11+}\r\nbe1!default ""\r\nT2 DELETE "user.bob"\r\n',
    b'\x01T1 RESERVE "user.x" "be1!default"\r\nT2 DEACTIVATE "user.alice" "be1!default"\r\n',
    b'\x01U1 UPDATE\r\nT2 NOOP\r\nT3 FIND "x"\r\n',
    b"\x03T1 FIND {5}\r\nabcde\r\n",
    b'\x00A01 AUTHENTICATE "PLAIN"\r\n' + strategies.ADMIN_PLAIN_IR + b"\r\nT1 NOOP\r\n",
    b'\x00A01 AUTHENTICATE "LOGIN"\r\nYWRtaW4=\r\nc2VjcmV0\r\n',
    b'\x00A01 AUTHENTICATE "SCRAM-SHA-256" "bixuPWFkbWluLHI9eA=="\r\nYz1iaXdzLHI9eCxwPUFBQUE=\r\n',
    b"\x00" + b"a" * strategies.HUGE + b" NOOP\r\n",
    b'\x01T1 FIND "' + b"q" * strategies.HUGE + b'"\r\n',
    b"\x01T1 FIND {200000+}\r\n" + b"l" * 200_000 + b"\r\nT2 NOOP\r\n",
    b"\x01T1 FIND {99999999999}\r\nT2 NOOP\r\n",
    b"\x01T1 FIND {99999999999+}\r\n",
    b'\x01T\0 NOOP\r\nT1 FIND "a\0b"\r\nT2 FIND {3+}\r\na\0b\r\n',
    b"\x01T1 NOOP\nT2 NOOP\rT3 NOOP\r\n",
]
DICTIONARY = [
    *(w for w in strategies.COMMAND_WORDS if w),
    b"\r\n",
    b"{0}",
    b"{1+}",
    b"+}",
    b'"',
    b"\\",
    b"\0",
    b"* ",
    b"PLAIN",
    b"SCRAM-SHA-256",
    b"be1!default",
    b"user.alice",
    strategies.ADMIN_PLAIN_IR,
]


def _dict_entry(token: bytes) -> str:
    """One libFuzzer dictionary line: printable ASCII as is, the rest as \\xNN."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02X}" for b in token)
    return f'"{text}"'


def seed_corpus(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(SEEDS):
        (directory / f"seed-{index:02d}").write_bytes(seed)
    lines = [_dict_entry(token) for token in DICTIONARY]
    directory.with_suffix(".dict").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(SEEDS)} seeds to {directory} and {directory.with_suffix('.dict')}")


def _report() -> None:
    print(
        "mupdate atheris: {inputs} inputs, {commands} commands, {errors} protocol errors, "
        "{writes} writes, {closed} connections closed by the server".format(**STATS),
        file=sys.stderr,
    )


DEFAULT_FLAGS = {
    "-max_len": "300000",
    "-timeout": "30",
    "-rss_limit_mb": "4096",
    "-print_final_stats": "1",
}


def libfuzzer_argv(argv: list[str]) -> list[str]:
    """``argv`` plus our defaults for the flags it does not set. A corpus directory that
    does not exist yet is created and seeded; its dictionary sits beside it (``.dict``).
    ``MUPDATE_FUZZ_SECONDS`` (default 300) bounds a corpus run; replaying files runs once."""
    given = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("-")}
    paths = [Path(arg) for arg in argv[1:] if not arg.startswith("-")]
    corpus = [p for p in paths if p.is_dir() or not p.exists()]
    flags = dict(DEFAULT_FLAGS)
    if corpus:
        if not corpus[0].exists():
            seed_corpus(corpus[0])
        flags["-dict"] = str(corpus[0].with_suffix(".dict"))
        flags["-max_total_time"] = os.environ.get("MUPDATE_FUZZ_SECONDS", "300")
    extra = [f"{flag}={value}" for flag, value in flags.items() if flag not in given]
    return [argv[0], *extra, *argv[1:]]


def main() -> int:
    if atheris is None:
        print("atheris is not installed: pip install atheris (docs/fuzzing.md)", file=sys.stderr)
        return 2
    atexit.register(_report)
    atheris.Setup(libfuzzer_argv(sys.argv), one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

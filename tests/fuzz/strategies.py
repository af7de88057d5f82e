"""Hypothesis strategies for MUPDATE-shaped bad input (issue 7 item 3; style.md §11).

Random bytes alone almost never get past the tag, so the inputs here are built from what a
client could plausibly send, then broken: valid commands (every command word, strings quoted
and as ``{n}``/``{n+}`` literals) with mutations applied, literal headers with wrong, huge
and overflowing lengths, quoted strings with odd escapes, NUL bytes, bare CR and LF,
AUTHENTICATE exchanges with garbage SASL lines, and the tokens that kill Cyrus's process
(protocol doc §2.7): tags, quoted strings and literals past 128 KiB.

Shared by ``test_fuzz_wire.py`` (the engines), ``test_fuzz_live.py`` (a master in memory)
and ``atheris_master.py`` (the long run). ``MUPDATE_FUZZ_SCALE=N`` in the environment
multiplies every test's example count and turns derandomization off (a longer, different
run each time, docs/fuzzing.md); CI runs the default, derandomized, so a failure there
reproduces exactly.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mupdate.protocol import (
    Activate,
    Authenticate,
    Command,
    Deactivate,
    Delete,
    Find,
    List,
    Logout,
    Noop,
    Reserve,
    Update,
    render_command,
)

__all__ = [
    "ADMIN_PLAIN_IR",
    "COMMAND_WORDS",
    "HUGE",
    "SEED_NAMES",
    "big_inputs",
    "chunk_cuts",
    "chunked",
    "fuzz_settings",
    "mupdate_inputs",
    "server_lines",
]

SCALE = max(1, int(os.environ.get("MUPDATE_FUZZ_SCALE", "1")))
HUGE = 140_000  # the size Cyrus 3.6.1 died on (§2.7, §14 case 27): over maxword/maxquoted


def fuzz_settings(examples: int, deadline_s: float = 5.0) -> settings:
    """Bounded, derandomized, no example database: the same inputs on every CI run."""
    return settings(
        max_examples=examples * SCALE,
        deadline=timedelta(seconds=deadline_s),
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
        print_blob=True,
    )


ADMIN_PLAIN_IR = base64.b64encode(b"\0admin\0secret")  # tests/helpers/glue.py's admin
COMMAND_WORDS = [
    b"AUTHENTICATE",
    b"STARTTLS",
    b"COMPRESS",
    b"LOGOUT",
    b"NOOP",
    b"FIND",
    b"LIST",
    b"UPDATE",
    b"RESERVE",
    b"ACTIVATE",
    b"DEACTIVATE",
    b"DELETE",
    b"noop",
    b"fInD",
    b"AXYZ",
    b"DFOO",
    b"LFOO",
    b"QXYZ",
    b"",
]
#: Names the live tests seed the store with, so writes and FINDs can hit something.
SEED_NAMES = [b"user.alice", b"user.bob", b"shared.x", b"user.caf\xc3\xa9"]
LOCATIONS = [b"be1!default", b"be2!default", b"be1", b"", b"!", b"be1!default\0"]

# ----------------------------------------------------------------------- pieces

tags = st.one_of(
    st.sampled_from([b"T1", b"A01", b"X0", b"U01", b"*", b"+", b"a.b", b"T\0", b"", b"(", b'"']),
    st.binary(min_size=1, max_size=6),
)
names = st.one_of(
    st.sampled_from([*SEED_NAMES, b"", b"user.new", b'user.q"x\\y', b"a\r\nb", b"x" * 1025]),
    st.binary(max_size=12),
)
locations = st.one_of(st.sampled_from(LOCATIONS), st.binary(max_size=8))
acls = st.one_of(
    st.sampled_from([b"", b"admin\tlrswipkxtecda\t", b"anyone rls"]), st.binary(max_size=8)
)


def _plain_ir(authz: bytes, user: bytes, password: bytes) -> bytes:
    return base64.b64encode(authz + b"\0" + user + b"\0" + password)


mechanisms = st.sampled_from(
    [
        b"PLAIN",
        b"plain",
        b"LOGIN",
        b"SCRAM-SHA-1",
        b"SCRAM-SHA-256",
        b"SCRAM-SHA-256-PLUS",
        b"EXTERNAL",
        b"CRAM-MD5",
        b"",
        b"P\x00AIN",
        b"\xff",
    ]
)
sasl_payloads = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"n,,n=admin,r=abc",
            b"n,,n=admin,r=",
            b"y,,n=ad=2Cmin,r=x",
            b"p=tls-server-end-point,,n=admin,r=x",
            b"n,a=,n=admin,r=x",
            b"n,a=adm=ZZin,n=admin,r=x",
            b"n,,n=\xef\xbf\xbf,r=x",
            b"n,,n=\xe2\x80\x8b,r=x",  # SASLprep maps this to nothing
            b"n,,n=\xd8\xa7a,r=x",  # bidi rule violation
            b"c=biws,r=abc,p=AAAA",
            b"c=biws,r=abc,m=x,p=AAAA",
            b"\0admin\0secret",
            b"\0admin\0wrong",
            b"\0joe\0joepass",
            b"admin",
            b"\0\0",
        ]
    ),
)
sasl_lines = st.one_of(
    sasl_payloads.map(base64.b64encode),
    st.sampled_from([b"", b"*", b"=", b"====", b"!!!", b"AAAA\r", b"x" * 21_849]),
    st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
)


def _command(draw: st.DrawFn) -> Command:
    tag = draw(st.sampled_from([b"T1", b"A01", b"X0", b"U01", b"*", b"+", b"a.b", b"\xff"]))
    kind = draw(st.integers(0, 10))
    if kind == 0:
        ir = draw(st.none() | sasl_payloads.map(base64.b64encode) | st.just(b"="))
        return Authenticate(tag, draw(mechanisms).replace(b"\0", b""), ir)
    if kind == 1:
        return Find(tag, draw(names))
    if kind == 2:
        return List(tag, draw(st.none() | names))
    if kind == 3:
        hosts = draw(st.lists(locations.filter(bool), max_size=4))
        return Update(tag, tuple(hosts))
    if kind == 4:
        return Reserve(tag, draw(names), draw(locations))
    if kind == 5:
        return Activate(tag, draw(names), draw(locations), draw(acls))
    if kind == 6:
        return Deactivate(tag, draw(names), draw(locations))
    if kind == 7:
        return Delete(tag, draw(names))
    if kind == 8:
        return Logout(tag)
    return Noop(tag)


def _strip_nul(command: Command) -> Command:
    """Our client refuses to render NUL (§2.6) or an empty UPDATE host; the mutations
    below put those back on the wire."""
    changes: dict[str, object] = {}
    for field in dataclasses.fields(command):
        value = getattr(command, field.name)
        if isinstance(value, bytes):
            changes[field.name] = value.replace(b"\0", b"")
        elif field.name == "hosts":
            changes[field.name] = tuple(h.replace(b"\0", b"") or b"h" for h in value)
    return dataclasses.replace(command, **changes)


@st.composite
def rendered_commands(draw: st.DrawFn) -> bytes:
    """A well-formed command line as our client renders it (quoted or ``{n+}``), sometimes
    with ``{n+}`` turned into synchronising ``{n}`` or every string forced into a literal."""
    wire = render_command(_strip_nul(_command(draw)))
    style = draw(st.integers(0, 3))
    if style == 1:
        wire = wire.replace(b"+}\r\n", b"}\r\n")
    elif style == 2:
        wire = wire.replace(b"\r\n", b"\n")
    return wire


literal_headers = st.one_of(
    st.sampled_from(
        [
            b"{0}",
            b"{0+}",
            b"{5}",
            b"{3+}",
            b"{131072+}",
            b"{131073+}",
            b"{200000}",
            b"{200000+}",
            b"{1048577+}",
            b"{99999999999}",
            b"{99999999999+}",
            b"{4294967296+}",
            b"{18446744073709551616}",
            b"{" + b"9" * 40 + b"+}",
            b"{-1}",
            b"{ 5}",
            b"{5+ }",
            b"{5++}",
            b"{+}",
            b"{}",
            b"{0x10}",
            b"{\xd9\xa3}",  # ARABIC-INDIC DIGIT THREE: not an ASCII digit
        ]
    ),
    st.builds(
        lambda n, plus: b"{%d%s}" % (n, b"+" if plus else b""), st.integers(0, 80), st.booleans()
    ),
)


@st.composite
def literals(draw: st.DrawFn) -> bytes:
    """A literal header, its line end, and data whose length may or may not match."""
    header = draw(literal_headers)
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""]))
    data = draw(st.binary(max_size=20) | st.sampled_from([b"abc", b"a\0b", b"a\r\nbc", b""]))
    return header + end + data


quoted = st.one_of(
    st.sampled_from(
        [
            b'""',
            b'"user.alice"',
            b'"\\"',
            b'"\\\\"',
            b'"a\\"b"',
            b'"\\x"',
            b'"\\',
            b'"a\0b"',
            b'"a\rb"',
            b'"a\nb"',
            b'"unterminated',
            b'"\xff\xfe"',
            b'"\t"',
        ]
    ),
    st.binary(max_size=10).map(lambda b: b'"' + b + b'"'),
)
FRAGMENTS = [
    b" ",
    b"  ",
    b"\t",
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\r\n",
    b"\0",
    b"(",
    b")",
    b"{",
    b"}",
    b"\\",
    b"*\r\n",
    b"+ go ahead\r\n",
    b'A01 AUTHENTICATE "PLAIN"\r\n',
    b'A01 AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n' % (len(ADMIN_PLAIN_IR), ADMIN_PLAIN_IR),
    b'A01 AUTHENTICATE "PLAIN" "' + ADMIN_PLAIN_IR + b'"\r\n',
    b'A02 AUTHENTICATE "LOGIN"\r\n',
    b'A03 AUTHENTICATE "SCRAM-SHA-256"\r\n',
    b"S01 STARTTLS\r\n",
    b'Z01 COMPRESS "DEFLATE"\r\n',
    b"U01 UPDATE\r\n",
    b"Q01 LOGOUT\r\n",
]
words = st.sampled_from(COMMAND_WORDS)
arguments = st.one_of(
    quoted,
    literals(),
    names.map(lambda n: b'"' + n.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'),
    st.sampled_from([b"PLAIN", b"user.alice", b"()", b"NIL", b"", b"*"]),
)


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    """``tag SP word (SP argument)* EOL``, each part drawn from its own odd alphabet: the
    shape that reaches the argument parsers and the literal paths."""
    parts = [draw(tags), draw(words)]
    parts += draw(st.lists(arguments, max_size=4))
    separator = draw(st.sampled_from([b" ", b" ", b" ", b"  ", b"\t", b""]))
    return separator.join(parts) + draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""]))


piece = st.one_of(
    rendered_commands(),
    command_lines(),
    command_lines(),
    words,
    tags,
    quoted,
    literals(),
    sasl_lines.map(lambda line: line + b"\r\n"),
    st.sampled_from(FRAGMENTS),
    st.binary(max_size=12),
)

# --------------------------------------------------------------------- mutations


@st.composite
def _mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 6))
        at = draw(st.integers(0, len(data)))
        if op == 0 and data:  # delete a range
            del data[at : at + draw(st.integers(1, 8))]
        elif op == 1:  # insert a piece
            data[at:at] = draw(st.sampled_from(FRAGMENTS) | st.binary(min_size=1, max_size=3))
        elif op == 2 and at < len(data):  # overwrite one byte
            data[at] = draw(st.sampled_from([0, 10, 13, 32, 34, 92, 123, 125, 255]))
        elif op == 3:  # duplicate a range (pipelining, repeated literals)
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
        elif op == 4:  # bare LF / bare CR endings
            data[:] = data.replace(b"\r\n", draw(st.sampled_from([b"\n", b"\r", b"\n\r"])))
        elif op == 5:  # truncate (a command cut short, mid-literal)
            del data[at:]
        elif op == 6:  # a literal's declared length off by a little
            start = data.find(b"{", at)
            stop = data.find(b"}", start)
            if 0 <= start < stop:
                digits = bytes(data[start + 1 : stop]).rstrip(b"+")
                if digits.isdigit():
                    new = b"%d" % max(0, int(digits) + draw(st.integers(-3, 3)))
                    data[start + 1 : start + 1 + len(digits)] = new
    return bytes(data)


def mupdate_inputs(max_pieces: int = 12) -> st.SearchStrategy[bytes]:
    """A byte stream of MUPDATE-shaped pieces, each maybe broken, pipelined together."""
    return st.lists(st.one_of(piece, _mutated(rendered_commands())), max_size=max_pieces).map(
        b"".join
    ) | _mutated(st.lists(piece, max_size=max_pieces).map(b"".join))


# ------------------------------------------------------------------- big tokens


def _big(kind: int, size: int, filler: bytes) -> bytes:
    body = filler * size
    return [
        body + b" NOOP\r\n",  # a tag past maxword
        b'T1 FIND "' + body + b'"\r\n',  # a quoted string past maxquoted
        b"T1 FIND {%d+}\r\n" % size + body + b"\r\n",  # a literal past the limit
        b"T1 FIND {%d}\r\n" % size + body + b"\r\n",  # the same, synchronising
        b'A01 AUTHENTICATE "' + body + b'"\r\n',  # the same, reachable before login
        b'A01 AUTHENTICATE "PLAIN" {%d+}\r\n' % size + body + b"\r\n",
        b"T1 " + body + b"\r\n",  # a command word past maxword
        body,  # no line end at all
        b"T1 ACTIVATE {%d+}\r\n" % size + body + b" {%d+}\r\n" % size + body + b' ""\r\n',
    ][kind]


big_pieces = st.builds(
    _big,
    st.integers(0, 8),
    st.sampled_from([65_535, 65_536, 65_537, 131_072, 131_073, HUGE, 1_048_577]),
    st.sampled_from([b"a", b"\0", b"\xff", b" ", b"\r", b"{", b"\\"]),
)


def big_inputs() -> st.SearchStrategy[bytes]:
    """One of Cyrus's fatal sizes, surrounded by ordinary (possibly broken) input."""
    small = mupdate_inputs(max_pieces=3)
    return st.tuples(small, big_pieces, small).map(b"".join)


# ------------------------------------------------------------------------ chunks


def chunk_cuts() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 2_000_000), max_size=12)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (modulo its length), never an empty chunk."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# ------------------------------------------------------------ server-side lines


server_lines = st.one_of(
    st.sampled_from(
        [
            b'* AUTH "PLAIN" "SCRAM-SHA-256"\r\n',
            b"* STARTTLS\r\n",
            b'* OK MUPDATE "m" "i" "v" "(master)"\r\n',
            b'* BYE "Server Unable"\r\n\0',
            b'X0 OK "done"\r\n',
            b"X0 OK done\r\n",
            b"X0 NO {3+}\r\nabc\r\n",
            b"X0 BAD {3}\r\nabc\r\n",
            b'U01 MAILBOX "a" "b" "c"\r\n',
            b'U01 MAILBOX {1+}\r\na {1}\r\nb ""\r\n',
            b'U01 RESERVE "a" "b"\r\n',
            b'U01 DELETE "a"\r\n',
            b"U01 DELETE {99999999999+}\r\n",
            b"U01 DELETE {200000+}\r\n",
            b'A01 OK "Authenticated"\r\n',
            b"A01 NO Client canceled authentication\r\n",
            b"S01 OK Begin TLS negotiation now\r\n",
            b"cj1hYmM=\r\n",
            b"\r\n",
            b"+ go ahead\r\n",
        ]
    ),
    literals(),
    quoted,
    tags,
    st.binary(max_size=12),
)


def server_inputs() -> st.SearchStrategy[bytes]:
    return _mutated(st.lists(server_lines, max_size=10).map(b"".join))

"""Every (state, command) pair of the server engine: it moves, or gives its documented text
(protocol doc §2.8, §4, §5). The expectations are written out here, not derived from the
engine's table."""

from __future__ import annotations

import pytest
from protocol_helpers import Reply, both_ways

from mupdate.protocol import (
    NEED_DATA,
    PAUSED,
    Activate,
    Authenticate,
    Command,
    Compress,
    Deactivate,
    Delete,
    Find,
    List,
    Logout,
    Noop,
    Reserve,
    SaslResponse,
    ServerState,
    Starttls,
    Update,
)
from mupdate.protocol.server import TABLE

S = ServerState
LINES: dict[str, tuple[bytes, Command]] = {
    "AUTHENTICATE": (b'T AUTHENTICATE "PLAIN"', Authenticate(b"T", b"PLAIN")),
    "STARTTLS": (b"T STARTTLS", Starttls(b"T")),
    "COMPRESS": (b'T COMPRESS "DEFLATE"', Compress(b"T", b"DEFLATE")),
    "LOGOUT": (b"T LOGOUT", Logout(b"T")),
    "NOOP": (b"T NOOP", Noop(b"T")),
    "FIND": (b'T FIND "user.a"', Find(b"T", b"user.a")),
    "LIST": (b'T LIST "be1!"', List(b"T", b"be1!")),
    "UPDATE": (b'T UPDATE "be1"', Update(b"T", (b"be1",))),
    "RESERVE": (b'T RESERVE "user.a" "be1!p"', Reserve(b"T", b"user.a", b"be1!p")),
    "ACTIVATE": (
        b'T ACTIVATE "user.a" "be1!p" "a\tlrs\t"',
        Activate(b"T", b"user.a", b"be1!p", b"a\tlrs\t"),
    ),
    "DEACTIVATE": (b'T DEACTIVATE "user.a" "be1!p"', Deactivate(b"T", b"user.a", b"be1!p")),
    "DELETE": (b'T DELETE "user.a"', Delete(b"T", b"user.a")),
}
WRITES = ("RESERVE", "ACTIVATE", "DEACTIVATE", "DELETE")

# (state, word) -> next state (the command is returned) or (text, quoted) for a BAD.
Expect = S | tuple[bytes, bool]
LOGIN = (b"Please login first", True)
AGAIN = (b"already authenticated", True)
NO_TLS = (b"Can't Starttls after authentication", False)
STREAM = (b"not legal when streaming", True)
MASTER: dict[tuple[S, str], Expect] = {
    (S.NOT_AUTHENTICATED, "AUTHENTICATE"): S.AUTHENTICATING,
    (S.NOT_AUTHENTICATED, "STARTTLS"): S.TLS_NEGOTIATING,
    (S.NOT_AUTHENTICATED, "COMPRESS"): S.NOT_AUTHENTICATED,
    (S.NOT_AUTHENTICATED, "LOGOUT"): S.CLOSED,
    **{(S.NOT_AUTHENTICATED, w): LOGIN for w in list(LINES)[4:]},
    (S.AUTHENTICATED, "AUTHENTICATE"): AGAIN,
    (S.AUTHENTICATED, "STARTTLS"): NO_TLS,
    (S.AUTHENTICATED, "COMPRESS"): S.AUTHENTICATED,
    (S.AUTHENTICATED, "LOGOUT"): S.CLOSED,
    (S.AUTHENTICATED, "NOOP"): S.AUTHENTICATED,
    (S.AUTHENTICATED, "FIND"): S.AUTHENTICATED,
    (S.AUTHENTICATED, "LIST"): S.AUTHENTICATED,
    (S.AUTHENTICATED, "UPDATE"): S.STREAMING,
    **{(S.AUTHENTICATED, w): S.AUTHENTICATED for w in WRITES},
    (S.STREAMING, "AUTHENTICATE"): AGAIN,
    (S.STREAMING, "STARTTLS"): NO_TLS,
    (S.STREAMING, "COMPRESS"): S.STREAMING,
    (S.STREAMING, "LOGOUT"): S.CLOSED,
    (S.STREAMING, "NOOP"): S.STREAMING,
    **{(S.STREAMING, w): STREAM for w in ("FIND", "LIST", "UPDATE", *WRITES)},
}
SLAVE = {**MASTER, **{(S.AUTHENTICATED, w): (b"read-only session", True) for w in WRITES}}

PAIRS = [(state, word) for state in S for word in LINES]


@pytest.mark.parametrize("read_only", [False, True], ids=["master", "slave"])
@pytest.mark.parametrize(("state", "word"), PAIRS, ids=[f"{s.name}-{w}" for s, w in PAIRS])
def test_state_command_pair(state: S, word: str, read_only: bool) -> None:
    line, command = LINES[word]
    events, sentinel, server = both_ways(
        state, line + b"\r\n", read_only=read_only, starttls_available=True
    )
    if state is S.AUTHENTICATING:
        assert events == [SaslResponse(line)]
        assert server.state is state
        return
    if state in (S.TLS_NEGOTIATING, S.CLOSED):
        assert (events, sentinel, server.state) == ([], PAUSED, state)
        return
    expected = (SLAVE if read_only else MASTER)[(state, word)]
    if isinstance(expected, S):
        assert events == [command]
        assert server.state is expected
        paused = expected in (S.TLS_NEGOTIATING, S.CLOSED)
        assert sentinel is (PAUSED if paused else NEED_DATA)
    else:
        text, quoted = expected
        wire = b'T BAD "' + text + b'"\r\n' if quoted else b"T BAD " + text + b"\r\n"
        assert events == [Reply(wire, False)]
        assert server.state is state


def test_engine_table_covers_every_parsing_state_and_command() -> None:
    commands = {type(command) for _, command in LINES.values()}
    states = (S.NOT_AUTHENTICATED, S.AUTHENTICATED, S.STREAMING)
    assert {(s, c) for s in states for c in commands} == set(TABLE)


@pytest.mark.parametrize("word", list(LINES))
@pytest.mark.parametrize("state", [S.NOT_AUTHENTICATED, S.AUTHENTICATED, S.STREAMING])
def test_command_words_are_case_insensitive(state: S, word: str) -> None:
    line, _ = LINES[word]
    rest = line[2 + len(word) :]
    upper, _, _ = both_ways(state, line + b"\r\n", starttls_available=True)
    for spelling in (word.lower(), word.capitalize(), word[0] + word[1:].lower()):
        events, _, _ = both_ways(
            state, b"T " + spelling.encode() + rest + b"\r\n", starttls_available=True
        )
        assert events == upper

"""ServerConnection: the sans-I/O MUPDATE server engine (protocol doc §2.8, §4, §5; RFC 3656).

Imports nothing from Twisted; no clock, no logging, no I/O.
"""

# How it works
# ------------
# The glue feeds bytes with receive_data() and drains next_event() until NEED_DATA or
# PAUSED, writing data_to_send() after each call and the bytes of send(response) for each
# reply. Frames come from buffer.ReceiveBuffer (lines, literals, limits); this module turns a
# frame into a command in three steps, each table-driven, exactly in Cyrus's order:
#
#   1. tag, then the command word; the word's first letter selects a row of _DISPATCH,
#      which says which names need no login and which sit behind the login check (§2.8);
#   2. the command's arguments (_PARSERS), giving Missing/Extra/Badly formed arguments;
#   3. the (state, command) pair in _TABLE: accept (maybe moving state) or refuse with the
#      documented text. Guards outside the table: STARTTLS under TLS, writes on a slave.
#
# Any refusal is a PeerError carrying the Done/Bye to send; the rest of the command is
# already consumed, so parsing continues with the next line unless close is set.
#
# Modes: after an Authenticate event every line is a SaslResponse until the glue calls
# authentication_succeeded/failed; bytes already buffered are parsed afterwards, in order,
# exactly once (the Cyrus bug in design.md). After a Starttls event the buffered plaintext is
# dropped and next_event returns PAUSED until tls_started() (§5.2). After Logout, EOF, or
# an error with close=True the state is CLOSED: PAUSED for ever, input ignored.
#
# A synchronising {n} gets "+ go ahead" only if the command is well-formed up to the
# literal (the frame is parsed in partial mode first); otherwise the error is sent and the
# command ends there, so the client's next line is a command again (Cyrus swallows it).
#
# Leniency: AUTHENTICATE accepts the mechanism as an atom (§2.4, §14 case 35); Cyrus answers
# "Extra arguments". A literal header followed by a bare LF is accepted (buffer.py).

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from enum import Enum
from typing import Final

from mupdate.protocol import commands as c
from mupdate.protocol import texts
from mupdate.protocol.buffer import (
    NEED_DATA,
    PAUSED,
    Frame,
    LineTooLong,
    ReceiveBuffer,
    Sentinel,
    SyncLiteral,
)
from mupdate.protocol.errors import LocalProtocolError, PeerError
from mupdate.protocol.limits import ProtocolLimits
from mupdate.protocol.responses import Bye, Done, GoAhead, Response, Status
from mupdate.protocol.strings import Cursor, IncompleteInput, is_word, render_response

__all__ = ["NEED_DATA", "PAUSED", "ServerConnection", "ServerState"]


class ServerState(Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    STREAMING = "streaming"
    TLS_NEGOTIATING = "tls negotiating"
    CLOSED = "closed"


S = ServerState

# §2.8 first-letter dispatch: letter -> (names needing no login, names behind the login
# check). A letter with an empty second part has no login check at all (C, S); a letter
# missing here is "Unrecognized command" in every state.
_DISPATCH: Final[dict[int, tuple[tuple[bytes, ...], tuple[bytes, ...]]]] = {
    ord("A"): ((b"AUTHENTICATE",), (b"ACTIVATE",)),
    ord("C"): ((b"COMPRESS",), ()),
    ord("D"): ((), (b"DEACTIVATE", b"DELETE")),
    ord("F"): ((), (b"FIND",)),
    ord("L"): ((b"LOGOUT",), (b"LIST",)),
    ord("N"): ((), (b"NOOP",)),
    ord("R"): ((), (b"RESERVE",)),
    ord("S"): ((b"STARTTLS",), ()),
    ord("U"): ((), (b"UPDATE",)),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """Accept (``refuse`` None), moving to ``next_state`` if set; or refuse with a text."""

    next_state: ServerState | None = None
    refuse: bytes | None = None
    quoted: bool = True


_OK = Rule()
_LOGIN = Rule(refuse=texts.PLEASE_LOGIN_FIRST)
_AGAIN = Rule(refuse=texts.ALREADY_AUTHENTICATED)
_NO_TLS = Rule(refuse=texts.STARTTLS_AFTER_AUTH, quoted=False)
_STREAMING = Rule(refuse=texts.NOT_LEGAL_WHEN_STREAMING)
_BYE = Rule(next_state=S.CLOSED)
_GATED = (c.Noop, c.Find, c.List, c.Update, c.Reserve, c.Activate, c.Deactivate, c.Delete)
_NOT_IN_STREAM = (c.Find, c.List, c.Update, c.Reserve, c.Activate, c.Deactivate, c.Delete)

# (state, command) -> Rule, for the three states that parse commands (§4, §5).
TABLE: Final[dict[tuple[ServerState, type[c.Command]], Rule]] = {
    (S.NOT_AUTHENTICATED, c.Authenticate): Rule(next_state=S.AUTHENTICATING),
    (S.NOT_AUTHENTICATED, c.Starttls): Rule(next_state=S.TLS_NEGOTIATING),
    (S.NOT_AUTHENTICATED, c.Compress): _OK,
    (S.NOT_AUTHENTICATED, c.Logout): _BYE,
    **{(S.NOT_AUTHENTICATED, cmd): _LOGIN for cmd in _GATED},
    (S.AUTHENTICATED, c.Authenticate): _AGAIN,
    (S.AUTHENTICATED, c.Starttls): _NO_TLS,
    (S.AUTHENTICATED, c.Compress): _OK,
    (S.AUTHENTICATED, c.Logout): _BYE,
    **{(S.AUTHENTICATED, cmd): _OK for cmd in _GATED},
    (S.AUTHENTICATED, c.Update): Rule(next_state=S.STREAMING),
    (S.STREAMING, c.Authenticate): _AGAIN,
    (S.STREAMING, c.Starttls): _NO_TLS,
    (S.STREAMING, c.Compress): _OK,
    (S.STREAMING, c.Logout): _BYE,
    (S.STREAMING, c.Noop): _OK,
    **{(S.STREAMING, cmd): _STREAMING for cmd in _NOT_IN_STREAM},
}


def _bad(tag: bytes, text: bytes, *, quoted: bool = True, close: bool = False) -> PeerError:
    return PeerError(Done(tag, Status.BAD, text, quoted=quoted), close=close)


# ------------------------------------------------------------------ arguments (§5)

_Parser = Callable[[bytes, Cursor, ProtocolLimits], c.Command]


def _none(tag: bytes, cur: Cursor) -> None:
    if not cur.at_eol():
        raise _bad(tag, texts.EXTRA_ARGUMENTS)


def _strings(tag: bytes, cur: Cursor, count: int) -> list[bytes]:
    """Cyrus: each argument but the last must be followed by SP (else Missing); the last
    must be a string followed by the line end (else Extra)."""
    if not cur.take_sp():
        raise _bad(tag, texts.MISSING_ARGUMENTS)
    values = []
    for index in range(count):
        value = cur.string()
        if index < count - 1:
            if value is None or not cur.take_sp():
                raise _bad(tag, texts.MISSING_ARGUMENTS)
        elif value is None or not cur.at_eol():
            raise _bad(tag, texts.EXTRA_ARGUMENTS)
        values.append(value)
    return values


def _authenticate(tag: bytes, cur: Cursor, limits: ProtocolLimits) -> c.Command:
    if not cur.take_sp():
        raise _bad(tag, texts.MISSING_ARGUMENTS)
    mechanism = cur.string() if cur.peek() in (0x22, 0x7B) else cur.atom()
    initial = None
    if mechanism is not None and cur.take_sp():
        initial = cur.string()
        if initial is None:
            raise _bad(tag, texts.EXTRA_ARGUMENTS)
    if mechanism is None or not cur.at_eol():
        raise _bad(tag, texts.EXTRA_ARGUMENTS)
    return c.Authenticate(tag, mechanism, initial)


def _list(tag: bytes, cur: Cursor, limits: ProtocolLimits) -> c.Command:
    if cur.at_eol():
        return c.List(tag)
    prefix = cur.string() if cur.take_sp() else None
    if prefix is None or not cur.at_eol():
        raise _bad(tag, texts.EXTRA_ARGUMENTS)
    return c.List(tag, prefix)


def _update(tag: bytes, cur: Cursor, limits: ProtocolLimits) -> c.Command:
    hosts: list[bytes] = []
    while len(hosts) < limits.max_update_hosts and cur.take_sp():
        host = cur.string()
        if not host:  # absent, malformed or empty
            raise _bad(tag, texts.BADLY_FORMED_ARGUMENTS)
        hosts.append(host)
    _none(tag, cur)  # a 31st host lands here: "Extra arguments" (§5.8)
    return c.Update(tag, tuple(hosts))


def _bare(make: Callable[[bytes], c.Command]) -> _Parser:
    def parse(tag: bytes, cur: Cursor, limits: ProtocolLimits) -> c.Command:
        _none(tag, cur)
        return make(tag)

    return parse


def _with(make: Callable[..., c.Command], count: int) -> _Parser:
    def parse(tag: bytes, cur: Cursor, limits: ProtocolLimits) -> c.Command:
        return make(tag, *_strings(tag, cur, count))

    return parse


PARSERS: Final[dict[bytes, _Parser]] = {
    b"AUTHENTICATE": _authenticate,
    b"STARTTLS": _bare(c.Starttls),
    b"COMPRESS": _with(c.Compress, 1),
    b"LOGOUT": _bare(c.Logout),
    b"NOOP": _bare(c.Noop),
    b"FIND": _with(c.Find, 1),
    b"LIST": _list,
    b"UPDATE": _update,
    b"RESERVE": _with(c.Reserve, 2),
    b"ACTIVATE": _with(c.Activate, 3),
    b"DEACTIVATE": _with(c.Deactivate, 2),
    b"DELETE": _with(c.Delete, 1),
}


# ---------------------------------------------------------------------- engine


class ServerConnection:
    """One client connection, server side. See the how-it-works comment above."""

    def __init__(
        self,
        limits: ProtocolLimits = ProtocolLimits(),  # noqa: B008 - frozen, shared safely
        *,
        read_only: bool = False,
        starttls_available: bool = False,
        tls_active: bool = False,
    ) -> None:
        """``tls_active``: the connection is under TLS from the first byte (an implicit-TLS
        listener); STARTTLS then gets "Already did a successful Starttls" (§5.2)."""
        self._limits = limits
        self._read_only = read_only
        self._starttls_available = starttls_available
        self._buffer = ReceiveBuffer(limits, approve_sync=True)
        self._state = S.NOT_AUTHENTICATED
        self._tls_active = tls_active
        self._eof = False
        self._auth_tag = b""
        self._outgoing = bytearray()

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def buffered(self) -> int:
        """Bytes held by the engine (for memory-bound checks)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed received bytes; ``b""`` means the peer closed its side."""
        if self._state is S.CLOSED:
            return
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data after EOF")
            return
        if not data:
            self._eof = True
        self._buffer.feed(data)

    def data_to_send(self) -> bytes:
        """Bytes the engine produced itself (``+ go ahead``); write them after next_event."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def send(self, event: Response) -> bytes:
        """The exact wire bytes of a response event. A Bye closes the engine."""
        data = render_response(event)
        if isinstance(event, Bye):
            self._close()
        return data

    def authentication_succeeded(self) -> None:
        self._leave_auth(S.AUTHENTICATED)

    def authentication_failed(self) -> None:
        self._leave_auth(S.NOT_AUTHENTICATED)

    def tls_started(self) -> None:
        if self._state is not S.TLS_NEGOTIATING:
            raise LocalProtocolError(f"tls_started in state {self._state.name}")
        self._state = S.NOT_AUTHENTICATED
        self._tls_active = True

    def _leave_auth(self, state: ServerState) -> None:
        if self._state is not S.AUTHENTICATING:
            raise LocalProtocolError(f"authentication ended in state {self._state.name}")
        self._state = state

    def _close(self) -> None:
        self._state = S.CLOSED
        self._buffer.clear()

    def next_event(self) -> c.Command | c.SaslResponse | Sentinel:
        """The next client command or SASL line, NEED_DATA, or PAUSED; raises PeerError."""
        try:
            return self._next_event()
        except PeerError as error:
            if error.close:
                self._close()
            raise

    def _next_event(self) -> c.Command | c.SaslResponse | Sentinel:
        if self._state in (S.TLS_NEGOTIATING, S.CLOSED):
            return PAUSED
        if self._state is S.AUTHENTICATING:
            return self._sasl_line()
        while True:
            frame = self._buffer.next_frame()
            if frame is None:
                return self._need_data()
            if isinstance(frame, SyncLiteral):
                self._decide_literal(frame)
                continue
            return self._command(frame)

    def _need_data(self) -> Sentinel:
        if self._eof:
            self._close()
            return PAUSED
        return NEED_DATA

    def _sasl_line(self) -> c.SaslResponse | Sentinel:
        try:
            line = self._buffer.next_line(self._limits.max_sasl_line)
        except LineTooLong:
            done = Done(self._auth_tag, Status.NO, texts.SASL_LINE_TOO_LONG, quoted=False)
            raise PeerError(done, close=True) from None
        return self._need_data() if line is None else c.SaslResponse(line)

    def _decide_literal(self, pending: SyncLiteral) -> None:
        try:
            self._parse(pending.segments, partial=True)
        except IncompleteInput:
            self._buffer.accept_literal()
            self._outgoing += render_response(GoAhead())
            return
        except PeerError:
            self._buffer.refuse_literal()
            raise
        self._buffer.refuse_literal()  # unreachable for buffer frames; refuse to be safe
        raise _bad(_tag_or_star(pending.segments[0]), texts.EXTRA_ARGUMENTS)

    def _command(self, frame: Frame) -> c.Command:
        if frame.error is not None:
            tag = _tag_or_star(frame.segments[0])
            if not frame.fatal:
                # an earlier mistake in the command takes precedence, as in Cyrus
                with suppress(IncompleteInput):
                    self._parse(frame.segments, partial=True)
            if frame.fatal and frame.error != texts.LINE_TOO_LONG:
                raise PeerError(Bye(frame.error), close=True)
            raise _bad(tag, frame.error, close=frame.fatal)
        command = self._parse(frame.segments, partial=False)
        return self._apply(command)

    def _parse(self, segments: tuple[bytes, ...], *, partial: bool) -> c.Command:
        cur = Cursor(segments, partial=partial)
        tag = cur.word()
        if not is_word(tag) or not cur.take_sp():  # is_word: a NUL could not be echoed
            raise _bad(b"*", texts.NEED_COMMAND)
        name = cur.word().upper()
        if not name:
            raise _bad(tag, texts.NULL_COMMAND)
        open_names, gated_names = _DISPATCH.get(name[0], ((), ()))
        if not self._starttls_available:  # §5.2: then STARTTLS is an unknown word
            open_names = tuple(n for n in open_names if n != b"STARTTLS")
        if name not in open_names:
            if gated_names and self._state is S.NOT_AUTHENTICATED:
                raise _bad(tag, texts.PLEASE_LOGIN_FIRST)
            if name not in gated_names:
                raise _bad(tag, texts.UNRECOGNIZED_COMMAND)
        return PARSERS[name](tag, cur, self._limits)

    def _apply(self, command: c.Command) -> c.Command:
        rule = TABLE[(self._state, type(command))]
        if rule.refuse is not None:
            raise _bad(command.tag, rule.refuse, quoted=rule.quoted)
        if isinstance(command, c.Starttls) and self._tls_active:
            raise _bad(command.tag, texts.ALREADY_TLS, quoted=False)
        if self._read_only and isinstance(command, c.WRITE_COMMANDS):
            raise _bad(command.tag, texts.READ_ONLY_SESSION)
        if rule.next_state is not None:
            self._state = rule.next_state
        if isinstance(command, c.Authenticate):
            self._auth_tag = command.tag
        elif isinstance(command, c.Starttls):
            self._buffer.clear()  # plaintext pipelined behind STARTTLS is never run (§5.2)
        elif isinstance(command, c.Logout):
            self._buffer.clear()
        return command


def _tag_or_star(line: bytes) -> bytes:
    tag = Cursor((line,)).word()
    return tag if is_word(tag) and line[len(tag) : len(tag) + 1] == b" " else b"*"

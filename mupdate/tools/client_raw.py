"""``mupdate-client raw``: an interactive session like Cyrus's mupdatetest, with the strings
done for the operator (protocol doc §2.2-§2.6, §5, §6.1).

After the login, each line read from stdin (a terminal or a pipe) becomes one command:

* a tag is added (``X0``, ``X1``, ...) unless the line starts with its own tag, i.e. its
  first word is not a command name and its second word is;
* the command word is upper-cased when it is one Cyrus knows (§2.3); an unknown word is sent
  as typed, so the server's own error comes back;
* every argument is sent as a quoted string where it can be one and as a ``{n+}`` literal
  otherwise (CR, LF, NUL, or over 1024 bytes; §2.4-§2.6). An argument is a bare word or a
  ``"quoted string"`` in which ``\\"``, ``\\\\``, ``\\t``, ``\\r``, ``\\n`` and ``\\xHH``
  stand for those bytes (any other ``\\c`` is ``c``, as in IMAP);
* AUTHENTICATE, STARTTLS and COMPRESS are refused locally (they change the connection's mode
  in ways this session cannot follow); an empty line is ignored.

What is sent is shown as ``C: <line>`` and every line the server sends as ``S: <line>``,
exactly as received (literals included, so a literal spans lines), with bytes that are not
printable UTF-8 shown as ``\\xHH``. The session ends when the connection closes: after
LOGOUT's tagged reply (the tool closes its side then, as a server may wait for the client to
close first; exit 0), or when the server closes it on its own (exit 4). At the end of stdin
a ``LOGOUT`` is sent unless one was.

The glue hands the logged-in connection from the tool's ``MupdateClientProtocol`` to a
printer protocol (the client protocol would take unrequested lines as a violation), and
reads stdin through Twisted's ``StandardIO`` (stdout is written through it too, since it
makes the descriptors non-blocking).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Final

from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from zope.interface import implementer

from mupdate.net.client import MupdateClientProtocol
from mupdate.protocol.strings import COMMAND_WORDS, is_word, render_string
from mupdate.tools.client_output import show
from mupdate.tools.connect import EXIT_CONNECTION, EXIT_OK, ToolError

KNOWN_WORDS: Final = frozenset(COMMAND_WORDS.values())
MODE_SWITCHES: Final = frozenset({b"AUTHENTICATE", b"STARTTLS", b"COMPRESS"})
MAX_INPUT_LINE: Final = 1 << 20
_ESCAPES: Final = {ord("t"): 0x09, ord("r"): 0x0D, ord("n"): 0x0A}
_SPACE: Final = b" \t"
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


class RawInputError(ValueError):
    """A typed line that cannot become a command; the session goes on."""


@dataclass(frozen=True)
class RawCommand:
    tag: bytes
    word: bytes
    wire: bytes  # what goes on the wire, CRLF included

    @property
    def is_logout(self) -> bool:
        return self.word.upper() == b"LOGOUT"


def split_words(line: bytes) -> list[tuple[bytes, bool]]:
    """Words of a typed line as ``(value, quoted)``; quoted strings unescaped (see above)."""
    words: list[tuple[bytes, bool]] = []
    pos, end = 0, len(line)
    while pos < end:
        if line[pos] in _SPACE:
            pos += 1
            continue
        if line[pos] != 0x22:
            stop = pos
            while stop < end and line[stop] not in _SPACE:
                stop += 1
            words.append((line[pos:stop], False))
            pos = stop
            continue
        value, pos = _quoted(line, pos + 1)
        if pos < end and line[pos] not in _SPACE:
            raise RawInputError("a quoted string must be followed by a space or the end")
        words.append((value, True))
    return words


def _quoted(line: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while pos < len(line):
        byte = line[pos]
        if byte == 0x22:
            return bytes(out), pos + 1
        if byte == 0x5C:
            pos += 1
            if pos >= len(line):
                break
            byte = line[pos]
            if byte == ord("x"):
                digits = line[pos + 1 : pos + 3]
                if len(digits) != 2 or not _HEX.issuperset(digits):
                    raise RawInputError("\\x needs two hex digits")
                out.append(int(digits, 16))
                pos += 3
                continue
            byte = _ESCAPES.get(byte, byte)
        out.append(byte)
        pos += 1
    raise RawInputError("unterminated quoted string")


def compose(line: bytes, next_tag: Callable[[], bytes]) -> RawCommand | None:
    """The command for one typed line (see the module docstring); None for a blank line."""
    words = split_words(line.rstrip(b"\r\n"))
    if not words:
        return None
    first, first_quoted = words[0]
    own_tag = (
        not first_quoted
        and first.upper() not in KNOWN_WORDS
        and len(words) > 1
        and not words[1][1]
        and words[1][0].upper() in KNOWN_WORDS
    )
    if own_tag and not is_word(first):
        raise RawInputError(f"{show(first)} cannot be a tag")
    rest = words[1:] if own_tag else words
    word, word_quoted = rest[0]
    if word_quoted:
        raise RawInputError("the command word cannot be a quoted string")
    if word.upper() in KNOWN_WORDS:
        word = word.upper()
    if word in MODE_SWITCHES:
        raise RawInputError(f"{word.decode()} changes the connection's mode; not in raw mode")
    tag = first if own_tag else next_tag()  # a refused line uses up no tag
    parts = [tag, word, *(render_string(value) for value, _ in rest[1:])]
    return RawCommand(tag, word, b" ".join(parts) + b"\r\n")


# ---------------------------------------------------------------- glue


class ServerPrinter(Protocol):
    """Shows each line the server sends, then hands it to ``seen``; fires ``closed`` when
    the connection is gone."""

    def __init__(
        self, emit: Callable[[str], None], seen: Callable[[bytes], None] = lambda _: None
    ) -> None:
        self._emit = emit
        self._seen = seen
        self._buffer = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            line = line.removesuffix(b"\r")
            self._emit("S: " + show(line))
            self._seen(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._buffer:
            self._emit("S: " + show(self._buffer))
            self._buffer = b""
        self.closed.callback(None)


def hand_over(client: MupdateClientProtocol, printer: Protocol) -> None:
    """From now on the connection's bytes and its end go to ``printer``, which writes
    through the client's transport.

    Whatever delivers the bytes (a TCP connection, a TLS layer from ``--tls`` or STARTTLS)
    calls ``dataReceived`` and ``connectionLost`` on the object it holds, the client
    protocol, so the switch is made there rather than on one particular transport.
    """
    printer.makeConnection(client.transport)
    client.dataReceived = printer.dataReceived  # type: ignore[method-assign]  # the switch
    client.connectionLost = printer.connectionLost  # type: ignore[method-assign]  # the switch


@implementer(IHalfCloseableProtocol)
class OperatorInput(Protocol):
    """Lines from stdin to ``on_line``, end of input to ``on_end`` (a last line without a
    newline counts); ``gone`` fires once stdin and stdout are both closed."""

    def __init__(
        self,
        on_line: Callable[[bytes], None],
        on_end: Callable[[], None],
        on_error: Callable[[RawInputError], None],
    ) -> None:
        self._on_line = on_line
        self._on_end = on_end
        self._on_error = on_error
        self._buffer = b""
        self._skipping = False  # inside a line that was too long
        self.gone: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if self._skipping:
                self._skipping = False
                continue
            self._on_line(line)
        if len(self._buffer) > MAX_INPUT_LINE:
            self._buffer = b""
            if not self._skipping:
                self._skipping = True
                self._on_error(RawInputError(f"a line over {MAX_INPUT_LINE} bytes was dropped"))

    def readConnectionLost(self) -> None:
        line, self._buffer = self._buffer, b""
        if line and not self._skipping:
            self._on_line(line)
        self._on_end()

    def writeConnectionLost(self) -> None:
        pass  # nothing can be shown any more; the session still ends as usual

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.gone.called:
            self.gone.callback(None)


class RawSession:
    """One raw session over a logged-in client connection (see the module docstring)."""

    def __init__(
        self,
        reactor: IReactorTime,
        client: MupdateClientProtocol,
        timeout: float,
        complain: Callable[[str], None],
        stdin: int = 0,
        stdout: int = 1,
    ) -> None:
        assert client.transport is not None
        self._client = client
        self._reactor = reactor
        self._transport: ITransport = client.transport
        self._timeout = timeout
        self._complain = complain
        self._fds = (stdin, stdout)
        self._tags = 0
        self._logout_sent = False
        self._logout_tag: bytes | None = None
        self._server_gone = False
        self._give_up_call: IDelayedCall | None = None
        self._timed_out = False
        self._stdio: StandardIO | None = None

    def next_tag(self) -> bytes:
        self._tags += 1
        return b"X%d" % (self._tags - 1)

    async def run(self) -> int:
        """Fires with EXIT_OK after a LOGOUT; raises ToolError if the server ends first."""
        if self._client.closed.called:  # lost before the hand-over: nothing would tell us
            raise ToolError("the server closed the connection", EXIT_CONNECTION)
        reader = OperatorInput(self._typed, self._input_ended, self._refused)
        stdin, stdout = self._fds
        self._stdio = StandardIO(  # type: ignore[call-arg]  # mypy reads _win32stdio's signature
            reader, stdin=stdin, stdout=stdout, reactor=self._reactor
        )
        printer = ServerPrinter(self._emit, self._server_line)
        hand_over(self._client, printer)
        await printer.closed
        self._server_gone = True
        if self._give_up_call is not None and self._give_up_call.active():
            self._give_up_call.cancel()
        self._stdio.loseConnection()
        with suppress(TimeoutError):  # stdout never drained: nothing more can be shown
            await reader.gone.addTimeout(self._timeout, self._reactor)
        if self._timed_out:
            raise ToolError(f"no end of session within {self._timeout:g} s", EXIT_CONNECTION)
        if not self._logout_sent:
            raise ToolError("the server closed the connection", EXIT_CONNECTION)
        return EXIT_OK

    def _emit(self, line: str) -> None:
        if self._stdio is not None:
            self._stdio.write(line.encode("utf-8") + b"\n")

    def _refused(self, error: RawInputError) -> None:
        self._complain(str(error))

    def _typed(self, line: bytes) -> None:
        if self._server_gone:
            return
        try:
            command = compose(line, self.next_tag)
        except RawInputError as exc:
            self._refused(exc)
            return
        if command is not None:
            self._send(command)

    def _send(self, command: RawCommand) -> None:
        self._emit("C: " + show(command.wire.removesuffix(b"\r\n")))
        self._transport.write(command.wire)
        if command.is_logout and not self._logout_sent:
            self._logout_sent, self._logout_tag = True, command.tag

    def _server_line(self, line: bytes) -> None:
        """After the LOGOUT's tagged reply the session is over: close our side too.

        A server may wait for the client to close first: under TLS our master's close
        waits for the peer's close_notify, and a Cyrus client closes after LOGOUT anyway.
        """
        if self._logout_tag is None:
            return
        tag, _, rest = line.partition(b" ")
        if tag == self._logout_tag and rest[:3].upper() in (b"OK ", b"NO ", b"BAD"):
            self._transport.loseConnection()

    def _input_ended(self) -> None:
        if self._server_gone:
            return
        if not self._logout_sent:
            logout = compose(b"LOGOUT", self.next_tag)
            assert logout is not None
            self._send(logout)
        self._give_up_call = self._reactor.callLater(self._timeout, self._give_up)

    def _give_up(self) -> None:
        if not self._server_gone:
            self._timed_out = True
            self._transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport

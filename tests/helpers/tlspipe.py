"""Two protocols joined in memory by transports that can really start TLS (style.md §11).

iosim's ``startTLS`` only pretends (it never runs OpenSSL), so certificate checks could not
be tested with it. Here ``startTLS`` puts Twisted's own ``TLSMemoryBIOProtocol`` between
the transport and the protocol, as ``twisted.internet._newtls.startTLS`` does for TCP: the
handshake, certificate verification and service_identity host checks are the real ones.
Bytes move only when the test calls ``pump.flush()``; no reactor, no sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

__all__ = ["PipeEnd", "Pump", "connect"]


class _Raw:
    """The wire under a TLS layer: what TLSMemoryBIOProtocol writes goes out unchanged."""

    def __init__(self, end: PipeEnd) -> None:
        self.end = end
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self.end.raw_write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.end.raw_write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.end.close_requested()

    def abortConnection(self) -> None:
        self.end.close_requested()

    def getPeer(self) -> IPv4Address:
        return self.end.getPeer()

    def getHost(self) -> IPv4Address:
        return self.end.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@implementer(ITLSTransport)
class PipeEnd:
    """One side's transport."""

    def __init__(self, pump: Pump, host: str, peer: str, is_client: bool) -> None:
        self.pump = pump
        self.host = IPv4Address("TCP", host, 40000 if is_client else 3905)
        self.peer = IPv4Address("TCP", peer, 3905 if is_client else 40000)
        self.is_client = is_client
        self.protocol: Any = None
        self.tls: TLSMemoryBIOProtocol | None = None
        self.outgoing = bytearray()
        self.reading = True
        self.disconnecting = False
        self.closing = False
        self.lost = False
        self.producer: Any = None
        self.wire: list[bytes] = []  # every chunk this end put on the wire (cipher or clear)

    # -- ITransport ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.lost:
            return
        if self.tls is not None:
            self.tls.write(data)
        else:
            self.raw_write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def raw_write(self, data: bytes) -> None:
        if data and not self.lost:
            self.outgoing += data
            self.wire.append(bytes(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        if self.tls is not None:
            self.tls.loseConnection()  # close_notify, then _Raw.loseConnection
        else:
            self.close_requested()

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.close_requested()

    def close_requested(self) -> None:
        self.closing = True

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.host

    # -- producer / consumer --------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- TLS ------------------------------------------------------------------------------

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        client = self.is_client if normal else not self.is_client
        # Twisted's TLS layer gathers small writes until the next clock tick: the pump's clock
        factory = TLSMemoryBIOFactory(contextFactory, client, None, clock=self.pump.clock)
        self.tls = factory.protocol(factory, self.protocol, False)
        alsoProvides(self, ISSLTransport)
        self.tls.makeConnection(_Raw(self))

    def getPeerCertificate(self) -> Any:
        return None if self.tls is None else self.tls.getPeerCertificate()

    # -- delivery -------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.dataReceived(data)
        else:
            self.protocol.dataReceived(data)

    def connection_lost(self, reason: Failure) -> None:
        if self.lost:
            return
        self.lost = True
        if self.tls is not None:
            self.tls.connectionLost(reason)
        else:
            self.protocol.connectionLost(reason)


class Pump:
    def __init__(self) -> None:
        self.client: PipeEnd
        self.server: PipeEnd
        self.clock = Clock()

    def flush(self, rounds: int = 200) -> None:
        """Move bytes both ways until nothing moves; then deliver a close, if any."""
        for _ in range(rounds):
            self.clock.advance(0)  # flush the TLS layers' gathered writes
            moved = False
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                if src.outgoing and dst.reading and not dst.lost:
                    data = bytes(src.outgoing)
                    src.outgoing.clear()
                    dst.receive(data)
                    moved = True
            if not moved:
                closer = next((e for e in (self.client, self.server) if e.closing), None)
                if closer is None or (self.client.lost and self.server.lost):
                    return
                for end in (closer, self.client if closer is self.server else self.server):
                    cls = ConnectionDone if end is closer else ConnectionLost
                    end.connection_lost(Failure(cls()))
                return
        raise AssertionError("the pump kept moving bytes: a loop between the protocols?")


def connect(
    server: Any,
    client: Any,
    *,
    server_host: str = "127.0.0.1",
    client_host: str = "127.0.0.1",
    implicit_server_tls: Any = None,
    implicit_client_tls: Any = None,
) -> Pump:
    """Join two protocols; with ``implicit_*_tls`` that side runs TLS from the first byte."""
    pump = Pump()
    pump.server = PipeEnd(pump, server_host, client_host, is_client=False)
    pump.client = PipeEnd(pump, client_host, server_host, is_client=True)
    for end, protocol, options in (
        (pump.server, server, implicit_server_tls),
        (pump.client, client, implicit_client_tls),
    ):
        end.protocol = protocol
        if options is not None:
            end.startTLS(options)
    server.makeConnection(pump.server)
    client.makeConnection(pump.client)
    pump.flush()
    return pump

"""Test reactors for the TFTP listener: port 69 as a fake port that records what it writes,
transfers on real loopback sockets behind the production transfer mux."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address as TwistedAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.internet.task import Clock
from zope.interface import implementer

from pxetwist.tftp.packet import Packet, decode


class FakeUDPPort:
    """A bound UDP port that records what is written to it."""

    def __init__(
        self, reactor: object, port: int, protocol: AbstractDatagramProtocol, interface: str
    ) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.host = TwistedAddress("UDP", interface or "0.0.0.0", port)
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.listening = True
        protocol.makeConnection(self)  # type: ignore[arg-type]

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        assert self.listening, "write on a closed port"
        self.written.append((datagram, addr))

    def getHost(self) -> TwistedAddress:
        return self.host

    def stopListening(self) -> Deferred[None]:
        if self.listening:
            self.listening = False
            self.protocol.doStop()
        return succeed(None)

    def take(self) -> list[tuple[Packet, tuple[str, int]]]:
        """Decode and forget what was written so far."""
        packets = [(decode(datagram), addr) for datagram, addr in self.written]
        self.written.clear()
        return packets

    def receive(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.protocol.datagramReceived(datagram, addr)


@implementer(IReactorFDSet)
class FakeFDReactor(Clock):
    """``Clock`` plus the descriptor set, for the real-socket transfer path (loopback only).

    Nothing polls: a test calls ``doRead`` on a reader when it knows data is waiting.
    """

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        if reader not in self.readers:
            self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        if reader in self.readers:
            self.readers.remove(reader)

    def addWriter(self, writer: Any) -> None:
        raise NotImplementedError

    def removeWriter(self, writer: Any) -> None:
        raise NotImplementedError

    def removeAll(self) -> list[Any]:
        readers, self.readers = self.readers, []
        return readers

    def getReaders(self) -> list[Any]:
        return list(self.readers)

    def getWriters(self) -> list[Any]:
        return []

    def isReading(self, reader: Any) -> bool:
        return reader in self.readers

    def isWriting(self, writer: Any) -> bool:
        return False

    def timeout(self) -> float | None:
        calls = self.getDelayedCalls()
        if not calls:
            return None
        return max(0.0, min(call.getTime() for call in calls) - self.seconds())


class SocketReactor(FakeFDReactor):
    """The TFTP listener's port 69 as a fake port (it records what it writes), transfers on
    the production path: real sockets on loopback behind the transfer mux (a reader here)."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUDPPort] = []

    def listenUDP(
        self,
        port: int,
        protocol: AbstractDatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803 (Twisted's name)
    ) -> Any:
        bound = FakeUDPPort(self, port or 40000, protocol, interface)
        self.ports.append(bound)
        return bound

    def open_ports(self) -> list[FakeUDPPort]:
        return [port for port in self.ports if port.listening]

    def read_ready(self) -> None:
        """Let every readable transfer socket read (what the reactor's poll would do)."""
        for reader in list(self.readers):
            reader.doRead()

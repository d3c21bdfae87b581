"""UDP sockets for DHCP: one per served interface, bound to it, knowing each packet's target.

A plain ``listenUDP`` socket cannot tell which interface a broadcast came in on, and cannot even
send a broadcast on a host without a default route.  So each served interface gets its own
socket on ``0.0.0.0:<port>`` with ``SO_BINDTODEVICE``, ``SO_BROADCAST`` and ``SO_REUSEADDR``
(protocol-reference §1.6), and ``IP_PKTINFO`` tells whether a request was broadcast or sent to us
(RENEWING versus REBINDING).  The reader drains the socket in batches with ``recvmsg``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_ANCILLARY_SIZE = socket.CMSG_SPACE(_PKTINFO.size)
_MAX_DATAGRAM = 4096

DatagramHandler = Callable[[bytes, tuple[str, int], IPv4Address | None], None]


#: Receive buffer asked for: a burst of requests (a rack powering on, a relay flushing its
#: queue) or a moment without the CPU must not overflow the kernel's 208 KiB default, which
#: holds only a few hundred small datagrams.
RECEIVE_BUFFER = 4 << 20


def open_udp_socket(
    interface: str | None,
    port: int,
    address: str = "0.0.0.0",
    receive_buffer: int = RECEIVE_BUFFER,
) -> socket.socket:
    """A non-blocking UDP socket on ``address:port``, bound to ``interface`` when given."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        _set_receive_buffer(sock, receive_buffer)
        if interface is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """As big a receive buffer as allowed: past ``net.core.rmem_max`` only with CAP_NET_ADMIN."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass  # not privileged: the kernel caps SO_RCVBUF at rmem_max instead
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as error:  # pragma: no cover - Linux accepts any size and caps it
        log.warn("cannot enlarge the DHCP receive buffer: {error}", error=error)


@implementer(IReadDescriptor)
class DatagramReader:
    """Feeds every datagram on a socket to a handler, with its destination address."""

    def __init__(self, sock: socket.socket, handler: DatagramHandler, batch: int = 64) -> None:
        self.socket = sock
        self.handler = handler
        self.batch = batch
        # Packets arrive for a handful of destinations (our address, broadcasts): parse each
        # IP_PKTINFO address once.
        self._destinations: dict[bytes, IPv4Address] = {}

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "dhcp-socket"

    def doRead(self) -> None:
        recvmsg = self.socket.recvmsg
        handler = self.handler
        destinations = self._destinations
        for _ in range(self.batch):
            try:
                data, ancillary, _flags, source = recvmsg(_MAX_DATAGRAM, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warn("dhcp socket receive failed: {error}", error=error)
                return
            destination: IPv4Address | None = None
            for level, kind, value in ancillary:
                if (
                    level == socket.IPPROTO_IP
                    and kind == _IP_PKTINFO
                    and len(value) >= _PKTINFO.size
                ):
                    raw = value[8:12]  # ipi_addr: the header's destination address
                    destination = destinations.get(raw)
                    if destination is None:
                        if len(destinations) >= 256:
                            destinations.clear()
                        destination = destinations[raw] = IPv4Address(raw)
            try:
                handler(data, source, destination)
            except Exception:
                log.failure("unexpected error handling a datagram from {peer}", peer=source)

    def connectionLost(self, reason: Failure) -> None:
        self.socket.close()

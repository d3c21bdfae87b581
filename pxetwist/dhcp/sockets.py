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
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.dhcp.packet import peek_discover

log = Logger()

_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_ANCILLARY_SIZE = socket.CMSG_SPACE(_PKTINFO.size)
_MAX_DATAGRAM = 4096
_SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux: the socket's memory accounting
_MEMINFO = struct.Struct("=II")  # SK_MEMINFO_RMEM_ALLOC, SK_MEMINFO_RCVBUF (bytes)

DatagramHandler = Callable[[bytes, tuple[str, int], IPv4Address | None], None]
_Datagram = tuple[bytes, tuple[str, int], IPv4Address | None]  # data, source, destination


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
    """Feeds every datagram on a socket to a handler, with its destination address.

    It drains up to ``batch`` datagrams per wake-up.  A full batch while more than
    ``shed_above`` of the receive buffer is still taken means the server has been behind for a
    while.  Then it sheds load the way that completes the most exchanges: every
    REQUEST (and any other message) of the batch is handled first, and at most
    ``discover_quota`` DISCOVERs, the latest ones; the others are dropped unread, as the
    kernel would drop them anyway once the socket's buffer is full.  Their clients
    retransmit (RFC 2131 §4.1).  Without this, a flood of DISCOVERs keeps the buffer full, the
    REQUESTs that would finish exchanges are lost in it, and the server spends itself on
    OFFERs nobody can take up.  Short of that nothing is reordered or shed.
    """

    def __init__(
        self,
        sock: socket.socket,
        handler: DatagramHandler,
        batch: int = 64,
        discover_quota: int | None = 2,
        shed_above: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket = sock
        self.handler = handler
        self.batch = batch
        self.discover_quota = discover_quota
        self.shed_above = shed_above
        self.clock = clock
        self.shed = 0  # DISCOVERs dropped unread since the start
        self.errors = 0  # handler failures since the start
        self._error_log_at = float("-inf")
        self._shed_logged = 0
        self._shed_log_at = 0.0
        # Packets arrive for a handful of destinations (our address, broadcasts): parse each
        # IP_PKTINFO address once.
        self._destinations: dict[bytes, IPv4Address] = {}

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "dhcp-socket"

    def doRead(self) -> None:
        recvmsg = self.socket.recvmsg
        destinations = self._destinations
        received: list[_Datagram] = []
        for _ in range(self.batch):
            try:
                data, ancillary, _flags, source = recvmsg(_MAX_DATAGRAM, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                now = self.clock()
                if now - self._error_log_at >= 10.0:
                    self._error_log_at = now
                    log.warn("dhcp socket receive failed: {error}", error=error)
                break
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
            received.append((data, source, destination))
        if len(received) >= self.batch and self.discover_quota is not None and self._backlogged():
            received = self._shed(received, self.discover_quota)
        handler = self.handler
        for data, source, destination in received:
            try:
                handler(data, source, destination)
            except Exception:
                self.errors += 1
                now = self.clock()
                if now - self._error_log_at >= 10.0:  # a bug, not bad input: not per packet
                    self._error_log_at = now
                    log.failure(
                        "unexpected error handling a datagram from {peer} ({count} so far; "
                        "logged every 10 s)",
                        peer=source,
                        count=self.errors,
                    )

    def _backlogged(self) -> bool:
        """More than ``shed_above`` of the receive buffer is taken: behind for a while now.

        A short burst (a pause for a garbage collection, a rack powering on) fills a fraction of
        the buffer and drains again; only a queue this deep means the offered load is more
        than the server can answer.
        """
        try:
            info = self.socket.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size)
        except OSError:
            return True  # no SO_MEMINFO: a full batch is all we know
        allocated, size = _MEMINFO.unpack_from(info)
        return bool(allocated > size * self.shed_above)

    def _shed(self, received: list[_Datagram], quota: int) -> list[_Datagram]:
        """Backlogged: everything but DISCOVERs first, then the last ``quota`` DISCOVERs."""
        others: list[_Datagram] = []
        discovers: list[_Datagram] = []
        for item in received:
            (discovers if peek_discover(item[0]) else others).append(item)
        if len(discovers) > quota:
            self.shed += len(discovers) - quota
            discovers = discovers[len(discovers) - quota :] if quota else []
            self._log_shed()
        return others + discovers

    def _log_shed(self) -> None:
        now = self.clock()
        if now - self._shed_log_at < 1.0:
            return
        log.warn(
            "dhcp socket backlogged: {count} DISCOVERs shed unanswered since the last report "
            "({total} in all); their clients will retry",
            count=self.shed - self._shed_logged,
            total=self.shed,
        )
        self._shed_logged = self.shed
        self._shed_log_at = now

    def connectionLost(self, reason: Failure) -> None:
        self.socket.close()

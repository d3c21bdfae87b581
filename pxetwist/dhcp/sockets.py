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
from typing import Final

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.dhcp.packet import peek_discover
from pxetwist.sockbuf import enlarge_receive_buffer, receive_queue_fill

log = Logger()

_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; also the cmsg's type
_TIMESPEC = struct.Struct("@qq")  # tv_sec, tv_nsec: when the kernel queued the datagram
_ANCILLARY_SIZE = socket.CMSG_SPACE(_PKTINFO.size) + socket.CMSG_SPACE(_TIMESPEC.size)
_MAX_DATAGRAM = 4096

DatagramHandler = Callable[[bytes, tuple[str, int], IPv4Address | None], None]
_Datagram = tuple[bytes, tuple[str, int], IPv4Address | None]  # data, source, destination

STALE_AFTER: Final = 2.0
"""Seconds a DISCOVER may wait in the socket's queue and still be answered when the server is
behind: half the 4 s a client waits before retransmitting (RFC 2131 §4.1; PXE ROMs), so its
OFFER arrives before the retry, and the REQUESTs queued behind it are answered within theirs.
iPXE retries sooner (1, 2, 4, 8 s) but keeps its ``xid``, so a late OFFER still serves it
(protocol-reference §1.4)."""


def open_udp_socket(interface: str | None, port: int, address: str = "0.0.0.0") -> socket.socket:
    """A non-blocking UDP socket on ``address:port``, bound to ``interface`` when given, that
    stamps each datagram with its destination address and the time the kernel queued it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        enlarge_receive_buffer(sock, name="dhcp")
        if interface is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IReadDescriptor)
class DatagramReader:
    """Feeds every datagram on a socket to a handler, with its destination address.

    It drains up to ``batch`` datagrams per wake-up.  A full batch means the server is behind,
    and then it sheds the load that cannot complete an exchange in time; short of that nothing
    is reordered or shed:

    * A DISCOVER that waited more than ``stale_after`` seconds in the queue (the kernel's
      timestamp says) is dropped unread: its client is about to retransmit it, and answering
      both would double the work the server is already behind on.  A power-on burst the
      server can answer in time is answered whole.
    * A queue filling more than ``shed_above`` of the receive buffer is a flood the kernel
      will soon drop blindly, REQUESTs with the rest.  Then every REQUEST (and any other
      message) of the batch is handled first, and at most ``discover_quota`` DISCOVERs, the
      latest ones.

    Shed clients retransmit (RFC 2131 §4.1).  Without this, a flood of DISCOVERs keeps the
    buffer full, the REQUESTs that would finish exchanges are lost in it, and the server
    spends itself on OFFERs nobody can take up.
    """

    def __init__(
        self,
        sock: socket.socket,
        handler: DatagramHandler,
        batch: int = 64,
        discover_quota: int | None = 2,
        shed_above: float = 0.5,
        stale_after: float | None = STALE_AFTER,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.socket = sock
        self.handler = handler
        self.batch = batch
        self.discover_quota = discover_quota
        self.shed_above = shed_above
        self.stale_after = stale_after
        self.clock = clock
        self.wall_clock = wall_clock  # the kernel's timestamps are CLOCK_REALTIME
        self.shed = 0  # DISCOVERs dropped unread since the start, for a backlog
        self.stale = 0  # DISCOVERs dropped unread since the start, for their age
        self.errors = 0  # handler failures since the start
        self._error_log_at = float("-inf")
        self._shed_logged = 0
        self._stale_logged = 0
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
        stamps: list[bytes] = []  # each datagram's SCM_TIMESTAMPNS, unparsed (b"" if none)
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
            stamp = b""
            for level, kind, value in ancillary:
                if kind == _IP_PKTINFO and level == socket.IPPROTO_IP:
                    if len(value) >= _PKTINFO.size:
                        raw = value[8:12]  # ipi_addr: the header's destination address
                        destination = destinations.get(raw)
                        if destination is None:
                            if len(destinations) >= 256:
                                destinations.clear()
                            destination = destinations[raw] = IPv4Address(raw)
                elif kind == _SO_TIMESTAMPNS and level == socket.SOL_SOCKET:
                    stamp = value
            received.append((data, source, destination))
            stamps.append(stamp)
        if len(received) >= self.batch:
            received = self._behind(received, stamps)
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

    def _behind(self, received: list[_Datagram], stamps: list[bytes]) -> list[_Datagram]:
        """A full batch: drop the DISCOVERs too old to answer, then those a flood brings."""
        if self.stale_after is not None:
            received = self._drop_stale(received, stamps, self.wall_clock() - self.stale_after)
        if self.discover_quota is not None:
            fill = receive_queue_fill(self.socket)
            if fill is None or fill > self.shed_above:  # no SO_MEMINFO: the full batch is all
                received = self._shed(received, self.discover_quota)
        if self.shed != self._shed_logged or self.stale != self._stale_logged:
            self._log_shed()
        return received

    def _drop_stale(
        self, received: list[_Datagram], stamps: list[bytes], queued_before: float
    ) -> list[_Datagram]:
        """The DISCOVERs queued before ``queued_before`` (wall-clock seconds) dropped."""
        first = stamps[0]
        if len(first) < _TIMESPEC.size or _stamp_seconds(first) >= queued_before:
            return received  # the queue is first in, first out: the oldest is young enough
        kept: list[_Datagram] = []
        for item, stamp in zip(received, stamps, strict=True):
            if (
                len(stamp) >= _TIMESPEC.size
                and _stamp_seconds(stamp) < queued_before
                and peek_discover(item[0])
            ):
                self.stale += 1
            else:
                kept.append(item)
        return kept

    def _shed(self, received: list[_Datagram], quota: int) -> list[_Datagram]:
        """Backlogged: everything but DISCOVERs first, then the last ``quota`` DISCOVERs."""
        others: list[_Datagram] = []
        discovers: list[_Datagram] = []
        for item in received:
            (discovers if peek_discover(item[0]) else others).append(item)
        if len(discovers) > quota:
            self.shed += len(discovers) - quota
            discovers = discovers[len(discovers) - quota :] if quota else []
        return others + discovers

    def _log_shed(self) -> None:
        now = self.clock()
        if now - self._shed_log_at < 1.0:
            return
        log.warn(
            "dhcp socket behind: {stale} DISCOVERs dropped unanswered after waiting more than "
            "{limit:g} s and {shed} shed from a backlogged queue since the last report "
            "({total} in all); their clients will retry",
            stale=self.stale - self._stale_logged,
            limit=self.stale_after if self.stale_after is not None else float("inf"),
            shed=self.shed - self._shed_logged,
            total=self.stale + self.shed,
        )
        self._shed_logged = self.shed
        self._stale_logged = self.stale
        self._shed_log_at = now

    def connectionLost(self, reason: Failure) -> None:
        self.socket.close()


def _stamp_seconds(stamp: bytes) -> float:
    seconds, nanoseconds = _TIMESPEC.unpack_from(stamp)
    return float(seconds + nanoseconds * 1e-9)

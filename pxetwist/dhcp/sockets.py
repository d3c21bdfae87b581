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

from pxetwist.dhcp.backlog import HELD_LIMIT, STALE_AFTER, HeldDiscovers
from pxetwist.dhcp.packet import peek_discover
from pxetwist.sockbuf import enlarge_receive_buffer

log = Logger()

_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; also the cmsg's type
_TIMESPEC = struct.Struct("@qq")  # tv_sec, tv_nsec: when the kernel queued the datagram
_ANCILLARY_SIZE = socket.CMSG_SPACE(_PKTINFO.size) + socket.CMSG_SPACE(_TIMESPEC.size)
_MAX_DATAGRAM = 4096

DatagramHandler = Callable[[bytes, tuple[str, int], IPv4Address | None], None]
_Datagram = tuple[bytes, tuple[str, int], IPv4Address | None]  # data, source, destination


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

    It reads up to ``batch`` datagrams per wake-up and, short of a full batch, hands them on in
    order.  A full batch means the server is behind: a rack powering on, or a flood.  Then it
    reads ahead (up to ``read_ahead`` more, a few microseconds each) and sorts what it read:

    * Every REQUEST (and any other message) is handled at once.  A REQUEST finishes an
      exchange the server has already paid an OFFER for; behind a queue of DISCOVERs it would
      wait, and its client would give up on it.
    * DISCOVERs are held (:class:`~pxetwist.dhcp.backlog.HeldDiscovers`: by source address,
      the sources taking turns, each one's oldest first; dropped once older than a client
      waits, by the kernel's receive timestamp, or past ``held_max``) and up to ``batch`` of
      them handled per turn of the reactor (``call_soon`` brings the next turn when the socket
      has nothing new).

    A burst the server can answer in time is answered whole; a flood costs the server the
    reading of what it drops, real clients' REQUESTs keep their place, and a DISCOVER from
    anywhere but the flood's source waits for at most one of the flood's per turn.
    """

    def __init__(
        self,
        sock: socket.socket,
        handler: DatagramHandler,
        batch: int = 64,
        read_ahead: int = 16384,
        held_max: int = HELD_LIMIT,
        stale_after: float = STALE_AFTER,
        call_soon: Callable[[Callable[[], None]], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.socket = sock
        self.handler = handler
        self.batch = batch
        self.read_ahead = read_ahead
        self.call_soon = call_soon
        self.clock = clock
        self.wall_clock = wall_clock  # the kernel's timestamps are CLOCK_REALTIME
        self.errors = 0  # handler failures since the start
        self._held: HeldDiscovers[_Datagram] = HeldDiscovers(stale_after, held_max)
        self._serving_soon = False
        self._error_log_at = float("-inf")
        self._drops_logged = (0, 0)
        self._drops_log_at = 0.0
        # Packets arrive for a handful of destinations (our address, broadcasts): parse each
        # IP_PKTINFO address once.
        self._destinations: dict[bytes, IPv4Address] = {}

    @property
    def held(self) -> int:
        """DISCOVERs read and not yet handled."""
        return len(self._held)

    @property
    def stale(self) -> int:
        """DISCOVERs dropped since the start for their age."""
        return self._held.stale

    @property
    def overflow(self) -> int:
        """DISCOVERs dropped since the start for want of room."""
        return self._held.overflow

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "dhcp-socket"

    def doRead(self) -> None:
        received, stamps = self._receive(self.batch)
        if len(received) < self.batch and not self._held:
            self._handle(received)  # keeping up: in order, as they came
            return
        if len(received) >= self.batch:
            more, more_stamps = self._receive(self.read_ahead)
            received += more
            stamps += more_stamps
        others: list[_Datagram] = []
        held = self._held
        read_at = self.wall_clock()
        for item, stamp in zip(received, stamps, strict=True):
            if peek_discover(item[0]):
                queued_at = _stamp_seconds(stamp) if len(stamp) >= _TIMESPEC.size else read_at
                held.hold(queued_at, item, item[1][0])  # by source: a relay, or the link
            else:
                others.append(item)
        self._handle(others)
        self._serve_held()

    def _receive(self, count: int) -> tuple[list[_Datagram], list[bytes]]:
        """Up to ``count`` datagrams, and each one's ``SCM_TIMESTAMPNS`` (``b""`` if none)."""
        recvmsg = self.socket.recvmsg
        destinations = self._destinations
        received: list[_Datagram] = []
        stamps: list[bytes] = []
        for _ in range(count):
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
        return received, stamps

    def _handle(self, received: list[_Datagram]) -> None:
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

    def _serve_held(self) -> None:
        """Handle a batch of the held DISCOVERs; the next batch on the next turn."""
        held = self._held
        self._handle(held.take(self.batch, self.wall_clock()))
        if held and not self._serving_soon and self.call_soon is not None:
            self._serving_soon = True
            self.call_soon(self._serve_held_soon)
        if (held.stale, held.overflow) != self._drops_logged:
            self._log_drops()

    def _serve_held_soon(self) -> None:
        self._serving_soon = False
        self._serve_held()

    def _log_drops(self) -> None:
        now = self.clock()
        if now - self._drops_log_at < 1.0:
            return
        stale, overflow = self._drops_logged
        log.warn(
            "dhcp socket behind: {stale} DISCOVERs dropped unanswered after waiting more than "
            "{limit:g} s and {overflow} past the {held_max} held, since the last report "
            "({total} in all); their clients will retry",
            stale=self.stale - stale,
            limit=self._held.stale_after,
            overflow=self.overflow - overflow,
            held_max=self._held.limit,
            total=self.stale + self.overflow,
        )
        self._drops_logged = (self.stale, self.overflow)
        self._drops_log_at = now

    def close(self) -> None:
        """Stop serving: the held DISCOVERs are forgotten and the socket closed."""
        self._held.clear()
        self.socket.close()

    def connectionLost(self, reason: Failure) -> None:
        self.close()


def _stamp_seconds(stamp: bytes) -> float:
    seconds, nanoseconds = _TIMESPEC.unpack_from(stamp)
    return float(seconds + nanoseconds * 1e-9)

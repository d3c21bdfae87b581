"""The DHCP socket's reader when the server is behind: what it answers and what it sheds.

A full batch means the server is behind.  A DISCOVER that waited more than ``stale_after`` in
the kernel's queue is dropped (its client retransmits at 4 s, RFC 2131 §4.1); a queue filling
most of the receive buffer is a flood, and then REQUESTs go first and at most a quota of the
latest DISCOVERs follows.  A power-on burst the server can answer in time is answered whole.
The first tests feed the reader a scripted socket; the last ones use a real socket on
loopback, so the kernel's own timestamps and buffer accounting are what is read.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp.options import MessageType, OptionCode
from pxetwist.dhcp.packet import DhcpPacket, decode, encode
from pxetwist.dhcp.sockets import STALE_AFTER, DatagramReader, open_udp_socket

_SO_TIMESTAMPNS = 35
NOW = 1_800_000_000.0  # the scripted wall clock


def datagram(kind: MessageType, n: int) -> bytes:
    options = [(OptionCode.MESSAGE_TYPE, bytes((kind,)))]
    return encode(DhcpPacket(xid=n, chaddr=bytes(5) + bytes((n,)), options=options))


def stamp(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@qq", whole, int((seconds - whole) * 1e9))


class _QueuedSocket:
    """Datagrams waiting, each queued ``age`` seconds ago, in a buffer ``fill`` parts full."""

    def __init__(self, waiting: list[tuple[bytes, float]], fill: float) -> None:
        self.waiting = list(waiting)
        self.fill = fill

    def recvmsg(self, size: int, ancillary: int) -> tuple[bytes, list[Any], int, tuple[str, int]]:
        if not self.waiting:
            raise BlockingIOError
        data, age = self.waiting.pop(0)
        return data, [(socket.SOL_SOCKET, _SO_TIMESTAMPNS, stamp(NOW - age))], 0, ("10.9.0.2", 67)

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return struct.pack("=II", int(self.fill * 1000), 1000)


D, R = MessageType.DISCOVER, MessageType.REQUEST


class BehindTests(SynchronousTestCase):
    def read(
        self, kinds: list[tuple[MessageType, float]], fill: float, batch: int = 4
    ) -> tuple[list[int], DatagramReader]:
        """xids handled, in order, of one wake-up with ``(kind, age)`` datagrams queued."""
        waiting = [(datagram(kind, n), age) for n, (kind, age) in enumerate(kinds)]
        seen: list[int] = []
        reader = DatagramReader(
            _QueuedSocket(waiting, fill),  # type: ignore[arg-type]
            lambda data, source, destination: seen.append(decode(data).xid),
            batch=batch,
            discover_quota=1,
            wall_clock=lambda: NOW,
        )
        reader.doRead()
        return seen, reader

    def test_a_flood_sends_requests_first_and_the_latest_discover(self) -> None:
        seen, reader = self.read([(D, 0.1), (R, 0.1), (D, 0.1), (D, 0.1), (D, 0.1)], fill=0.9)
        self.assertEqual(seen, [1, 3])
        self.assertEqual((reader.shed, reader.stale), (2, 0))

    def test_a_burst_answered_in_time_is_answered_whole(self) -> None:
        """A third of the buffer taken (a power-on burst of 2,000) is not a flood."""
        seen, reader = self.read([(D, 0.5), (R, 0.4), (D, 0.3), (D, 0.2), (D, 0.1)], fill=0.35)
        self.assertEqual((seen, reader.shed, reader.stale), ([0, 1, 2, 3], 0, 0))

    def test_discovers_waiting_too_long_are_dropped(self) -> None:
        """Older than ``stale_after``: DISCOVERs dropped, the REQUEST answered all the same."""
        old = STALE_AFTER + 0.5
        seen, reader = self.read([(D, old), (R, old), (D, old), (D, 1.0), (D, 0.5)], fill=0.35)
        self.assertEqual(seen, [1, 3])
        self.assertEqual((reader.shed, reader.stale), (0, 2))

    def test_a_pause_is_not_a_backlog(self) -> None:
        """Old datagrams in less than a batch: the reactor was paused, the queue is empty now."""
        old = STALE_AFTER * 3
        seen, reader = self.read([(D, old), (R, old), (D, old)], fill=0.9)
        self.assertEqual((seen, reader.shed, reader.stale), ([0, 1, 2], 0, 0))

    def test_without_timestamps_only_the_flood_rule_applies(self) -> None:
        class Unstamped(_QueuedSocket):
            def recvmsg(self, size: int, ancillary: int) -> Any:
                data, _, flags, source = super().recvmsg(size, ancillary)
                return data, [], flags, source

        waiting = [(datagram(kind, n), 60.0) for n, kind in enumerate([D, R, D, D])]
        seen: list[int] = []
        reader = DatagramReader(
            Unstamped(waiting, fill=0.1),  # type: ignore[arg-type]
            lambda data, source, destination: seen.append(decode(data).xid),
            batch=4,
            wall_clock=lambda: NOW,
        )
        reader.doRead()
        self.assertEqual((seen, reader.stale), ([0, 1, 2, 3], 0))


class KernelTimestampTests(SynchronousTestCase):
    """A real socket on loopback: the kernel stamps each datagram and reports its queue."""

    def setUp(self) -> None:
        self.server = open_udp_socket(None, 0, "127.0.0.1")
        self.addCleanup(self.server.close)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.client.close)

    def queue(self, kinds: list[MessageType]) -> None:
        for n, kind in enumerate(kinds):
            self.client.sendto(datagram(kind, n), self.server.getsockname())
        # loopback queues a datagram before sendto returns
        self.assertEqual(select.select([self.server], [], [], 5)[0], [self.server])

    def read_at(self, wall_clock: float, batch: int = 4) -> tuple[list[int], DatagramReader]:
        seen: list[int] = []
        reader = DatagramReader(
            self.server,
            lambda data, source, destination: seen.append(decode(data).xid),
            batch=batch,
            wall_clock=lambda: wall_clock,
        )
        reader.doRead()
        return seen, reader

    def test_the_kernels_timestamps_age_the_queue(self) -> None:
        self.queue([D, R, D, D, D])
        time.sleep(0.05)
        seen, reader = self.read_at(time.time() + STALE_AFTER)  # as if 2 s went by
        self.assertEqual((seen, reader.stale), ([1], 3))
        seen, reader = self.read_at(time.time())  # the fifth, read now: fresh, less than a batch
        self.assertEqual((seen, reader.stale), ([4], 0))

    def test_fresh_datagrams_are_all_answered(self) -> None:
        self.queue([D, R, D, D, D])
        seen, reader = self.read_at(time.time())
        self.assertEqual((seen, reader.stale, reader.shed), ([0, 1, 2, 3], 0, 0))

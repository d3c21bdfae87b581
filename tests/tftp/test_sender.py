"""The datagram sender under every transfer: a lockstep block straight to the socket.

A full socket buffer is a lost block (the session's timer resends it, RFC 1350 §2); any other
send error is logged, and neither ends the transfer nor raises into the reactor.
"""

from __future__ import annotations

import errno
import socket

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.tftp.sockets import Sender


class _FailingSocket(socket.socket):
    """A real UDP socket whose every send fails with ``error``."""

    error = errno.EAGAIN

    def sendto(self, *args: object) -> int:  # type: ignore[override]
        raise OSError(self.error, "refused by the test")


class _Transport:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, datagram: bytes, peer: tuple[str, int]) -> None:
        self.written.append((datagram, peer))


class SendOneTests(SynchronousTestCase):
    def udp(self, kind: type[socket.socket] = socket.socket) -> socket.socket:
        sock = kind(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        return sock

    def test_a_block_reaches_the_peer(self) -> None:
        server, client = self.udp(), self.udp()
        client.settimeout(5)
        Sender(server, client.getsockname(), 1500).send_one(b"\x00\x03\x00\x01block")
        data, source = client.recvfrom(2048)
        self.assertEqual((data, source), (b"\x00\x03\x00\x01block", server.getsockname()))

    def test_a_full_buffer_is_a_quiet_loss(self) -> None:
        sock = self.udp(_FailingSocket)
        with capturedLogs() as events:
            Sender(sock, ("127.0.0.1", 9), 1500).send_one(b"block")
        self.assertEqual(events, [])

    def test_any_other_error_is_logged_not_raised(self) -> None:
        sock = self.udp(_FailingSocket)
        assert isinstance(sock, _FailingSocket)
        sock.error = errno.ENETUNREACH
        with capturedLogs() as events:
            Sender(sock, ("127.0.0.1", 9), 1500).send_one(b"block")
        self.assertEqual(len(events), 1)
        self.assertIn("cannot send to 127.0.0.1:9", formatEvent(events[0]))

    def test_without_a_socket_the_transport_writes(self) -> None:
        transport = _Transport()
        Sender(transport, ("127.0.0.1", 9), 1500).send_one(b"block")
        self.assertEqual(transport.written, [(b"block", ("127.0.0.1", 9))])

"""The bounded, paced flood the fuzzers share (pxetwist/lab/flood.py)."""

from __future__ import annotations

import socket
import time

from twisted.trial.unittest import TestCase

from pxetwist.lab.flood import paced, send_bounded


class PacedTests(TestCase):
    def test_no_cap_yields_everything_in_order(self) -> None:
        items = [bytes([i]) for i in range(200)]
        self.assertEqual(list(paced(items, 0, time.monotonic() + 60)), items)

    def test_stops_at_the_deadline(self) -> None:
        self.assertEqual(list(paced([b"x"] * 10, 0, time.monotonic() - 1)), [])

    def test_keeps_to_the_rate(self) -> None:
        began = time.monotonic()
        out = list(paced([b"x"] * 129, 1000, began + 60))  # the 129th waits for 128 ms
        self.assertEqual(len(out), 129)
        self.assertGreaterEqual(time.monotonic() - began, 0.12)


class SendBoundedTests(TestCase):
    def test_delivers_on_loopback(self) -> None:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.setblocking(False)
        send_bounded(sender, b"hello", receiver.getsockname())
        self.assertEqual(receiver.recvfrom(100)[0], b"hello")

    def test_an_unsendable_datagram_returns_instead_of_raising(self) -> None:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.setblocking(False)
        send_bounded(sender, b"x" * 70000, ("127.0.0.1", 9))  # EMSGSIZE: an OSError

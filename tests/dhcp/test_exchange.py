"""The small helpers every reply and event use: ``is_zero`` and ``address_text``."""

from __future__ import annotations

from ipaddress import IPv4Address

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp import exchange
from pxetwist.dhcp.exchange import ZERO, address_text, is_zero


class AddressHelperTests(SynchronousTestCase):
    def test_is_zero(self) -> None:
        self.assertTrue(is_zero(ZERO))
        self.assertTrue(is_zero(IPv4Address("0.0.0.0")))
        self.assertFalse(is_zero(IPv4Address("0.0.0.1")))

    def test_address_text_is_str(self) -> None:
        for text in ("10.77.0.1", "255.255.255.255", "0.0.0.0", "192.0.2.200"):
            self.assertEqual(address_text(IPv4Address(text)), text)
            self.assertEqual(address_text(IPv4Address(text)), text)  # remembered, still right

    def test_address_text_memo_is_bounded(self) -> None:
        """A pool of 100,000 addresses must not keep 100,000 strings for ever."""
        for n in range(70000):
            address = IPv4Address(0x0A000000 + n)
            self.assertEqual(address_text(address), str(address))
        self.assertLessEqual(len(exchange._ADDRESS_TEXT), 65536)

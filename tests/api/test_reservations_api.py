"""``POST /api/v1/machines`` with an ``address`` (issue 14): a DHCP reservation at once.

A real listener on 127.0.0.1 in front of the DHCP service the server runs (its lease table is
the one the API reads and the one the overlay's changes rebuild); the DHCP answers are the
engine's, for a DISCOVER put through it, and the explain route's.
"""

from __future__ import annotations

from collections.abc import Generator
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from twisted.internet import defer, reactor

from pxetwist.api.leaseview import TableLeaseView
from pxetwist.api.service import ApiService
from pxetwist.context import ServerContext
from pxetwist.dhcp.engine import SERVER_PORT, DhcpEngine, Interface, Outcome
from pxetwist.dhcp.packet import decode, encode
from pxetwist.dhcp.service import DhcpService
from pxetwist.explain import build_discover
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.overlay import MachineOverlay
from pxetwist.policy.plugins import build_policies
from pxetwist.policy.values import MacAddress
from tests.api.support import WRITE, ApiTestCase, overlay_file

Gen = Generator[defer.Deferred[Any], Any, None]

MAC = "52:54:00:77:00:aa"
ADDRESS = "10.77.1.7"  # inside the range: anyone's until reserved
SERVER = IPv4Address("10.77.0.1")


class ReservationApiTests(ApiTestCase):
    # explain puts its DISCOVER in on an interface with this address: one in the subnet.
    extra_config = f"server_address: {SERVER}"

    def make_service(self) -> ApiService:
        served = (InterfaceInfo("srv0", 7, IPv4Interface(f"{SERVER}/16"), 1500),)
        context = ServerContext.build(
            self.config,
            PolicyChain(build_policies(self.config), reactor),
            reactor,  # type: ignore[arg-type]
            interfaces=served,
        )
        self.dhcp = DhcpService(context)
        self.context.leases = TableLeaseView(
            lambda: self.dhcp.table, lambda: self.store, lambda: self.now
        )
        return super().make_service()

    def discover(self, mac: str, requested: str | None = None) -> IPv4Address:
        """The address the server's DHCP engine offers ``mac`` now."""
        packet = build_discover(
            MacAddress.parse(mac), arch=0, vendor_class=None, user_class=None, client_uuid=None
        )
        if requested is not None:
            packet = packet.with_option(50, IPv4Address(requested).packed)
        engine = DhcpEngine(self.config, self.dhcp.table, [SERVER])
        interface = Interface("srv0", SERVER, self.config.dhcp.subnets[0].network)
        exchange = engine.receive(
            encode(packet),
            interface=interface,
            port=SERVER_PORT,
            source=("0.0.0.0", 68),
            to_broadcast=True,
            now=self.now,
        )
        assert not isinstance(exchange, Outcome)
        outcome = engine.answer(exchange, self.now)
        self.assertEqual(len(outcome.replies), 1, outcome.reason)
        return outcome.replies[0].packet.yiaddr

    @defer.inlineCallbacks
    def test_posted_address_is_offered_at_once_and_freed_by_delete(self) -> Gen:
        body = {"mac": MAC, "name": "res1", "kernel": "vmlinuz", "address": ADDRESS}
        status, answer, _ = yield self.call("POST", "/api/v1/machines", WRITE, body=body)
        self.assertEqual((status, answer["address"]), (201, ADDRESS), answer)
        status, listed, _ = yield self.call("GET", f"/api/v1/machines/{MAC}")
        self.assertEqual((status, listed["address"], listed["source"]), (200, ADDRESS, "api"))
        # The DHCP answer: the machine gets its address, a stranger asking for it does not.
        self.assertEqual(self.discover(MAC), IPv4Address(ADDRESS))
        self.assertNotEqual(self.discover("52:54:00:99:00:01", ADDRESS), IPv4Address(ADDRESS))
        # explain answers as the server does: its OFFER carries the reserved address.
        status, explained, _ = yield self.call(
            "GET", "/api/v1/explain", params={"mac": MAC, "arch": "0"}
        )
        self.assertEqual(status, 200)
        offer = decode(bytes.fromhex(explained["steps"][0]["replies"][0]["hex"]))
        self.assertEqual(offer.yiaddr, IPv4Address(ADDRESS))
        self.assertIn(ADDRESS, overlay_file(self.dir).read_text())
        # Deleted: the address is anyone's again.
        status, _, _ = yield self.call("DELETE", f"/api/v1/machines/{MAC}", WRITE)
        self.assertEqual(status, 204)
        self.assertNotIn(MacAddress.parse(MAC), self.dhcp.table.pools()[0].reservations)
        self.now += 3600  # the offer the machine was made above runs out
        self.assertEqual(self.discover("52:54:00:99:00:02", ADDRESS), IPv4Address(ADDRESS))

    @defer.inlineCallbacks
    def test_address_changed_by_patch_moves_the_reservation(self) -> Gen:
        body = {"mac": MAC, "kernel": "vmlinuz", "address": ADDRESS}
        status, _, _ = yield self.call("POST", "/api/v1/machines", WRITE, body=body)
        self.assertEqual(status, 201)
        patch = {"address": "10.77.0.61"}
        status, answer, _ = yield self.call("PATCH", f"/api/v1/machines/{MAC}", WRITE, body=patch)
        self.assertEqual((status, answer["address"]), (200, "10.77.0.61"))
        self.assertEqual(self.discover(MAC), IPv4Address("10.77.0.61"))
        status, answer, _ = yield self.call(
            "PATCH", f"/api/v1/machines/{MAC}", WRITE, body={"address": None}
        )
        self.assertEqual(status, 200)
        self.assertNotIn("address", answer)
        self.assertNotIn(MacAddress.parse(MAC), self.dhcp.table.pools()[0].reservations)

    @defer.inlineCallbacks
    def test_refusals_name_the_field_address_and_change_nothing(self) -> Gen:
        network = self.config.dhcp.subnets[0].network
        held = MacAddress.parse("52:54:00:aa:00:01")  # another client's lease:
        lease = self.dhcp.table.bind(None, held, IPv4Address("10.77.1.9"), network, self.now, 600)
        self.assertIsNotNone(lease)
        cases = (
            ("192.0.2.7", 422, "no dhcp subnet"),
            ("10.77.0.50", 409, "node1"),  # the config's reservation for node1
            ("10.77.1.9", 409, "52:54:00:aa:00:01"),
            ("not-an-ip", 422, "IPv4"),
        )
        for address, want, words in cases:
            body = {"mac": MAC, "kernel": "vmlinuz", "address": address}
            status, answer, _ = yield self.call("POST", "/api/v1/machines", WRITE, body=body)
            self.assertEqual((status, answer["field"]), (want, "address"), answer)
            self.assertIn(words, answer["message"])
        self.assertIsNone(MachineOverlay.for_config(self.config).get(MacAddress.parse(MAC)))
        self.assertFalse(overlay_file(self.dir).exists())
        # The PUT path checks the same way.
        status, answer, _ = yield self.call(
            "PUT", f"/api/v1/machines/{MAC}", WRITE, body={"address": "10.77.1.9"}
        )
        self.assertEqual((status, answer["field"]), (409, "address"))
        self.assertEqual(
            self.dhcp.table.pools()[0].reservations,
            {MacAddress.parse("52:54:00:77:00:10"): IPv4Address("10.77.0.50")},
        )

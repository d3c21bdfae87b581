"""The sighting registry lets TFTP and HTTP identify a machine by its address."""

from ipaddress import IPv4Address
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.policy.sightings import SightingRegistry, read_neighbours
from pxetwist.policy.values import MacAddress, Stage
from pxetwist.testing import make_request
from tests.util import temp_dir

A = IPv4Address("10.77.0.50")
B = IPv4Address("10.77.0.51")


class SightingRegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.neighbours: dict[IPv4Address, MacAddress] = {}
        self.registry = SightingRegistry(
            self.clock.seconds, capacity=2, neighbours=lambda: self.neighbours
        )

    def test_request_for_an_address_keeps_the_dhcp_details(self) -> None:
        self.registry.record(make_request("52:54:00:00:00:01", arch=7), A)
        request = self.registry.request_for(stage=Stage.TFTP, address=A, path="grub/grub.cfg")
        assert request is not None
        self.assertEqual(str(request.mac), "52:54:00:00:00:01")
        self.assertEqual(
            (int(request.arch or -1), request.stage, request.path), (7, Stage.TFTP, "grub/grub.cfg")
        )

    def test_address_moves_with_the_machine(self) -> None:
        mac = MacAddress.parse("52:54:00:00:00:01")
        self.registry.record(make_request(mac), A)
        self.registry.record(make_request(mac), B)
        self.assertIsNone(self.registry.mac_at(A))
        self.assertEqual(self.registry.mac_at(B), mac)

    def test_unknown_address_falls_back_to_the_neighbour_table(self) -> None:
        self.neighbours[A] = MacAddress.parse("52:54:00:00:00:09")
        request = self.registry.request_for(stage=Stage.HTTP, address=A)
        assert request is not None
        self.assertEqual(str(request.mac), "52:54:00:00:00:09")
        self.assertEqual(request.arches, ())

    def test_unknown_everything(self) -> None:
        self.assertIsNone(self.registry.request_for(stage=Stage.TFTP, address=A))

    def test_capacity_drops_the_least_recent(self) -> None:
        for index in range(3):
            self.registry.record(
                make_request(f"52:54:00:00:00:0{index}"), IPv4Address(f"10.0.0.{index}")
            )
        self.assertIsNone(self.registry.mac_at(IPv4Address("10.0.0.0")))
        self.assertIsNotNone(self.registry.mac_at(IPv4Address("10.0.0.2")))


class NeighbourTableTests(SynchronousTestCase):
    def test_parses_proc_net_arp(self) -> None:
        path = temp_dir(self) / "arp"
        path.write_text(
            "IP address       HW type     Flags       HW address            Mask     Device\n"
            "10.77.0.50       0x1         0x2         52:54:00:77:00:10     *        srv0\n"
            "10.77.0.51       0x1         0x0         00:00:00:00:00:00     *        srv0\n"
        )
        self.assertEqual(read_neighbours(Path(path)), {A: MacAddress.parse("52:54:00:77:00:10")})

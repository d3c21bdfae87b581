"""Reservations made through the API (issue 14): checked like the config's, live at once.

The DHCP service is built on a deterministic clock and never opens a socket: what is checked
is its lease table, which it rebuilds when the machine overlay changes.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config import ConfigError, load_config
from pxetwist.context import ServerContext
from pxetwist.dhcp.service import DhcpService
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.overlay import AddressReserved, MachineOverlay
from pxetwist.policy.plugins import build_policies
from pxetwist.policy.values import MacAddress
from tests.util import temp_dir

CONFIG = """\
data_dir: {data}
dhcp:
  mode: authoritative
  subnets:
    - network: 10.77.0.0/16
      range: [10.77.1.1, 10.77.1.20]
tftp: {{enabled: false}}
http: {{enabled: false}}
machines:
  - mac: 52:54:00:77:00:10
    name: node1
    address: 10.77.0.50
"""

NETWORK = IPv4Network("10.77.0.0/16")
RESERVED = MacAddress.parse("52:54:00:77:00:aa")
STRANGER = MacAddress.parse("52:54:00:99:00:01")
IN_RANGE = IPv4Address("10.77.1.5")
OUTSIDE_RANGE = IPv4Address("10.77.0.60")


class ApiReservationTests(SynchronousTestCase):
    def setUp(self) -> None:
        MachineOverlay.forget_all()
        self.addCleanup(MachineOverlay.forget_all)
        self.dir = temp_dir(self)
        path = self.dir / "pxe.yaml"
        path.write_text(CONFIG.format(data=self.dir))
        self.config = load_config(path)
        self.clock = Clock()
        self.clock.advance(1_000_000.0)
        self.dhcp = self.start()
        self.overlay = MachineOverlay.for_config(self.config)

    def start(self) -> DhcpService:
        """A DHCP service as ``twistd pxe`` builds it (no sockets: none is opened before
        privilegedStartService)."""
        served = (InterfaceInfo("srv0", 7, IPv4Interface("10.77.0.1/16"), 1500),)
        context = ServerContext.build(
            self.config,
            PolicyChain(build_policies(self.config), self.clock),
            self.clock,  # type: ignore[arg-type]
            interfaces=served,
        )
        return DhcpService(context)

    def offered(self, mac: MacAddress, requested: IPv4Address | None = None) -> IPv4Address:
        lease = self.dhcp.table.offer(None, mac, NETWORK, requested, self.clock.seconds(), 30.0)
        assert lease is not None
        return lease.address

    def test_a_reservation_counts_from_the_next_discover(self) -> None:
        before = self.offered(RESERVED)
        self.assertNotEqual(before, OUTSIDE_RANGE)
        self.overlay.put({"mac": str(RESERVED), "kernel": "k", "address": str(OUTSIDE_RANGE)})
        # The machine's held offer is carried over, but its reservation comes first.
        self.assertEqual(self.offered(RESERVED), OUTSIDE_RANGE)
        bound = self.dhcp.table.bind(
            None, RESERVED, OUTSIDE_RANGE, NETWORK, self.clock.seconds(), 3600.0
        )
        self.assertIsNotNone(bound)
        # Its one address per subnet: the offer it held before is gone.
        self.assertIsNone(self.dhcp.table.find_address(before, self.clock.seconds()))
        pool = self.dhcp.table.pools()[0]
        self.assertEqual(pool.reservations[RESERVED], OUTSIDE_RANGE)
        self.assertIn(RESERVED, pool.known)

    def test_a_reserved_address_goes_to_nobody_else_until_the_machine_is_deleted(self) -> None:
        self.overlay.put({"mac": str(RESERVED), "kernel": "k", "address": str(IN_RANGE)})
        now = self.clock.seconds()
        self.assertNotEqual(self.offered(STRANGER, IN_RANGE), IN_RANGE)
        self.assertIsNone(self.dhcp.table.bind(None, STRANGER, IN_RANGE, NETWORK, now, 3600.0))
        self.assertTrue(self.overlay.remove(RESERVED))
        self.assertNotIn(RESERVED, self.dhcp.table.pools()[0].reservations)
        self.assertNotIn(RESERVED, self.dhcp.table.pools()[0].known)
        # (The first stranger is offered its own held address again, RFC 2131 §4.3.1.)
        newcomer = MacAddress.parse("52:54:00:99:00:02")
        self.assertEqual(self.offered(newcomer, IN_RANGE), IN_RANGE)

    def test_a_change_of_address_moves_the_reservation(self) -> None:
        self.overlay.put({"mac": str(RESERVED), "kernel": "k", "address": str(IN_RANGE)})
        self.overlay.put({"mac": str(RESERVED), "kernel": "k", "address": str(OUTSIDE_RANGE)})
        self.assertEqual(self.dhcp.table.pools()[0].reservations[RESERVED], OUTSIDE_RANGE)
        self.assertEqual(self.offered(STRANGER, IN_RANGE), IN_RANGE)
        self.assertEqual(self.offered(RESERVED), OUTSIDE_RANGE)

    def test_leases_survive_the_rebuild(self) -> None:
        now = self.clock.seconds()
        lease = self.dhcp.table.bind(None, STRANGER, IN_RANGE, NETWORK, now, 3600.0)
        assert lease is not None
        self.overlay.put({"mac": str(RESERVED), "kernel": "k", "address": str(OUTSIDE_RANGE)})
        self.assertEqual(self.dhcp.table.find_client(None, STRANGER, now), lease)

    def test_an_address_outside_every_subnet_is_refused_naming_address(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.overlay.put({"mac": str(RESERVED), "address": "192.0.2.7"})
        self.assertEqual(caught.exception.path, ("address",))
        self.assertIn("no dhcp subnet", caught.exception.message)
        self.assertNotIsInstance(caught.exception, AddressReserved)
        self.assertIsNone(self.overlay.get(RESERVED))

    def test_another_machines_address_is_refused_naming_address(self) -> None:
        with self.assertRaises(AddressReserved) as caught:
            self.overlay.put({"mac": str(RESERVED), "address": "10.77.0.50"})  # node1's
        self.assertEqual(caught.exception.path, ("address",))
        self.assertIn("node1", caught.exception.message)
        self.overlay.put({"mac": str(RESERVED), "address": str(IN_RANGE)})
        with self.assertRaises(AddressReserved):
            self.overlay.put({"mac": str(STRANGER), "address": str(IN_RANGE)})
        self.assertIsNone(self.overlay.get(STRANGER))
        self.assertEqual(
            self.dhcp.table.pools()[0].reservations,
            {
                MacAddress.parse("52:54:00:77:00:10"): IPv4Address("10.77.0.50"),
                RESERVED: IN_RANGE,
            },
        )

    def test_redefining_a_config_machine_may_keep_or_move_its_address(self) -> None:
        node1 = MacAddress.parse("52:54:00:77:00:10")
        self.overlay.put({"mac": str(node1), "address": "10.77.0.50", "kernel": "k"})
        self.overlay.put({"mac": str(node1), "address": str(OUTSIDE_RANGE), "kernel": "k"})
        self.assertEqual(self.dhcp.table.pools()[0].reservations, {node1: OUTSIDE_RANGE})
        # node1's config address is free again: another machine may have it.
        self.overlay.put({"mac": str(RESERVED), "address": "10.77.0.50"})
        self.assertEqual(
            self.dhcp.table.pools()[0].reservations[RESERVED], IPv4Address("10.77.0.50")
        )

    def test_the_reservation_survives_a_restart(self) -> None:
        self.overlay.put({"mac": str(RESERVED), "kernel": "k", "address": str(IN_RANGE)})
        MachineOverlay.forget_all()  # a new process: the overlay is read from machines.json
        self.dhcp = self.start()
        self.assertEqual(self.dhcp.table.pools()[0].reservations[RESERVED], IN_RANGE)
        self.assertNotEqual(self.offered(STRANGER, IN_RANGE), IN_RANGE)
        self.assertEqual(self.offered(RESERVED), IN_RANGE)

"""API machines and reservations in the shared PostgreSQL database (issues 14 and 15).

Two servers (two data directories, two overlays, two DHCP services, two lease stores) on one
throw-away database: a machine and its reservation made through one are answered the same way
by the other, and no server's claim can bind a reserved address to another client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, ClassVar

import psycopg
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from pxetwist.config import Config, load_config
from pxetwist.context import ServerContext
from pxetwist.db.schema import ADDRESS_LOCK
from pxetwist.dhcp.leases import Lease, LeaseState
from pxetwist.dhcp.pgstore import AddressClaimed, PostgresLeaseStore
from pxetwist.dhcp.service import DhcpService
from pxetwist.lab.netlab import in_ci
from pxetwist.lab.postgres import PostgresCluster, postgres_available, shared_cluster
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.builtin import StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.overlay import AddressReserved, MachineOverlay
from pxetwist.policy.plugins import build_policies
from pxetwist.policy.sharedmachines import PostgresMachines, SharedMachinesService
from pxetwist.policy.values import MacAddress
from pxetwist.sessions.recorder import in_this_thread
from pxetwist.testing import make_request
from tests.util import temp_dir

reactor: Any = _reactor
Gen = Generator[Any, Any, None]

NET = IPv4Network("10.0.0.0/16")
MACHINE = MacAddress.parse("52:54:00:aa:00:01")
STRANGER = MacAddress.parse("52:54:00:bb:00:01")
RESERVED = IPv4Address("10.0.1.7")

CONFIG = """\
data_dir: {data}
dhcp:
  mode: authoritative
  leases: "{url}"
  subnets:
    - network: 10.0.0.0/16
      range: [10.0.1.1, 10.0.1.50]
tftp: {{enabled: false}}
http: {{enabled: false}}
"""


def bound(mac: MacAddress, address: IPv4Address) -> Lease:
    return Lease(address, NET, None, mac, LeaseState.BOUND, time.time() + 3600)


class Server:
    """One pxetwist's view: its overlay on the database, its DHCP pools, its policy."""

    def __init__(self, test: TestCase, url: str, clock: Clock) -> None:
        directory = temp_dir(test)
        (directory / "pxe.yaml").write_text(CONFIG.format(data=directory, url=url))
        self.config: Config = load_config(directory / "pxe.yaml")
        self.shared = SharedMachinesService(self.config, clock, in_thread=in_this_thread)
        self.shared.startService()
        test.addCleanup(self.shared.stopService)
        self.overlay = MachineOverlay.for_config(self.config)
        served = (InterfaceInfo("srv0", 7, IPv4Interface("10.0.0.1/16"), 1500),)
        context = ServerContext.build(
            self.config,
            PolicyChain(build_policies(self.config), clock),
            clock,  # type: ignore[arg-type]
            interfaces=served,
        )
        self.dhcp = DhcpService(context)

    def reservations(self) -> dict[MacAddress, IPv4Address]:
        return dict(self.dhcp.table.pools()[0].reservations)

    def offered(self, mac: MacAddress, requested: IPv4Address | None = None) -> IPv4Address:
        lease = self.dhcp.table.offer(None, mac, NET, requested, time.time(), 30.0)
        assert lease is not None
        return lease.address


class SharedMachinesTests(TestCase):
    cluster: ClassVar[PostgresCluster | None] = None
    count: ClassVar[int] = 0

    def setUp(self) -> None:
        if not postgres_available():
            if in_ci():
                raise AssertionError("postgresql-15 is missing (scripts/setup.sh --test)")
            raise SkipTest("postgresql-15 is not installed (scripts/setup.sh --test)")
        cluster = type(self).cluster = shared_cluster()
        MachineOverlay.forget_all()
        self.addCleanup(MachineOverlay.forget_all)
        SharedMachinesTests.count += 1
        self.url = cluster.create_database(f"machines{SharedMachinesTests.count}")
        self.clock = Clock()

    def store(self, server: str) -> PostgresLeaseStore:
        store = PostgresLeaseStore(self.url, reactor, server=server)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_a_reservation_made_on_one_server_is_honoured_by_the_other(self) -> Gen:
        a, b = Server(self, self.url, self.clock), Server(self, self.url, self.clock)
        definition = {"mac": str(MACHINE), "name": "r1", "kernel": "k", "address": str(RESERVED)}
        _, created = yield a.overlay.save(definition)
        self.assertTrue(created)
        self.assertEqual(a.reservations(), {MACHINE: RESERVED})
        self.assertEqual(b.reservations(), {})  # B has not looked yet
        self.clock.advance(1.0)  # B's poll: the version moved, it reads the machines again
        self.assertEqual(b.reservations(), {MACHINE: RESERVED})
        self.assertEqual(b.offered(MACHINE), RESERVED)
        self.assertNotEqual(b.offered(STRANGER, RESERVED), RESERVED)
        # B's policy answers the machine as A's does.
        decision = StaticPolicy(b.config).decide(make_request(str(MACHINE)))
        assert decision is not None
        self.assertIn("machine r1", decision.reason)
        # The database itself refuses the reserved address to anyone else, on any server...
        store_b = self.store("server-b")
        with self.assertRaises(AddressClaimed):
            yield store_b.write([bound(STRANGER, RESERVED)])
        # ... and gives it to its machine.
        yield store_b.write([bound(MACHINE, RESERVED)])
        # Deleted through B: A frees the address at its next poll.
        removed = yield b.overlay.delete(MACHINE)
        self.assertTrue(removed)
        self.assertEqual(b.reservations(), {})
        self.clock.advance(1.0)
        self.assertEqual(a.reservations(), {})
        self.assertIsNone(a.overlay.get(MACHINE))

    @defer.inlineCallbacks
    def test_the_database_refuses_what_a_server_could_not_see_yet(self) -> Gen:
        a, b = Server(self, self.url, self.clock), Server(self, self.url, self.clock)
        yield a.overlay.save({"mac": str(MACHINE), "address": str(RESERVED)})
        # B has not polled: its own check passes, the database's unique address does not.
        other = MacAddress.parse("52:54:00:aa:00:02")
        with self.assertRaises(AddressReserved) as caught:
            yield b.overlay.save({"mac": str(other), "address": str(RESERVED)})
        self.assertEqual(caught.exception.path, ("address",))
        self.assertIn(str(MACHINE), caught.exception.message)
        self.assertIsNone(b.overlay.get(other))
        # An address bound by server A's lease store: B cannot reserve it for someone else.
        yield self.store("server-a").write([bound(STRANGER, IPv4Address("10.0.1.8"))])
        with self.assertRaises(AddressReserved) as caught:
            yield b.overlay.save({"mac": str(other), "address": "10.0.1.8"})
        self.assertIn("in use", caught.exception.message)
        self.assertEqual(b.reservations(), {})
        # Nothing half-written: the database holds the one machine A made.
        with psycopg.connect(self.url) as connection:
            rows = connection.execute("SELECT mac, host(address) FROM machines").fetchall()
        self.assertEqual(rows, [(str(MACHINE), str(RESERVED))])

    @defer.inlineCallbacks
    def test_machines_live_in_the_database_not_the_file_and_survive_a_restart(self) -> Gen:
        a = Server(self, self.url, self.clock)
        yield a.overlay.save({"mac": str(MACHINE), "kernel": "k", "address": str(RESERVED)})
        self.assertFalse((a.config.data_dir / "machines.json").exists())
        a.shared.stopService()
        MachineOverlay.forget_all()  # a new process, with another data directory even
        c = Server(self, self.url, self.clock)
        self.assertEqual(c.reservations(), {MACHINE: RESERVED})
        self.assertEqual(c.overlay.definition(MACHINE)["kernel"], "k")  # type: ignore[index]

    @defer.inlineCallbacks
    def test_a_lost_connection_is_reported_once_and_made_again(self) -> Gen:
        a, b = Server(self, self.url, self.clock), Server(self, self.url, self.clock)
        lines: list[str] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "pxetwist.policy.sharedmachines":
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        database = b.shared._database
        assert database is not None
        good = database._url
        database._connection.close()  # the database restarted under B
        database._url = good.replace(f"machines{SharedMachinesTests.count}", "nosuchdb")
        yield a.overlay.save({"mac": str(MACHINE), "address": str(RESERVED)})
        for _ in range(3):
            self.clock.advance(1.0)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("cannot read the database", lines[0])
        self.assertEqual(b.reservations(), {})  # the last known machines meanwhile
        database._url = good  # back
        self.clock.advance(1.0)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("back", lines[1])
        self.assertEqual(b.reservations(), {MACHINE: RESERVED})

    def test_a_claim_waits_for_a_reservation_of_its_address_being_made(self) -> None:
        """The advisory lock orders the two: a claim that started while the reservation's
        transaction was open sees the reservation once it commits, and is lost."""
        PostgresMachines(self.url).close()  # the schema
        address = str(RESERVED)
        with psycopg.connect(self.url, autocommit=True) as reserving:
            results: list[Any] = []
            with reserving.transaction():
                reserving.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (ADDRESS_LOCK, address)
                )
                reserving.execute(
                    "INSERT INTO machines (mac, definition, address, changed_at)"
                    " VALUES (%s, '{}', %s, 0)",
                    (str(MACHINE), address),
                )
                claiming = psycopg.connect(self.url, autocommit=True)
                self.addCleanup(claiming.close)
                pid = claiming.info.backend_pid

                def claim() -> None:
                    row = claiming.execute(
                        "SELECT pxetwist_apply_lease(%s, %s, %s, NULL, %s, 'bound', %s,"
                        " NULL, 'other', %s)",
                        (
                            address,
                            str(NET),
                            b"m" + STRANGER.octets,
                            str(STRANGER),
                            time.time() + 600,
                            time.time(),
                        ),
                    ).fetchone()
                    assert row is not None
                    results.append(row[0])

                thread = threading.Thread(target=claim)
                thread.start()
                deadline = time.monotonic() + 30
                while True:  # until the claim waits on the address's lock
                    waiting = reserving.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
                    ).fetchone()
                    if waiting is not None and waiting[0] == "Lock":
                        break
                    self.assertLess(time.monotonic(), deadline, "the claim never waited")
                    time.sleep(0.02)
                self.assertEqual(results, [])
            thread.join(30)
            self.assertEqual(results, [False])
            held = reserving.execute(
                "SELECT count(*) FROM leases WHERE address = %s AND state = 'bound'", (address,)
            ).fetchone()
            self.assertEqual(held, (0,))

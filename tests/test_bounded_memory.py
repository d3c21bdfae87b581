"""Nothing per client is left behind: a long storm loop of new machines keeps every table bounded.

Issue 16 (memory): a boot storm repeated for minutes, every round new MACs, must not grow the
DHCP lease table or the boot-session registry (and the MAC attribution and sightings that feed
it) past fixed limits.  These tests drive the real tables with many more machines than they may
keep, time moving on as it would over a 10-minute storm loop, and check every container's size
against its bound, and that the sizes stop growing once the tables are full.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import attrs
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp.leases import LeaseTable, Pool
from pxetwist.events import BootEvent
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import MacAddress
from pxetwist.sessions import attribution as attribution_module
from pxetwist.sessions.attribution import PENDING_LIMIT, Attribution
from tests.sessions.events import full_boot
from tests.sessions.test_registry import Harness

NET = IPv4Network("10.9.0.0/24")


def mac(n: int) -> MacAddress:
    return MacAddress(bytes([0x02, 0x16]) + n.to_bytes(4, "big"))


def lease_sizes(table: LeaseTable) -> dict[str, int]:
    (state,) = table._ordered
    return {
        "leases": len(state.leases),
        "by_mac": len(state.by_mac),
        "by_client_id": len(state.by_client_id),
        "offers": len(state.offers),
        "recycle": len(state.recycle),
        "unknown": len(state.unknown),
        "unknown_expiry": len(state.unknown_expiry),
        "changes": len(table._changes),
    }


class LeaseTableBounds(SynchronousTestCase):
    """A /24 pool, 60 rounds of 300 new machines (18,000 MACs), ten simulated minutes."""

    def storm(self, table: LeaseTable, rounds: int, first: int, now: float) -> float:
        for r in range(rounds):
            for i in range(300):
                n = first + r * 300 + i
                client_id = b"\x01" + mac(n).octets
                offer = table.offer(client_id, mac(n), NET, None, now, hold=60.0)
                if offer is not None and i % 3:  # a third never REQUEST (they went elsewhere)
                    table.bind(client_id, mac(n), offer.address, NET, now, lease_time=30.0)
                if offer is not None and i % 7 == 0:
                    table.release(client_id, mac(n), offer.address, now)
                now += 0.033
            table.take_changes()  # the store's group commit takes them every turn
        return now

    def test_storm_loop_keeps_the_lease_table_bounded(self) -> None:
        pool = Pool(NET, IPv4Address("10.9.0.10"), IPv4Address("10.9.0.250"), unknown_limit=200)
        table = LeaseTable([pool])
        size = 241
        now = self.storm(table, 10, 0, 1000.0)
        warm = lease_sizes(table)
        self.storm(table, 50, 10 * 300, now)
        after = lease_sizes(table)
        for key in ("leases", "by_mac", "by_client_id", "offers", "unknown"):
            self.assertLessEqual(after[key], size, key)
        # the heaps keep stale entries, but are swept at twice their live size plus 1024
        self.assertLessEqual(after["recycle"], 2 * size + 1024 + 1)
        self.assertLessEqual(after["unknown_expiry"], 2 * size + 1024 + 1)
        self.assertEqual(after["changes"], 0)
        for key, value in after.items():
            self.assertLessEqual(value, max(warm[key], size) * 2 + 1024, key)


class SessionRegistryBounds(SynchronousTestCase):
    """Boots of many more machines than the registry follows, each from its own address."""

    def storm(self, h: Harness, count: int, first: int, start: float) -> None:
        for n in range(first, first + count):
            events = full_boot(start + n, mac=mac(n))
            client = IPv4Address(int(IPv4Address("10.20.0.0")) + n)
            events = [e if e.client is None else _with_client(e, client) for e in events]
            h.feed(*events)
            if n % 50 == 0:
                h.registry.take_dirty()  # the persistence timer
                h.registry.sweep()

    def test_storm_loop_keeps_sessions_bounded(self) -> None:
        self.patch(attribution_module, "ADDRESS_LIMIT", 500)
        h = Harness(max_machines=100, max_events=20)
        h.sightings = SightingRegistry(h.clock.seconds, capacity=500, neighbours=dict)
        h.attribution = Attribution([h.registry], h.sightings)
        self.storm(h, 300, 0, 1000.0)
        warm = registry_sizes(h)
        self.storm(h, 3000, 300, 5000.0)
        after = registry_sizes(h)
        self.assertLessEqual(after["machines"], 100)
        self.assertLessEqual(after["open"], 100)
        self.assertLessEqual(after["dirty"], 200)
        self.assertLessEqual(after["addresses"], 500)
        self.assertLessEqual(after["pending"], PENDING_LIMIT)
        self.assertLessEqual(after["events"], 100 * (20 + 4 * 20))
        for key, value in after.items():
            self.assertLessEqual(value, max(warm[key], 1) * 2 + 100, key)


def _with_client(event: BootEvent, client: IPv4Address) -> BootEvent:
    return attrs.evolve(event, client=client)


def registry_sizes(h: Harness) -> dict[str, int]:
    registry = h.registry
    machines = registry._machines.values()
    events = sum(
        len(m.current.events if m.current else []) + sum(len(s.events) for s in m.recent)
        for m in machines
    )
    attribution: Attribution = h.attribution
    return {
        "machines": len(registry._machines),
        "open": len(registry._open),
        "dirty": len(registry._dirty),
        "addresses": len(attribution._addresses),
        "pending": attribution.pending,
        "events": events,
    }

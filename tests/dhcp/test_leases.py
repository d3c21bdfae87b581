"""The lease table: RFC 2131 §4.3 allocation and protocol-reference §1.4/§1.7 client identity."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp.leases import Lease, LeaseState, LeaseTable, Pool, removal
from pxetwist.policy.values import MacAddress

NET = IPv4Network("192.0.2.0/24")
NOW = 1_000_000.0
HOLD = 60.0
LEASE = 3600.0


def ip(last: int, network: IPv4Network = NET) -> IPv4Address:
    return network.network_address + last


def mac(n: int) -> MacAddress:
    return MacAddress(bytes((0x52, 0x54, 0x00, 0x00, n >> 8, n & 0xFF)))


def ipxe_id(address: MacAddress) -> bytes:
    """Option 61 as iPXE sends it: hardware type 1, then the MAC (§1.7)."""
    return b"\x01" + address.octets


def make_table(
    first: int | None = 10,
    last: int | None = 20,
    reservations: dict[MacAddress, IPv4Address] | None = None,
    excluded: Iterable[IPv4Address] = (),
) -> LeaseTable:
    return LeaseTable(
        [
            Pool(
                NET,
                None if first is None else ip(first),
                None if last is None else ip(last),
                reservations or {},
                frozenset(excluded),
            )
        ]
    )


def dora(
    table: LeaseTable,
    who: MacAddress,
    now: float = NOW,
    client_id: bytes | None = None,
    requested: IPv4Address | None = None,
) -> Lease:
    offer = table.offer(client_id, who, NET, requested, now, HOLD)
    assert offer is not None
    bound = table.bind(client_id, who, offer.address, NET, now, LEASE)
    assert bound is not None
    return bound


class PoolTests(SynchronousTestCase):
    def test_range_must_be_inside_the_network(self) -> None:
        with self.assertRaises(ValueError):
            Pool(NET, ip(10), IPv4Address("198.51.100.1"), {})

    def test_range_needs_both_ends(self) -> None:
        with self.assertRaises(ValueError):
            Pool(NET, ip(10), None, {})

    def test_reversed_range(self) -> None:
        with self.assertRaises(ValueError):
            Pool(NET, ip(20), ip(10), {})

    def test_reservation_outside_the_network(self) -> None:
        with self.assertRaises(ValueError):
            Pool(NET, ip(10), ip(20), {mac(1): IPv4Address("198.51.100.1")})

    def test_one_address_reserved_twice(self) -> None:
        with self.assertRaises(ValueError):
            Pool(NET, ip(10), ip(20), {mac(1): ip(5), mac(2): ip(5)})

    def test_overlapping_pools(self) -> None:
        with self.assertRaises(ValueError):
            LeaseTable(
                [Pool(NET, None, None, {}), Pool(IPv4Network("192.0.2.128/25"), None, None, {})]
            )

    def test_unknown_network(self) -> None:
        with self.assertRaises(ValueError):
            make_table().offer(None, mac(1), IPv4Network("198.51.100.0/24"), None, NOW, HOLD)

    def test_a_client_needs_a_name(self) -> None:
        with self.assertRaises(ValueError):
            make_table().offer(None, None, NET, None, NOW, HOLD)


class OfferTests(SynchronousTestCase):
    """RFC 2131 §4.3.1 and protocol-reference §1.4."""

    def test_offer_is_held_for_the_client(self) -> None:
        table = make_table()
        offer = table.offer(None, mac(1), NET, None, NOW, HOLD)
        assert offer is not None
        self.assertEqual(offer.state, LeaseState.OFFERED)
        self.assertEqual(offer.expires, NOW + HOLD)
        self.assertEqual(table.find_address(offer.address, NOW + 1), offer)
        self.assertEqual(table.find_client(None, mac(1), NOW + 1), offer)

    def test_retransmitted_discover_gets_the_same_address(self) -> None:
        table = make_table()
        first = table.offer(None, mac(1), NET, None, NOW, HOLD)
        again = table.offer(None, mac(1), NET, None, NOW + 4, HOLD)
        assert first is not None and again is not None
        self.assertEqual(again.address, first.address)
        self.assertEqual(again.expires, NOW + 4 + HOLD)

    def test_nobody_else_gets_a_held_offer_while_the_pool_has_others(self) -> None:
        table = make_table(10, 12)
        first = table.offer(None, mac(1), NET, None, NOW, HOLD)
        second = table.offer(None, mac(2), NET, None, NOW, HOLD)
        assert first is not None and second is not None
        self.assertNotEqual(first.address, second.address)
        third = table.offer(None, mac(3), NET, first.address, NOW + HOLD - 1, HOLD)
        assert third is not None
        self.assertEqual(third.address, ip(12))
        self.assertIsNone(table.bind(None, mac(4), first.address, NET, NOW + 1, LEASE))

    def test_a_full_pool_takes_back_the_oldest_offer(self) -> None:
        """Issue 18 defect 2: an offer is not a lease; held offers are reclaimed oldest first
        before a DISCOVER is told "no free address", and a binding never is."""
        table = make_table(10, 12)
        bound = dora(table, mac(1))
        older = table.offer(None, mac(2), NET, None, NOW + 1, HOLD)
        newer = table.offer(None, mac(3), NET, None, NOW + 2, HOLD)
        assert older is not None and newer is not None
        taken = table.offer(None, mac(4), NET, None, NOW + 3, HOLD)
        assert taken is not None
        self.assertEqual(taken.address, older.address)
        self.assertEqual(table.find_address(older.address, NOW + 3), taken)
        # The client whose offer was taken back is NAKed if it REQUESTs it late...
        self.assertIsNone(table.bind(None, mac(2), older.address, NET, NOW + 4, LEASE))
        # ...and the next full-pool DISCOVER takes the next oldest offer, never the binding.
        again = table.offer(None, mac(5), NET, None, NOW + 5, HOLD)
        assert again is not None
        self.assertEqual(again.address, newer.address)
        self.assertEqual(table.find_address(bound.address, NOW + 5), bound)
        self.assertIsNotNone(table.bind(None, mac(4), taken.address, NET, NOW + 6, LEASE))
        # Only bindings left: nothing to give.
        table.bind(None, mac(5), again.address, NET, NOW + 6, LEASE)
        self.assertIsNone(table.offer(None, mac(6), NET, None, NOW + 7, HOLD))

    def test_an_offer_not_taken_returns_to_the_pool(self) -> None:
        table = make_table(10, 10)
        first = table.offer(None, mac(1), NET, None, NOW, HOLD)
        assert first is not None
        later = table.offer(None, mac(2), NET, None, NOW + HOLD, HOLD)
        assert later is not None
        self.assertEqual(later.address, first.address)

    def test_requested_address_when_free(self) -> None:
        table = make_table()
        offer = table.offer(None, mac(1), NET, ip(17), NOW, HOLD)
        assert offer is not None
        self.assertEqual(offer.address, ip(17))

    def test_requested_address_taken_or_outside_the_range_is_ignored(self) -> None:
        table = make_table()
        taken = dora(table, mac(1), requested=ip(17))
        for requested in (taken.address, ip(30), IPv4Address("198.51.100.7")):
            offer = table.offer(None, mac(2), NET, requested, NOW, HOLD)
            assert offer is not None
            self.assertNotEqual(offer.address, requested)
            table.forget_offer(None, mac(2), NOW)

    def test_current_binding_comes_before_the_requested_address(self) -> None:
        table = make_table()
        bound = dora(table, mac(1))
        offer = table.offer(None, mac(1), NET, ip(19), NOW + 10, HOLD)
        assert offer is not None
        self.assertEqual(offer.address, bound.address)

    def test_reoffered_binding_stays_bound_and_lasts_the_hold(self) -> None:
        table = make_table()
        bound = table.bind(None, mac(1), ip(12), NET, NOW, 30.0)
        assert bound is not None
        table.take_changes()
        offer = table.offer(None, mac(1), NET, None, NOW + 10, HOLD)
        assert offer is not None
        self.assertEqual((offer.state, offer.expires), (LeaseState.BOUND, NOW + 10 + HOLD))
        self.assertEqual(table.take_changes(), [offer])  # the longer hold is persisted
        table.forget_offer(None, mac(1), NOW + 11)  # chose another server: still bound
        self.assertEqual(table.find_address(ip(12), NOW + 11), offer)

    def test_never_used_addresses_come_before_other_clients_old_ones(self) -> None:
        table = make_table(10, 13)
        released = dora(table, mac(1))
        table.release(None, mac(1), released.address, NOW + 1)
        others = [dora(table, mac(n), NOW + 2).address for n in (2, 3, 4)]
        self.assertNotIn(released.address, others)
        # The pool is now full but for mac(1)'s old address: that is what is left.
        self.assertEqual(dora(table, mac(5), NOW + 3).address, released.address)

    def test_returning_client_gets_its_previous_address(self) -> None:
        table = make_table()
        first = dora(table, mac(1))
        table.release(None, mac(1), first.address, NOW + 10)
        for n in range(2, 6):
            dora(table, mac(n), NOW + 20)
        self.assertEqual(dora(table, mac(1), NOW + 30).address, first.address)

    def test_expired_binding_is_given_back_to_its_client(self) -> None:
        table = make_table()
        first = dora(table, mac(1))
        later = NOW + LEASE + 100
        self.assertIsNone(table.find_client(None, mac(1), later))
        self.assertEqual(table.find_client(None, mac(1), later, include_inactive=True), first)
        self.assertEqual(dora(table, mac(1), later).address, first.address)

    def test_oldest_free_address_is_recycled_first(self) -> None:
        table = make_table(10, 12)
        leases = [dora(table, mac(n)) for n in (1, 2, 3)]
        table.release(None, mac(2), leases[1].address, NOW + 5)
        table.release(None, mac(1), leases[0].address, NOW + 6)
        table.release(None, mac(3), leases[2].address, NOW + 7)
        order = [dora(table, mac(n), NOW + 8).address for n in (4, 5, 6)]
        self.assertEqual(order, [leases[1].address, leases[0].address, leases[2].address])

    def test_pool_exhaustion(self) -> None:
        table = make_table(10, 12)
        for n in range(3):
            dora(table, mac(n))
        self.assertIsNone(table.offer(None, mac(9), NET, None, NOW, HOLD))
        self.assertIsNotNone(table.offer(None, mac(9), NET, None, NOW + LEASE, HOLD))

    def test_network_broadcast_and_excluded_addresses_are_never_offered(self) -> None:
        table = LeaseTable(
            [
                Pool(
                    IPv4Network("10.0.0.0/29"),
                    IPv4Address("10.0.0.0"),
                    IPv4Address("10.0.0.7"),
                    {},
                    frozenset({IPv4Address("10.0.0.1")}),
                )
            ]
        )
        network = IPv4Network("10.0.0.0/29")
        got = set()
        for n in range(10):
            offer = table.offer(None, mac(n), network, None, NOW, HOLD)
            if offer is not None:
                got.add(offer.address)
        self.assertEqual(got, {IPv4Address(f"10.0.0.{n}") for n in range(2, 7)})
        self.assertEqual(table.stats(NOW), {network: (5, 5)})

    def test_infinite_lease(self) -> None:
        table = make_table(10, 10)
        bound = table.bind(None, mac(1), ip(10), NET, NOW, math.inf)
        assert bound is not None
        self.assertEqual(table.find_address(ip(10), NOW + 1e9), bound)
        self.assertIsNone(table.offer(None, mac(2), NET, None, NOW + 1e9, HOLD))


class ReservationTests(SynchronousTestCase):
    def test_reserved_address_inside_and_outside_the_range(self) -> None:
        table = make_table(reservations={mac(1): ip(15), mac(2): ip(99)})
        self.assertEqual(dora(table, mac(1)).address, ip(15))
        self.assertEqual(dora(table, mac(2)).address, ip(99))

    def test_reservation_beats_a_dynamic_binding(self) -> None:
        table = make_table()
        dynamic = dora(table, mac(1))
        table.take_changes()
        moved = LeaseTable(
            [Pool(NET, ip(10), ip(20), {mac(1): ip(50)})]
        )  # the operator added a reservation and restarted
        moved.restore([dynamic], NOW + 1)
        offer = moved.offer(None, mac(1), NET, None, NOW + 2, HOLD)
        assert offer is not None
        self.assertEqual(offer.address, ip(50))
        # One client, one address per subnet: the dynamic lease is given back.
        self.assertIsNone(moved.find_address(dynamic.address, NOW + 2))
        self.assertEqual(moved.take_changes(), [removal(dynamic.address, NET, NOW + 2)])

    def test_reserved_addresses_never_go_to_anyone_else(self) -> None:
        table = make_table(10, 12, reservations={mac(1): ip(11)})
        got = {dora(table, mac(n), requested=ip(11)).address for n in (2, 3)}
        self.assertEqual(got, {ip(10), ip(12)})
        self.assertIsNone(table.offer(None, mac(4), NET, ip(11), NOW, HOLD))
        self.assertIsNone(table.bind(None, mac(4), ip(11), NET, NOW, LEASE))
        self.assertEqual(dora(table, mac(1)).address, ip(11))

    def test_reservations_only_network(self) -> None:
        table = make_table(None, None, reservations={mac(1): ip(7)})
        self.assertEqual(dora(table, mac(1)).address, ip(7))
        self.assertIsNone(table.offer(None, mac(2), NET, None, NOW, HOLD))
        self.assertIsNone(table.bind(None, mac(2), ip(8), NET, NOW, LEASE))
        self.assertEqual(table.stats(NOW), {NET: (1, 1)})

    def test_reserved_address_held_by_a_stranger_is_not_taken(self) -> None:
        """A reservation added while someone else holds the address: no double assignment."""
        squatter = Lease(ip(15), NET, None, mac(9), LeaseState.BOUND, NOW + LEASE)
        table = make_table(reservations={mac(1): ip(15)})
        table.restore([squatter], NOW)
        offer = table.offer(None, mac(1), NET, None, NOW, HOLD)
        assert offer is not None
        self.assertNotEqual(offer.address, ip(15))
        # The stranger cannot renew it, so it moves away at its next REQUEST.
        self.assertIsNone(table.bind(None, mac(9), ip(15), NET, NOW + 10, LEASE))


class IdentityTests(SynchronousTestCase):
    """protocol-reference §1.7: option 61 first, chaddr when either side has no 61."""

    def test_pxe_rom_then_ipxe_keep_the_address(self) -> None:
        table = make_table()
        rom = dora(table, mac(1))
        ipxe = dora(table, mac(1), NOW + 5, client_id=ipxe_id(mac(1)))
        self.assertEqual(ipxe.address, rom.address)
        self.assertEqual(ipxe.client_id, ipxe_id(mac(1)))
        kernel = dora(table, mac(1), NOW + 9)  # no option 61 again
        self.assertEqual(kernel.address, rom.address)

    def test_client_id_wins_over_mac(self) -> None:
        table = make_table()
        first = dora(table, mac(1), client_id=b"\xffduid-1")
        moved = dora(table, mac(2), NOW + 1, client_id=b"\xffduid-1")  # same client, other NIC
        self.assertEqual(moved.address, first.address)

    def test_two_client_ids_on_one_mac_are_two_clients(self) -> None:
        table = make_table()
        first = dora(table, mac(1), client_id=b"\xffduid-1")
        second = dora(table, mac(1), client_id=b"\xffduid-2")
        self.assertNotEqual(first.address, second.address)
        self.assertEqual(table.find_client(b"\xffduid-1", mac(1), NOW), first)
        self.assertEqual(table.find_client(b"\xffduid-2", mac(1), NOW), second)

    def test_without_client_id_the_best_of_the_macs_leases(self) -> None:
        table = make_table()
        dora(table, mac(1), client_id=b"\xffduid-1")
        second = dora(table, mac(1), NOW + 10, client_id=b"\xffduid-2")
        self.assertEqual(table.find_client(None, mac(1), NOW + 10), second)
        # A DISCOVER without 61 is both clients: it keeps one address and frees the other.
        offer = table.offer(None, mac(1), NET, None, NOW + 11, HOLD)
        assert offer is not None
        self.assertEqual(offer.address, second.address)
        self.assertEqual([lease.is_removal for lease in table.take_changes()], [False, True])
        self.assertEqual(len([lease for lease in table.leases() if lease.is_active(NOW + 11)]), 1)

    def test_client_in_two_networks(self) -> None:
        other = IPv4Network("198.51.100.0/24")
        table = LeaseTable(
            [
                Pool(NET, ip(10), ip(20), {}),
                Pool(other, ip(10, other), ip(20, other), {}),
            ]
        )
        here = dora(table, mac(1))
        there = table.bind(None, mac(1), ip(15, other), other, NOW + 1, LEASE)
        assert there is not None
        self.assertEqual(table.find_client(None, mac(1), NOW + 2, network=NET), here)
        self.assertEqual(table.find_client(None, mac(1), NOW + 2, network=other), there)
        self.assertEqual(table.find_client(None, mac(1), NOW + 2), there)  # the newest binding


class BindTests(SynchronousTestCase):
    def test_bind_a_free_address_without_an_offer(self) -> None:
        """INIT-REBOOT of a client we forgot: the address is free, so it may have it."""
        table = make_table()
        bound = table.bind(None, mac(1), ip(14), NET, NOW, LEASE, "node1")
        self.assertEqual(
            bound, Lease(ip(14), NET, None, mac(1), LeaseState.BOUND, NOW + LEASE, "node1")
        )
        self.assertEqual(table.take_changes(), [bound])

    def test_bind_refused(self) -> None:
        table = make_table()
        dora(table, mac(1), requested=ip(14))
        self.assertIsNone(table.bind(None, mac(2), ip(14), NET, NOW, LEASE))  # someone else's
        self.assertIsNone(table.bind(None, mac(2), ip(30), NET, NOW, LEASE))  # outside the range
        self.assertIsNone(table.bind(None, mac(2), ip(0), NET, NOW, LEASE))  # network address
        self.assertIsNone(
            table.bind(None, mac(2), IPv4Address("198.51.100.5"), NET, NOW, LEASE)
        )  # other network

    def test_renewal_extends_and_keeps_the_hostname(self) -> None:
        table = make_table()
        bound = table.bind(None, mac(1), ip(14), NET, NOW, LEASE, "node1")
        assert bound is not None
        renewed = table.bind(None, mac(1), ip(14), NET, NOW + 1800, LEASE)
        assert renewed is not None
        self.assertEqual((renewed.expires, renewed.hostname), (NOW + 1800 + LEASE, "node1"))

    def test_binding_elsewhere_frees_the_old_address(self) -> None:
        table = make_table()
        old = dora(table, mac(1))
        table.take_changes()
        new = table.bind(None, mac(1), ip(19), NET, NOW + 1, LEASE)
        assert new is not None
        self.assertIsNone(table.find_address(old.address, NOW + 1))
        self.assertEqual(table.take_changes(), [new, removal(old.address, NET, NOW + 1)])


class ReleaseDeclineTests(SynchronousTestCase):
    def test_release(self) -> None:
        """RFC 2131 §4.3.4: not allocated any more, but the record is kept for reuse."""
        table = make_table()
        bound = dora(table, mac(1))
        table.take_changes()
        released = table.release(None, mac(1), bound.address, NOW + 5)
        assert released is not None
        self.assertEqual((released.state, released.expires), (LeaseState.RELEASED, NOW + 5))
        self.assertIsNone(table.find_address(bound.address, NOW + 5))
        self.assertIsNone(table.find_client(None, mac(1), NOW + 5))
        self.assertEqual(table.take_changes(), [released])

    def test_release_by_someone_else_is_ignored(self) -> None:
        table = make_table()
        bound = dora(table, mac(1))
        self.assertIsNone(table.release(None, mac(2), bound.address, NOW))
        self.assertIsNone(table.release(None, mac(1), ip(19), NOW))
        self.assertEqual(table.find_address(bound.address, NOW), bound)

    def test_decline_quarantines(self) -> None:
        """RFC 2131 §4.3.3: the address is kept out of the pool, then returns."""
        table = make_table(10, 11)
        bound = dora(table, mac(1))
        declined = table.decline(None, mac(1), bound.address, NOW + 1, 600.0)
        assert declined is not None
        self.assertEqual((declined.state, declined.expires), (LeaseState.DECLINED, NOW + 601))
        self.assertEqual(table.find_address(bound.address, NOW + 2), declined)
        self.assertIsNone(table.find_client(None, mac(1), NOW + 2, include_inactive=True))
        again = table.offer(None, mac(1), NET, bound.address, NOW + 2, HOLD)
        assert again is not None
        self.assertNotEqual(again.address, bound.address)
        # The only other address is mac(1)'s offer: taken back, the quarantine never is.
        taken = table.offer(None, mac(2), NET, None, NOW + 2, HOLD)
        assert taken is not None
        self.assertEqual(taken.address, again.address)
        self.assertIsNone(table.bind(None, mac(2), bound.address, NET, NOW + 2, LEASE))
        self.assertEqual(dora(table, mac(2), NOW + 601).address, taken.address)  # its own
        self.assertEqual(dora(table, mac(3), NOW + 601).address, bound.address)

    def test_forget_offer(self) -> None:
        """RFC 2131 §4.3.2: the client chose another server; its offer is free at once."""
        table = make_table(10, 10)
        offer = table.offer(None, mac(1), NET, None, NOW, HOLD)
        assert offer is not None
        table.forget_offer(None, mac(1), NOW + 1)
        self.assertIsNone(table.find_address(offer.address, NOW + 1))
        self.assertEqual(dora(table, mac(2), NOW + 1).address, offer.address)


class ChangesTests(SynchronousTestCase):
    def test_offers_are_not_persisted(self) -> None:
        table = make_table()
        table.offer(None, mac(1), NET, None, NOW, HOLD)
        self.assertEqual(table.take_changes(), [])

    def test_changes_fold_per_address_in_order(self) -> None:
        table = make_table()
        a = dora(table, mac(1))
        b = dora(table, mac(2))
        renewed = table.bind(None, mac(1), a.address, NET, NOW + 5, LEASE)
        self.assertEqual(table.take_changes(), [b, renewed])
        self.assertEqual(table.take_changes(), [])

    def test_restore_gives_back_bindings_and_quarantines(self) -> None:
        table = make_table(10, 13)
        bound = dora(table, mac(1), client_id=ipxe_id(mac(1)))
        released = table.release(None, mac(2), dora(table, mac(2)).address, NOW + 1)
        declined = table.decline(None, mac(3), dora(table, mac(3)).address, NOW + 1, 600.0)
        table.offer(None, mac(4), NET, None, NOW + 1, HOLD)
        stored = table.take_changes()
        self.assertEqual(stored, [bound, released, declined])

        restarted = make_table(10, 13)
        self.assertEqual(restarted.restore(stored, NOW + 2), [])
        self.assertEqual(restarted.find_client(None, mac(1), NOW + 2), bound)
        self.assertEqual(restarted.find_address(bound.address, NOW + 2), bound)
        assert declined is not None and released is not None
        self.assertEqual(restarted.find_address(declined.address, NOW + 2), declined)
        self.assertIsNone(restarted.find_address(released.address, NOW + 2))
        # Serving goes on: the offer was lost, the remaining address and then the released
        # one are handed out, mac(2) still gets its previous address back.
        self.assertEqual(dora(restarted, mac(2), NOW + 3).address, released.address)
        last = restarted.offer(None, mac(5), NET, None, NOW + 3, HOLD)
        assert last is not None
        restarted.bind(None, mac(5), last.address, NET, NOW + 3, LEASE)
        self.assertIsNone(restarted.offer(None, mac(6), NET, None, NOW + 3, HOLD))

    def test_restore_rehomes_and_reports_leases_outside_every_pool(self) -> None:
        wider = IPv4Network("192.0.2.0/23")
        stray = Lease(
            IPv4Address("203.0.113.5"),
            IPv4Network("203.0.113.0/24"),
            None,
            mac(2),
            LeaseState.BOUND,
            NOW + LEASE,
        )
        moved = Lease(ip(15), NET, None, mac(1), LeaseState.BOUND, NOW + LEASE)
        table = LeaseTable([Pool(wider, ip(10), ip(20), {})])
        self.assertEqual(table.restore([moved, stray], NOW), [stray])
        self.assertEqual(table.find_client(None, mac(1), NOW), attrs.evolve(moved, network=wider))


class ScaleTests(SynchronousTestCase):
    def test_hundred_thousand_addresses(self) -> None:
        """Built at once, filled with no scan per DISCOVER, full is reported as full."""
        network = IPv4Network("10.0.0.0/15")
        started = time.perf_counter()
        table = LeaseTable(
            [Pool(network, IPv4Address("10.0.0.1"), IPv4Address("10.1.134.160"), {})]
        )
        self.assertLess(time.perf_counter() - started, 1.0)
        self.assertEqual(table.stats(NOW), {network: (0, 100_000)})
        count = 0
        while (
            offer := table.offer(
                None, MacAddress(count.to_bytes(6, "big")), network, None, NOW, HOLD
            )
        ) is not None:
            table.bind(
                None, MacAddress(count.to_bytes(6, "big")), offer.address, network, NOW, LEASE
            )
            count += 1
        self.assertEqual(count, 100_000)
        self.assertEqual(len(table.take_changes()), 100_000)
        self.assertEqual(table.stats(NOW), {network: (100_000, 100_000)})
        # Nearly full: one address comes free, and it is found without a scan.
        freed = IPv4Address("10.0.200.0")
        self.assertIsNotNone(
            table.release(None, MacAddress((51_199).to_bytes(6, "big")), freed, NOW + 1)
        )
        offer = table.offer(None, mac(1), network, None, NOW + 2, HOLD)
        assert offer is not None
        self.assertEqual(offer.address, freed)

    def test_stale_heap_entries_are_swept_without_losing_free_addresses(self) -> None:
        table = make_table(10, 13)
        dora(table, mac(1), client_id=b"\xffa")
        dora(table, mac(1), client_id=b"\xffb")
        # Without option 61 the request matches both: one of the two addresses is removed.
        kept = table.offer(None, mac(1), NET, None, NOW, HOLD)
        assert kept is not None
        busy = dora(table, mac(2))
        for n in range(5000):  # renewals push stale heap entries
            table.bind(None, mac(2), busy.address, NET, NOW + n, LEASE)
        got = {dora(table, mac(n), NOW + 5000).address for n in (3, 4)}
        self.assertEqual(len(got | {kept.address, busy.address}), 4)


# -- random interleavings ------------------------------------------------------------------------

Identity = tuple[bytes | None, MacAddress]

POOL_A = Pool(
    IPv4Network("10.0.0.0/28"),
    IPv4Address("10.0.0.2"),
    IPv4Address("10.0.0.9"),
    {mac(0): IPv4Address("10.0.0.3"), mac(1): IPv4Address("10.0.0.12")},
    frozenset({IPv4Address("10.0.0.5")}),
)
POOL_B = Pool(IPv4Network("10.0.1.0/29"), None, None, {mac(2): IPv4Address("10.0.1.3")})
POOLS = (POOL_A, POOL_B)
ADDRESSES = [a for pool in POOLS for a in pool.network] + [IPv4Address("10.0.2.1")]
MACHINES = range(6)


def identity(machine: int, kind: int) -> Identity:
    """Machine ``machine`` as a PXE ROM (no 61), iPXE (01+MAC) or an OS with a DUID."""
    address = mac(machine)
    return ((None, ipxe_id(address), b"\xff\x00\x01" + bytes((machine,)) * 8)[kind], address)


def same_client(a: Identity, b: Identity) -> bool:
    """§1.7, written independently of the table's own code."""
    if a[0] is not None and a[0] == b[0]:
        return True
    return (a[0] is None or b[0] is None) and a[1] == b[1]


def valid(pool: Pool, address: IPv4Address, who: MacAddress) -> bool:
    if address not in pool.network:
        return False
    owners = {a: m for m, a in pool.reservations.items()}
    if address in owners:
        return owners[address] == who
    if pool.first is None or pool.last is None:
        return False
    return (
        pool.first <= address <= pool.last
        and address not in pool.excluded
        and address not in (pool.network.network_address, pool.network.broadcast_address)
    )


def dynamic(pool: Pool, address: IPv4Address) -> bool:
    """In the range and reserved for nobody: an address any client may be offered."""
    return address not in pool.reservations.values() and valid(pool, address, MacAddress(b"\0" * 6))


@attrs.define
class Hold:
    identity: Identity
    until: float
    bound: bool
    order: int = 0  # when it was (last) offered: lower is older


class LeaseMachine(RuleBasedStateMachine):
    """A model of who holds what, checked against the table after every step.

    Machines have distinct MACs and client ids, so "two clients on one address" in the model
    means two machines; the table must never allow it. The model also demands liveness: an
    offer fails only when no address is free for the client, a bind only when the address is
    not available to it.

    Issue 18 defect 2 (an offer is not a lease): when no address is free, the table takes back
    the oldest offer still held on a dynamic address of the pool for the new client, and only
    says "no address" when there is none.  The model checks exactly that: a taken-back address
    was nobody's binding or quarantine, nothing was free, and it was the oldest held offer.
    """

    @initialize()
    def setup(self) -> None:
        self.table = LeaseTable(POOLS)
        self.now = NOW
        self.holds: dict[IPv4Address, Hold] = {}
        self.quarantine: dict[IPv4Address, float] = {}
        self.stored: dict[IPv4Address, Lease] = {}
        self.offers_made = 0

    def active(self, address: IPv4Address) -> Hold | None:
        hold = self.holds.get(address)
        return hold if hold is not None and hold.until > self.now else None

    def available(self, address: IPv4Address, who: Identity) -> bool:
        if self.quarantine.get(address, 0.0) > self.now:
            return False
        hold = self.active(address)
        return hold is None or same_client(hold.identity, who)

    def persist(self) -> None:
        for lease in self.table.take_changes():
            assert lease.state is not LeaseState.OFFERED
            if lease.is_removal:
                self.stored.pop(lease.address, None)
            else:
                self.stored[lease.address] = lease

    def assign(self, pool: Pool, lease: Lease, who: Identity) -> None:
        """The model side of one-address-per-client: other holds of this client go."""
        for address, hold in list(self.holds.items()):
            if (
                address in pool.network
                and address != lease.address
                and same_client(hold.identity, who)
            ):
                del self.holds[address]
        self.offers_made += 1
        self.holds[lease.address] = Hold(
            who, lease.expires, lease.state is LeaseState.BOUND, self.offers_made
        )

    def oldest_offer(self, pool: Pool) -> IPv4Address | None:
        """The offer a full pool takes back: held, not bound, on a dynamic address."""
        held = [
            (hold.order, address)
            for address, hold in self.holds.items()
            if address in pool.network
            and not hold.bound
            and hold.until > self.now
            and dynamic(pool, address)
        ]
        return min(held)[1] if held else None

    @rule(
        machine=st.sampled_from(MACHINES),
        kind=st.integers(0, 2),
        pool=st.sampled_from(POOLS),
        requested=st.none() | st.sampled_from(ADDRESSES),
        hold=st.sampled_from([5.0, 60.0]),
    )
    def offer(
        self, machine: int, kind: int, pool: Pool, requested: IPv4Address | None, hold: float
    ) -> None:
        who = identity(machine, kind)
        lease = self.table.offer(*who, pool.network, requested, self.now, hold)
        free = [a for a in pool.network if valid(pool, a, who[1]) and self.available(a, who)]
        if lease is None:
            assert not free, f"offer refused with {free} free"
            oldest = self.oldest_offer(pool)
            assert oldest is None, f"offer refused while the offer of {oldest} could be taken back"
        elif lease.address not in free:
            assert not free, f"{lease.address} is not free for {who}, and {free} are"
            oldest = self.oldest_offer(pool)
            assert lease.address == oldest, (
                f"{lease.address} is not free for {who}: it is not the oldest held offer {oldest}"
            )
            del self.holds[lease.address]  # taken back from the client it was offered to
            free.append(lease.address)
        if lease is not None:
            assert (lease.client_id, lease.mac) == who
            assert lease.expires >= self.now + hold
            reserved = pool.reservations.get(who[1])
            own = [
                a
                for a, h in self.holds.items()
                if a in free and h.until > self.now and same_client(h.identity, who)
            ]
            if reserved is not None and reserved in free:
                assert lease.address == reserved
            elif own:
                assert lease.address in own, "a retransmitted DISCOVER must get the same address"
            self.assign(pool, lease, who)
        self.persist()

    def held(self) -> list[IPv4Address]:
        return sorted(a for a, h in self.holds.items() if h.until > self.now)

    def check_bind(
        self, who: Identity, pool: Pool, address: IPv4Address, lease_time: float
    ) -> None:
        lease = self.table.bind(*who, address, pool.network, self.now, lease_time)
        expected = valid(pool, address, who[1]) and self.available(address, who)
        assert (lease is not None) == expected, f"bind {address} for {who}: {lease}"
        if lease is not None:
            assert lease.state is LeaseState.BOUND and lease.expires == self.now + lease_time
            self.assign(pool, lease, who)
        self.persist()

    def check_free(self, who: Identity, address: IPv4Address, decline: bool) -> None:
        hold = self.active(address)
        if decline:
            lease = self.table.decline(*who, address, self.now, 100.0)
        else:
            lease = self.table.release(*who, address, self.now)
        if hold is not None and same_client(hold.identity, who):
            assert lease is not None
        if lease is not None:
            assert hold is None or same_client(hold.identity, who), "freed someone else's"
            self.holds.pop(address, None)
            if decline:
                self.quarantine[address] = self.now + 100.0
        self.persist()

    @rule(
        machine=st.sampled_from(MACHINES),
        kind=st.integers(0, 2),
        pool=st.sampled_from(POOLS),
        address=st.sampled_from(ADDRESSES),
        lease_time=st.sampled_from([30.0, 300.0, math.inf]),
    )
    def bind(
        self, machine: int, kind: int, pool: Pool, address: IPv4Address, lease_time: float
    ) -> None:
        """Any REQUEST: INIT-REBOOT for a random address, a stranger's address, ..."""
        self.check_bind(identity(machine, kind), pool, address, lease_time)

    @precondition(lambda self: bool(self.held()))
    @rule(
        data=st.data(),
        lease_time=st.sampled_from([30.0, 300.0, math.inf]),
        other_face=st.booleans(),
    )
    def bind_held(self, data: st.DataObject, lease_time: float, other_face: bool) -> None:
        """The common case, a REQUEST for the address offered (or a renewal), sometimes
        sent by the same machine showing another identity (ROM -> iPXE -> OS)."""
        address = data.draw(st.sampled_from(self.held()))
        who = self.holds[address].identity
        if other_face:
            machine = who[1].octets[-1]
            who = identity(machine, data.draw(st.integers(0, 2)))
        pool = next(pool for pool in POOLS if address in pool.network)
        self.check_bind(who, pool, address, lease_time)

    @rule(
        machine=st.sampled_from(MACHINES),
        kind=st.integers(0, 2),
        address=st.sampled_from(ADDRESSES),
        decline=st.booleans(),
    )
    def release_or_decline(
        self, machine: int, kind: int, address: IPv4Address, decline: bool
    ) -> None:
        """Any RELEASE or DECLINE, mostly for addresses that are not the sender's."""
        self.check_free(identity(machine, kind), address, decline)

    @precondition(lambda self: bool(self.held()))
    @rule(data=st.data(), decline=st.booleans())
    def release_or_decline_held(self, data: st.DataObject, decline: bool) -> None:
        """A client gives back an address it holds."""
        address = data.draw(st.sampled_from(self.held()))
        self.check_free(self.holds[address].identity, address, decline)

    @rule(machine=st.sampled_from(MACHINES), kind=st.integers(0, 2))
    def forget_offer(self, machine: int, kind: int) -> None:
        who = identity(machine, kind)
        self.table.forget_offer(*who, self.now)
        for address, hold in list(self.holds.items()):
            if not hold.bound and same_client(hold.identity, who):
                del self.holds[address]
        self.persist()

    @rule(dice=st.integers(0, 3))
    def restart(self, dice: int) -> None:
        """kill -9 and start again from what was stored: bindings survive, offers do not."""
        if dice:
            return  # a quarter as often as the other rules
        restarted = LeaseTable(POOLS)
        assert restarted.restore(list(self.stored.values()), self.now) == []
        self.table = restarted
        self.holds = {a: h for a, h in self.holds.items() if h.bound}

    @rule(seconds=st.sampled_from([0.5, 4.0, 30.0, 61.0, 301.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def table_agrees_with_the_model(self) -> None:
        for address in ADDRESSES:
            lease = self.table.find_address(address, self.now)
            hold = self.active(address)
            if self.quarantine.get(address, 0.0) > self.now:
                assert lease is not None and lease.state is LeaseState.DECLINED
            elif hold is not None:
                assert lease is not None, f"{address} lost"
                assert (lease.client_id, lease.mac) == hold.identity
                assert lease.expires == hold.until
                assert lease.state is (LeaseState.BOUND if hold.bound else LeaseState.OFFERED)
            else:
                assert lease is None, f"{address} held by {lease} unknown to the model"

    @invariant()
    def every_binding_is_found_by_its_client_and_is_stored(self) -> None:
        for lease in self.table.leases():
            if lease.state is LeaseState.BOUND and lease.is_active(self.now):
                found = self.table.find_client(
                    lease.client_id, lease.mac, self.now, network=lease.network
                )
                assert found == lease, f"{lease} found as {found}"
                assert self.stored.get(lease.address) == lease, f"{lease} not stored"


class RandomInterleavingTests(SynchronousTestCase):
    def test_no_double_assignment_no_loss(self) -> None:
        """offer/bind/release/decline/expiry/restart in any order, against a model."""
        run_state_machine_as_test(
            LeaseMachine,
            settings=settings(
                max_examples=200, stateful_step_count=40, deadline=None, database=None
            ),
        )


class AdoptTests(SynchronousTestCase):
    """Records another server stored in the shared database (issue 15)."""

    def test_a_foreign_binding_wins_over_a_local_offer_and_is_not_persisted(self) -> None:
        table = make_table()
        offer = table.offer(None, mac(1), NET, None, NOW, HOLD)
        assert offer is not None
        foreign = Lease(offer.address, NET, None, mac(2), LeaseState.BOUND, NOW + LEASE)
        table.adopt(foreign, NOW)
        self.assertEqual(table.find_address(offer.address, NOW), foreign)
        self.assertEqual(table.take_changes(), [])
        # The next offer for client 1 is another address.
        again = table.offer(None, mac(1), NET, None, NOW, HOLD)
        assert again is not None
        self.assertNotEqual(again.address, offer.address)

    def test_a_client_moved_to_the_other_server_leaves_one_record(self) -> None:
        table = make_table()
        mine = dora(table, mac(3))
        table.take_changes()
        moved = Lease(ip(19), NET, None, mac(3), LeaseState.BOUND, NOW + LEASE)
        table.adopt(moved, NOW)
        self.assertIsNone(table.find_address(mine.address, NOW))
        self.assertEqual(table.find_client(None, mac(3), NOW), moved)
        self.assertEqual(table.take_changes(), [])

    def test_a_removal_keeps_a_local_offer_and_drops_anything_else(self) -> None:
        table = make_table()
        offer = table.offer(None, mac(4), NET, None, NOW, HOLD)
        assert offer is not None
        table.adopt(removal(offer.address, NET, NOW), NOW)
        self.assertEqual(table.find_address(offer.address, NOW), offer)
        released = Lease(ip(18), NET, None, mac(5), LeaseState.RELEASED, NOW)
        table.adopt(released, NOW)
        table.adopt(removal(ip(18), NET, NOW), NOW)
        self.assertNotIn(ip(18), [lease.address for lease in table.leases()])
        # Outside every pool: ignored.
        table.adopt(Lease(IPv4Address("10.1.1.1"), IPv4Network("10.1.1.0/24"), None, mac(6),
                          LeaseState.BOUND, NOW + LEASE), NOW)  # fmt: skip
        self.assertEqual(table.take_changes(), [])


class StartAtTests(SynchronousTestCase):
    def test_the_walk_starts_part_way_and_wraps_over_every_address(self) -> None:
        table = make_table(10, 19)
        table.start_at(0.5)
        got = [dora(table, mac(n)).address for n in range(10)]
        self.assertEqual(got, [ip(a) for a in [15, 16, 17, 18, 19, 10, 11, 12, 13, 14]])
        table.restore(list(table.leases())[:2], NOW)  # the offset survives a restore
        self.assertEqual(dora(table, mac(50)).address, ip(17))

    def test_servers_sharing_a_database_offer_one_client_the_same_address(self) -> None:
        a, b = make_table(10, 200), make_table(10, 200)
        a.share_with_other_servers(0.1)
        b.share_with_other_servers(0.7)
        offers_a = [a.offer(None, mac(n), NET, None, NOW, HOLD) for n in range(30)]
        offers_b = [b.offer(None, mac(n), NET, None, NOW, HOLD) for n in range(30)]
        same = [x.address == y.address for x, y in zip(offers_a, offers_b, strict=True) if x and y]
        self.assertGreater(sum(same), 20)  # all but hash collisions among the 30
        self.assertEqual(len({x.address for x in offers_a if x}), 30)

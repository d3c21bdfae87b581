"""Which address a machine's exports belong to: reservations, leases, sightings, reuse."""

import shutil
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.nfs.lifecycle import AddressBook
from pxetwist.policy.values import MacAddress

A = MacAddress.parse("52:54:00:77:00:10")
B = MacAddress.parse("52:54:00:77:00:11")
C = MacAddress.parse("52:54:00:77:00:12")
IP10 = IPv4Address("10.77.0.10")
IP11 = IPv4Address("10.77.0.11")


class ProxyModeTests(SynchronousTestCase):
    def test_seen_address_is_the_machines(self) -> None:
        book = AddressBook({}, authoritative=False)
        self.assertIsNone(book.address_of(A, 0))
        self.assertEqual(book.see(A, IP10), {A})
        self.assertEqual(book.address_of(A, 0), IP10)
        self.assertEqual(book.see(A, IP10), set())  # nothing changed

    def test_address_change_moves_the_export(self) -> None:
        book = AddressBook({}, authoritative=False)
        book.see(A, IP10)
        self.assertEqual(book.see(A, IP11), {A})
        self.assertEqual(book.address_of(A, 0), IP11)

    def test_another_machine_at_the_address_takes_it_over(self) -> None:
        book = AddressBook({}, authoritative=False)
        book.see(A, IP10)
        self.assertEqual(book.see(B, IP10), {A, B})
        self.assertIsNone(book.address_of(A, 0))
        self.assertEqual(book.address_of(B, 0), IP10)

    def test_unusable_addresses_ignored(self) -> None:
        book = AddressBook({}, authoritative=False)
        for text in ("0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1"):
            self.assertEqual(book.see(A, IPv4Address(text)), set())
        self.assertIsNone(book.address_of(A, 0))

    def test_sightings_survive_a_restart(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="pxt-nfs-book-"))
        self.addCleanup(shutil.rmtree, directory, True)
        book = AddressBook({}, authoritative=False)
        book.see(A, IP10)
        book.save(directory / "seen.json")
        again = AddressBook({}, authoritative=False)
        again.load(directory / "seen.json")
        self.assertEqual(again.address_of(A, 0), IP10)


class AuthoritativeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.leases: dict[MacAddress, tuple[IPv4Address, float]] = {}

        def lookup(mac: MacAddress, now: float) -> IPv4Address | None:
            lease = self.leases.get(mac)
            return lease[0] if lease is not None and lease[1] > now else None

        self.book = AddressBook(
            {C: IPv4Address("10.77.0.50")},
            authoritative=True,
            subnets=[IPv4Network("10.77.0.0/16")],
            leases=lookup,
        )

    def test_reservation_always(self) -> None:
        self.assertEqual(self.book.address_of(C, 1e12), IPv4Address("10.77.0.50"))

    def test_lease_until_it_ends(self) -> None:
        self.leases[A] = (IP10, 100.0)
        self.assertEqual(self.book.address_of(A, 50.0), IP10)
        self.assertIsNone(self.book.address_of(A, 100.0))  # expired
        self.leases[A] = (IP11, 200.0)
        self.assertEqual(self.book.address_of(A, 150.0), IP11)  # moved
        del self.leases[A]  # released
        self.assertIsNone(self.book.address_of(A, 150.0))

    def test_sightings_count_only_outside_our_subnets(self) -> None:
        self.book.see(A, IP10)
        self.assertIsNone(self.book.address_of(A, 0))  # ours to lease: the lease decides
        self.book.see(B, IPv4Address("192.0.2.7"))
        self.assertEqual(self.book.address_of(B, 0), IPv4Address("192.0.2.7"))

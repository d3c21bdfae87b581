"""DHCP fuzzing in CI-sized slices (issue 18): hypothesis over the engine's entry and a state
machine over the lease table.

* Any bytes, and mutated real requests (:mod:`pxetwist.lab.dhcpfuzz`), go through
  ``receive`` -> policy chain -> ``answer`` in proxy and authoritative mode without an exception;
  every datagram sent decodes as a BOOTREPLY within its size budget; every outcome is reported.
* The lease table, driven by any sequence of DISCOVER/REQUEST/RELEASE/DECLINE/forget/time steps
  from known and unknown clients, never gives one address to two clients, never loses a binding
  before it expires, keeps unknown clients within ``unknown_limit``, and what it hands the store
  rebuilds the same bindings after a restart.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config.model import Config
from pxetwist.dhcp.engine import DhcpEngine, Interface, Outcome, pools_for
from pxetwist.dhcp.leases import Lease, LeaseState, LeaseTable, Pool
from pxetwist.dhcp.packet import decode
from pxetwist.lab.dhcpfuzz import malformed, mutated
from pxetwist.policy.plugins import build_policies
from pxetwist.policy.values import MacAddress
from pxetwist.testing import config_from_yaml, run_chain
from tests.dhcp.strategies import PROPERTY_SETTINGS, datagrams

SERVER = IPv4Address("10.77.0.1")
LAN = Interface("lan0", SERVER, IPv4Network("10.77.0.0/16"))
CONFIGS = {
    mode: config_from_yaml(
        f"""
dhcp:
  mode: {mode}
  discover_rate_limit: 0
  subnets:
    - network: 10.77.0.0/16
      range: [10.77.1.1, 10.77.1.20]
boot: {{bios: undionly.kpxe, efi-x86_64: ipxe.efi}}
machines:
  - {{mac: '52:54:00:00:00:01', address: 10.77.1.200}}
  - {{mac: '02:00:00:00:00:02', action: ignore}}
"""
    )
    for mode in ("proxy", "authoritative")
}


class EngineFuzz:
    def __init__(self, config: Config) -> None:
        self.engine = DhcpEngine(config, LeaseTable(pools_for(config)), [SERVER])
        self.policies = list(build_policies(config))
        self.now = 1_000_000.0

    def feed(self, data: bytes, port: int) -> Outcome:
        self.now += 0.25
        source = ("10.77.1.5", port) if port == 4011 else ("0.0.0.0", 68)
        received = self.engine.receive(
            data, interface=LAN, port=port, source=source, to_broadcast=True, now=self.now
        )
        if isinstance(received, Outcome):
            return received
        request = received.request
        decision = run_chain(self.policies, request) if request is not None else None
        return self.engine.answer(received.decided(decision), self.now)


def check(case: SynchronousTestCase, outcome: Outcome, data: bytes) -> None:
    if outcome.event is None:
        case.assertEqual(data[:1], b"\x02", "only another server's reply goes unreported")
    case.assertEqual(
        len(outcome.datagrams) > 0, bool(outcome.replies) and outcome.event is not None
    )
    for datagram in outcome.datagrams:
        reply = decode(datagram.data)
        case.assertEqual(reply.op, 2)
        case.assertGreaterEqual(len(datagram.data), 300)
        case.assertLessEqual(len(datagram.data), 1472)
    if outcome.event is not None:
        dict(outcome.event.details)  # the details can always be worked out
        outcome.event.as_json()


class EngineFuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fuzz = {mode: EngineFuzz(config) for mode, config in CONFIGS.items()}

    def feed_all(self, data: bytes) -> None:
        for fuzz in self.fuzz.values():
            for port in (67, 4011):
                check(self, fuzz.feed(data, port), data)

    @settings(PROPERTY_SETTINGS, max_examples=300)
    @given(datagrams())
    def test_any_datagram(self, data: bytes) -> None:
        self.feed_all(data)

    @settings(PROPERTY_SETTINGS, max_examples=300)
    @given(st.randoms(use_true_random=False))
    def test_mutated_requests(self, rng: random.Random) -> None:
        for _ in range(5):
            self.feed_all(mutated(rng))

    def test_a_seeded_slice_of_20000(self) -> None:
        """The lab fuzzer's own generator, in-process: 20,000 datagrams, mostly mutated."""
        rng = random.Random(18)
        fuzz = self.fuzz["authoritative"]
        answered = 0
        for n in range(20_000):
            data = mutated(rng) if n % 10 else malformed(rng)
            outcome = fuzz.feed(data, 67)
            check(self, outcome, data)
            answered += bool(outcome.datagrams)
        self.assertGreater(answered, 1000)  # the mutations still reach the rules
        table = fuzz.engine.leases
        holders: dict[IPv4Address, Lease] = {}
        for lease in table.leases():
            if lease.is_active(fuzz.now):
                self.assertNotIn(lease.address, holders)
                holders[lease.address] = lease


# -- the lease table as a state machine -----------------------------------------------------

NET = IPv4Network("10.9.0.0/24")
FIRST, LAST = IPv4Address("10.9.0.10"), IPv4Address("10.9.0.15")  # six addresses
KNOWN = [MacAddress(bytes((0x52, 0x54, 0, 0, 0, n))) for n in range(3)]
UNKNOWN = [MacAddress(bytes((0x02, 0, 0, 0, 0, n))) for n in range(6)]
RESERVED = {KNOWN[0]: IPv4Address("10.9.0.50")}
LIMIT = 3
HOLD, LEASE_TIME = 30.0, 100.0


def pool() -> Pool:
    return Pool(NET, FIRST, LAST, RESERVED, known=frozenset(KNOWN), unknown_limit=LIMIT)


class LeaseMachine(RuleBasedStateMachine):
    """Never double-assigns, never loses a binding, keeps strangers within their limit."""

    def __init__(self) -> None:
        super().__init__()
        self.table = LeaseTable([pool()])
        self.now = 1_000_000.0
        self.bound: dict[MacAddress, Lease] = {}  # what each client was last ACKed
        self.store: dict[IPv4Address, Lease] = {}  # what the store holds

    clients = st.sampled_from(KNOWN + UNKNOWN)

    def _persist(self) -> None:
        for change in self.table.take_changes():
            if change.is_removal:
                self.store.pop(change.address, None)
            else:
                self.store[change.address] = change

    @rule(mac=clients, requested=st.none() | st.integers(0, 7))
    def discover(self, mac: MacAddress, requested: int | None) -> None:
        wanted = IPv4Address(int(FIRST) + requested) if requested is not None else None
        offer = self.table.offer(None, mac, NET, wanted, self.now, HOLD)
        self._persist()
        held = self.bound.get(mac)
        if held is not None and (offer is None or offer.address != held.address):
            # The client itself starts over (its reservation, say): its binding may go, and
            # only then; another client's DISCOVER never takes it (bindings_are_never_lost).
            del self.bound[mac]

    @rule(mac=clients)
    def request_offer(self, mac: MacAddress) -> None:
        """SELECTING: the client asks for what it was offered (or holds)."""
        lease = self.table.find_client(None, mac, self.now, network=NET)
        if lease is None:
            return
        bound = self.table.bind(None, mac, lease.address, NET, self.now, LEASE_TIME)
        self._persist()
        if bound is not None:
            self.bound[mac] = bound

    @rule(mac=clients, address=st.integers(0, 7))
    def init_reboot(self, mac: MacAddress, address: int) -> None:
        """INIT-REBOOT for any address: only a free one, or its own, may be bound."""
        wanted = IPv4Address(int(FIRST) + address)
        holder = self.table.find_address(wanted, self.now)
        bound = self.table.bind(None, mac, wanted, NET, self.now, LEASE_TIME)
        self._persist()
        if holder is not None and holder.mac != mac:
            assert bound is None, f"{wanted} of {holder.mac} bound to {mac}"
        if bound is not None:
            self.bound[mac] = bound

    @precondition(lambda self: bool(self.bound))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        mac = data.draw(st.sampled_from(sorted(self.bound, key=lambda m: m.octets)))
        lease = self.bound.pop(mac)
        self.table.release(None, mac, lease.address, self.now)
        self._persist()

    @precondition(lambda self: bool(self.bound))
    @rule(data=st.data())
    def decline(self, data: st.DataObject) -> None:
        mac = data.draw(st.sampled_from(sorted(self.bound, key=lambda m: m.octets)))
        lease = self.bound.pop(mac)
        self.table.decline(None, mac, lease.address, self.now, 50.0)
        self._persist()

    @rule(mac=clients)
    def chose_another_server(self, mac: MacAddress) -> None:
        self.table.forget_offer(None, mac, self.now)

    @rule(seconds=st.sampled_from([0.5, 5.0, 31.0, 60.0, 120.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.bound = {mac: lease for mac, lease in self.bound.items() if lease.expires > self.now}

    @rule()
    def restart(self) -> None:
        """A restart from the store: every unexpired binding is back, nothing else is bound."""
        table = LeaseTable([pool()])
        self.assertions_after_restart(table)
        self.table = table

    def assertions_after_restart(self, table: LeaseTable) -> None:
        table.restore(list(self.store.values()), self.now)
        for mac, lease in self.bound.items():
            found = table.find_address(lease.address, self.now)
            assert found is not None and found.mac == mac, f"{mac}'s binding lost in the store"

    @invariant()
    def one_client_per_address_and_one_address_per_client(self) -> None:
        owners: dict[MacAddress, IPv4Address] = {}
        for lease in self.table.leases():
            if lease.is_active(self.now) and lease.mac is not None:
                assert lease.mac not in owners, f"{lease.mac} holds two addresses"
                owners[lease.mac] = lease.address

    @invariant()
    def bindings_are_never_lost(self) -> None:
        for mac, lease in self.bound.items():
            found = self.table.find_address(lease.address, self.now)
            assert found is not None, f"{mac}'s binding of {lease.address} was lost"
            assert found.mac == mac and found.state is LeaseState.BOUND, (mac, found)

    @invariant()
    def strangers_within_their_limit(self) -> None:
        assert self.table.unknown_held(NET, self.now) <= LIMIT

    @invariant()
    def reservations_only_for_their_owner(self) -> None:
        for lease in self.table.leases():
            if lease.address in RESERVED.values() and lease.is_active(self.now):
                assert lease.mac == KNOWN[0]


LeaseMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, database=None
)
TestLeaseMachine = LeaseMachine.TestCase

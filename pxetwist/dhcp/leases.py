"""The DHCP lease table: which address belongs to which client, decided in memory.

The table is pure (no Twisted, no clock, no I/O): every method takes ``now``, and whatever must
survive a crash comes out of :meth:`LeaseTable.take_changes` for the caller to hand to a lease
store (:mod:`pxetwist.dhcp.store`) *before* it lets an ACK leave. A restarted server rebuilds the
same table with :meth:`LeaseTable.restore`.

Rules (protocol-reference §1.4, §1.7; RFC 2131 §4.3):

* One record per address. A record belongs to the client that last held the address, even after
  it expired or was released, so that the client can get the same address back later.
* Client identity is dnsmasq's ``lease_find_by_client()``: the client identifier (option 61)
  first, then ``chaddr`` when either the stored record or the request has no client identifier.
  A PXE ROM (no 61) and then iPXE (61 = 01 + MAC) therefore keep one address.
* A client holds at most one record per pool: whenever an address is offered or bound to a
  client, every other record in that pool the same request would match is removed.
* An address is unavailable to other clients while its record is BOUND and unexpired, or
  DECLINED and still in quarantine. Reserved addresses go to their MAC only.
* An offer is not a lease: an OFFERED address is held for its client (Raspberry Pi firmware uses
  an offered address without ever sending a REQUEST), but only until the pool has nothing else.
  Then the oldest held offer is taken back for the new client, before any DISCOVER is told "no
  free address" (issue 18: a burst of DISCOVERs from random MACs must not starve a small pool).
* Machines the config does not list ("unknown" MACs) may hold at most ``Pool.unknown_limit``
  addresses of the range at once, offered or bound, so that a flood of strangers cannot take
  the last addresses that listed machines without a reservation need.  An unknown client at the
  limit can only take back another unknown client's offer.

Allocation is amortised O(1)/O(log n) whatever the pool size: a cursor walks the never-used
addresses of the range once, and a heap of "free from" times per pool returns expired, released
and quarantined addresses lazily, oldest first, only when the never-used ones have run out. The
heap may hold stale entries (an address that was taken again since); they are checked and
dropped when popped, and the heap is rebuilt when stale entries outnumber live records.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network

import attrs

from pxetwist.policy.values import MacAddress


class LeaseState(enum.Enum):
    """Where a record stands; the values are what a store writes down."""

    OFFERED = "offered"  # held for a client between DISCOVER and REQUEST (never persisted)
    BOUND = "bound"  # ACKed: the client may use the address until ``expires``
    RELEASED = "released"  # free again, remembered so the client can get it back
    DECLINED = "declined"  # someone else answers on it: quarantined until ``expires``


@attrs.frozen
class Lease:
    """One record of the table, and the unit a lease store persists (keyed by ``address``).

    A *removal* (see :attr:`is_removal`) is a RELEASED lease with neither a client identifier
    nor a MAC: it tells a store to forget the address altogether.
    """

    address: IPv4Address
    network: IPv4Network  # the subnet it belongs to
    client_id: bytes | None  # option 61 raw value, if the client sent one
    mac: MacAddress | None  # chaddr
    state: LeaseState
    expires: float  # absolute wall-clock seconds (time.time()); math.inf for an infinite lease
    hostname: str | None = None

    def is_active(self, now: float) -> bool:
        """Offered or bound and not expired: the client may use (or is about to use) it."""
        return self.state in _HOLDING and self.expires > now

    def holds_address(self, now: float) -> bool:
        """Whether nobody but its client may have the address now (active, or in quarantine)."""
        return self.state is not LeaseState.RELEASED and self.expires > now

    @property
    def is_removal(self) -> bool:
        """A change record saying "forget this address" (see :meth:`LeaseTable.take_changes`)."""
        return self.state is LeaseState.RELEASED and self.client_id is None and self.mac is None

    def matches(self, client_id: bytes | None, mac: MacAddress | None) -> bool:
        """Whether a request presenting ``client_id`` and ``mac`` is this record's client.

        protocol-reference §1.7: the client identifier decides when both sides have one;
        otherwise the MAC does.
        """
        if client_id is not None and self.client_id == client_id:
            return True
        return mac is not None and self.mac == mac and (client_id is None or self.client_id is None)


_HOLDING = frozenset((LeaseState.OFFERED, LeaseState.BOUND))


def removal(address: IPv4Address, network: IPv4Network, now: float) -> Lease:
    """The change record that deletes ``address`` from a store."""
    return Lease(address, network, None, None, LeaseState.RELEASED, now)


def _reservation_map(value: Mapping[MacAddress, IPv4Address]) -> Mapping[MacAddress, IPv4Address]:
    return dict(value)


@attrs.frozen
class Pool:
    """The addresses of one subnet the server may hand out.

    ``excluded`` (an addition to the base design) lists addresses inside the range that must
    never be offered, such as the server's own address or a router's; the network and broadcast
    addresses of the subnet are always excluded.
    """

    network: IPv4Network
    first: IPv4Address | None  # range; None = no dynamic pool (reservations only)
    last: IPv4Address | None
    reservations: Mapping[MacAddress, IPv4Address] = attrs.field(
        factory=dict, converter=_reservation_map
    )  # may be inside or outside the range, never outside the network
    excluded: frozenset[IPv4Address] = frozenset()
    #: MACs of the machines the config lists; every other client is "unknown".
    known: frozenset[MacAddress] = frozenset()
    #: At most this many addresses of the range held (offered or bound) by unknown clients at
    #: once; None: no limit (``dhcp.subnets[].unknown_limit``).
    unknown_limit: int | None = None

    def __attrs_post_init__(self) -> None:
        if (self.first is None) != (self.last is None):
            raise ValueError(f"pool {self.network}: a range needs both a first and a last address")
        if self.first is not None and self.last is not None:
            if self.first not in self.network or self.last not in self.network:
                raise ValueError(
                    f"pool {self.network}: range {self.first}-{self.last} is outside the network"
                )
            if self.first > self.last:
                raise ValueError(f"pool {self.network}: range {self.first}-{self.last} is reversed")
        owners: dict[IPv4Address, MacAddress] = {}
        for mac, address in self.reservations.items():
            if address not in self.network:
                raise ValueError(
                    f"pool {self.network}: reservation {address} for {mac} is outside the network"
                )
            if address in owners:
                raise ValueError(
                    f"pool {self.network}: {address} is reserved for both {owners[address]} "
                    f"and {mac}"
                )
            owners[address] = mac


class _PoolState:
    """The mutable bookkeeping of one pool; addresses are plain ints for speed."""

    __slots__ = (
        "by_client_id",
        "by_mac",
        "cursor",
        "hi",
        "leases",
        "lo",
        "network",
        "network_first",
        "network_last",
        "offers",
        "offset",
        "pool",
        "rebuild_at",
        "recycle",
        "reserved_address",
        "reserved_mac",
        "size",
        "unknown",
        "unknown_expiry",
        "unusable",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.network = pool.network
        self.network_first = int(pool.network.network_address)
        self.network_last = int(pool.network.broadcast_address)
        if pool.first is None or pool.last is None:
            self.lo, self.hi = 1, 0  # an empty range
        else:
            self.lo, self.hi = int(pool.first), int(pool.last)
        self.unusable: frozenset[int] = frozenset(int(a) for a in pool.excluded) | (
            frozenset((self.network_first, self.network_last))
            if pool.network.prefixlen < 31
            else frozenset()
        )
        self.reserved_address: dict[MacAddress, int] = {
            mac: int(address)
            for mac, address in pool.reservations.items()
            if int(address) not in self.unusable
        }
        self.reserved_mac: dict[int, MacAddress] = {
            a: mac for mac, a in self.reserved_address.items()
        }
        in_range = self.hi - self.lo + 1 if self.hi >= self.lo else 0
        in_range -= sum(1 for a in self.unusable if self.lo <= a <= self.hi)
        outside = sum(1 for a in self.reserved_mac if not self.lo <= a <= self.hi)
        self.size = in_range + outside
        self.offset = 0  # where the never-used walk starts in the range (see start_at)
        self.reset()

    def reset(self) -> None:
        self.leases: dict[int, Lease] = {}
        self.by_client_id: dict[bytes, int] = {}
        self.by_mac: dict[MacAddress, dict[int, None]] = {}  # an insertion-ordered set
        self.cursor = self.lo
        self.recycle: list[tuple[float, int]] = []  # (free from, address), a min-heap
        self.rebuild_at = 1024  # heap length at which stale entries are swept out
        # Dynamic addresses with an OFFERED record, oldest offer first (an ordered set).
        self.offers: dict[int, None] = {}
        # Dynamic addresses held (offered or bound) by unknown clients -> until when, and a
        # min-heap of (expires, address) to drop the ones that ran out (stale entries allowed).
        self.unknown: dict[int, float] = {}
        self.unknown_expiry: list[tuple[float, int]] = []

    def dynamic(self, address: int) -> bool:
        """In the range, and neither excluded nor reserved: anyone's to have."""
        return (
            self.lo <= address <= self.hi
            and address not in self.unusable
            and address not in self.reserved_mac
        )

    def valid_for(self, address: int, mac: MacAddress | None) -> bool:
        """Whether this pool may give ``address`` to the client with ``mac`` at all."""
        owner = self.reserved_mac.get(address)
        if owner is not None:
            return owner == mac
        return self.lo <= address <= self.hi and address not in self.unusable


def _rank(lease: Lease, now: float) -> tuple[int, float]:
    """Which of several records of one client is "its" lease: bound, then offered, then latest."""
    if lease.expires > now:
        if lease.state is LeaseState.BOUND:
            return (2, lease.expires)
        if lease.state is LeaseState.OFFERED:
            return (1, lease.expires)
    return (0, lease.expires)


def _require_identity(client_id: bytes | None, mac: MacAddress | None) -> None:
    if client_id is None and mac is None:
        raise ValueError("a DHCP client is named by a client identifier or a MAC address")


class LeaseTable:
    """Every pool's leases, in memory; see the module docstring for the rules.

    Not thread-safe: the DHCP engine calls it from the reactor thread only.
    """

    def __init__(self, pools: Sequence[Pool]) -> None:
        states = sorted((_PoolState(pool) for pool in pools), key=lambda s: s.network_first)
        for before, after in itertools.pairwise(states):
            if after.network_first <= before.network_last:
                raise ValueError(f"pools {before.network} and {after.network} overlap")
        self._pools: dict[IPv4Network, _PoolState] = {state.network: state for state in states}
        self._ordered = states
        self._starts = [state.network_first for state in states]
        self._changes: dict[int, Lease] = {}
        self._latest_now = 0.0
        self._hashed = False  # see share_with_other_servers()

    # -- start-up -------------------------------------------------------------------------------

    def restore(self, leases: Iterable[Lease], now: float) -> list[Lease]:
        """Replace the table with stored records, after a restart.

        Records are re-homed to the pool whose network holds their address (a subnet may have
        been widened since). Returns the records no pool holds, for the caller to log: their
        clients are NAKed at their next REQUEST and move to a configured network.
        """
        self._latest_now = max(self._latest_now, now)
        for state in self._ordered:
            state.reset()
        self._changes.clear()
        dropped: list[Lease] = []
        # Oldest first, so that if two records ever claim one client the newest one wins it.
        for lease in sorted(leases, key=lambda lease: lease.expires):
            address = int(lease.address)
            home = self._pool_of(address)
            if lease.is_removal:
                continue
            if home is None:
                dropped.append(lease)
                continue
            if lease.network != home.network:
                lease = attrs.evolve(lease, network=home.network)
            self._put(home, address, lease, persist=False)
        return dropped

    # -- queries --------------------------------------------------------------------------------

    def find_client(
        self,
        client_id: bytes | None,
        mac: MacAddress | None,
        now: float,
        *,
        network: IPv4Network | None = None,
        include_inactive: bool = False,
    ) -> Lease | None:
        """The client's lease: offered or bound and unexpired (RENEWING / REBINDING / INIT-REBOOT).

        ``network`` limits the search to one pool (otherwise the best of every pool: bound,
        then offered). ``include_inactive`` also returns a released or expired record, the
        address the client would get back.
        """
        self._latest_now = max(self._latest_now, now)
        if client_id is None and mac is None:
            return None
        states = self._ordered if network is None else [self._state(network)]
        best: Lease | None = None
        for state in states:
            lease = self._lookup(state, client_id, mac, now)
            if lease is None or not (include_inactive or lease.is_active(now)):
                continue
            if best is None or _rank(lease, now) > _rank(best, now):
                best = lease
        return best

    def find_address(self, address: IPv4Address, now: float) -> Lease | None:
        """Who holds ``address`` now: an unexpired offer, binding or quarantine; else None."""
        self._latest_now = max(self._latest_now, now)
        a = int(address)
        state = self._pool_of(a)
        if state is None:
            return None
        lease = state.leases.get(a)
        if lease is None or not lease.holds_address(now):
            return None
        return lease

    def pools(self) -> list[Pool]:
        """The pools the table was built with, ordered by network."""
        return [state.pool for state in self._ordered]

    def leases(self) -> Iterator[Lease]:
        """Every record, in whatever state, for admin views and metrics."""
        for state in self._ordered:
            yield from state.leases.values()

    def stats(self, now: float | None = None) -> Mapping[IPv4Network, tuple[int, int]]:
        """(addresses held, addresses the pool can hand out) per pool, for logs and metrics.

        Held means offered, bound or quarantined and unexpired at ``now`` (by default the
        latest time the table was told about). This walks every record: call it for a periodic
        metric, not per packet.
        """
        when = self._latest_now if now is None else now
        return {
            state.network: (
                sum(1 for lease in state.leases.values() if lease.holds_address(when)),
                state.size,
            )
            for state in self._ordered
        }

    # -- the DHCP exchange ----------------------------------------------------------------------

    def offer(
        self,
        client_id: bytes | None,
        mac: MacAddress | None,
        network: IPv4Network,
        requested: IPv4Address | None,
        now: float,
        hold: float,
    ) -> Lease | None:
        """Choose an address for a DISCOVER and hold it for the client for ``hold`` seconds.

        RFC 2131 §4.3.1 order: the MAC's reservation, the client's current or previous
        address, the requested address (option 50), then a never-used address, then the
        address that has been free longest. A retransmitted DISCOVER gets the same address.
        Returns None when nothing is free.

        The result is OFFERED, or BOUND when the client's current binding is offered again
        (its expiry is then stretched to cover the hold, a change to persist). Offering may
        also remove the client's other records in the pool; those removals come out of
        :meth:`take_changes` too.
        """
        _require_identity(client_id, mac)
        self._latest_now = max(self._latest_now, now)
        state = self._state(network)
        # An unknown client at its pool's limit may only have what it holds already.
        limited = self._at_unknown_limit(state, mac, now)
        chosen: int | None = None
        if mac is not None:
            reserved = state.reserved_address.get(mac)
            if reserved is not None and self._available(state, reserved, client_id, mac, now):
                chosen = reserved
        if chosen is None:
            current = self._lookup(state, client_id, mac, now)
            # The lookup only returns records of this client: its address is its to take back.
            if (
                current is not None
                and state.valid_for(int(current.address), mac)
                and (not limited or current.is_active(now))
            ):
                chosen = int(current.address)
        if chosen is None and requested is not None and requested in network and not limited:
            wanted = int(requested)
            if state.valid_for(wanted, mac) and self._available(state, wanted, client_id, mac, now):
                chosen = wanted
        if chosen is None and self._hashed and mac is not None and not limited:
            # Shared database (issue 15): every server offers a new client the same address
            # first, so that two servers answering one client claim the same address.
            span = state.hi - state.lo + 1
            if span > 0:
                wanted = state.lo + zlib.crc32(mac.octets) % span
                if state.dynamic(wanted) and self._available(state, wanted, client_id, mac, now):
                    chosen = wanted
        if chosen is None:
            chosen = self._reclaim(state, now, unknown_only=True) if limited else None
            if chosen is None and not limited:
                chosen = self._allocate(state, now)
            if chosen is None:
                return None
        others = self._others(state, chosen, client_id, mac)
        existing = state.leases.get(chosen)
        mine = existing is not None and existing.matches(client_id, mac)
        if (
            existing is not None
            and mine
            and existing.state is LeaseState.BOUND
            and existing.expires > now
        ):
            lease = Lease(
                existing.address,
                state.network,
                client_id,
                mac,
                LeaseState.BOUND,
                max(existing.expires, now + hold),
                existing.hostname,
            )
            if lease != existing:
                self._put(state, chosen, lease, persist=True)
        else:
            expires = now + hold
            if existing is not None and mine and existing.is_active(now):
                expires = max(expires, existing.expires)
            lease = Lease(
                IPv4Address(chosen),
                state.network,
                client_id,
                mac,
                LeaseState.OFFERED,
                expires,
                existing.hostname if existing is not None and mine else None,
            )
            self._put(state, chosen, lease, persist=False)
        for other in others:
            self._remove(state, other, now)
        return lease

    def bind(
        self,
        client_id: bytes | None,
        mac: MacAddress | None,
        address: IPv4Address,
        network: IPv4Network,
        now: float,
        lease_time: float,
        hostname: str | None = None,
    ) -> Lease | None:
        """Bind ``address`` to the client for ``lease_time`` seconds (a REQUEST), or None (NAK).

        Allowed when the address is in the pool's range or reserved for this MAC, and is free
        or already this client's (an address offered to another client is not: the REQUEST
        came too late); an unknown client at the pool's ``unknown_limit`` only gets what it
        holds already.  The client's other records in the pool are removed: a client uses one
        address per subnet. ``lease_time`` may be ``math.inf``.
        """
        _require_identity(client_id, mac)
        self._latest_now = max(self._latest_now, now)
        state = self._state(network)
        if address not in network:
            return None
        a = int(address)
        if not state.valid_for(a, mac) or not self._available(state, a, client_id, mac, now):
            return None
        if self._at_unknown_limit(state, mac, now):
            held = state.leases.get(a)
            if held is None or not held.is_active(now) or not held.matches(client_id, mac):
                return None  # it would be one more address for an unknown client
        others = self._others(state, a, client_id, mac)
        existing = state.leases.get(a)
        if hostname is None and existing is not None and existing.matches(client_id, mac):
            hostname = existing.hostname
        lease = Lease(
            address, state.network, client_id, mac, LeaseState.BOUND, now + lease_time, hostname
        )
        self._put(state, a, lease, persist=True)
        for other in others:
            self._remove(state, other, now)
        return lease

    def release(
        self, client_id: bytes | None, mac: MacAddress | None, address: IPv4Address, now: float
    ) -> Lease | None:
        """A DHCPRELEASE (RFC 2131 §4.3.4): free the address but remember whose it was."""
        self._latest_now = max(self._latest_now, now)
        found = self._own_record(client_id, mac, address)
        if found is None:
            return None
        state, lease = found
        released = Lease(
            lease.address,
            lease.network,
            lease.client_id,
            lease.mac,
            LeaseState.RELEASED,
            now,
            lease.hostname,
        )
        self._put(state, int(address), released, persist=True)
        return released

    def decline(
        self,
        client_id: bytes | None,
        mac: MacAddress | None,
        address: IPv4Address,
        now: float,
        quarantine: float,
    ) -> Lease | None:
        """A DHCPDECLINE (RFC 2131 §4.3.3): something else answers on the address.

        The address is out of the pool until ``now + quarantine``; the record keeps the
        decliner's identity for the log but is no longer its lease, so its next DISCOVER gets
        another address.
        """
        self._latest_now = max(self._latest_now, now)
        found = self._own_record(client_id, mac, address)
        if found is None:
            return None
        state, lease = found
        declined = Lease(
            lease.address,
            lease.network,
            lease.client_id,
            lease.mac,
            LeaseState.DECLINED,
            now + quarantine,
            lease.hostname,
        )
        self._put(state, int(address), declined, persist=True)
        return declined

    def forget_offer(self, client_id: bytes | None, mac: MacAddress | None, now: float) -> None:
        """The client chose another server (RFC 2131 §4.3.2): its offers go back to the pool.

        A binding offered again stays bound: the client still holds it until it expires.
        """
        self._latest_now = max(self._latest_now, now)
        for state in self._ordered:
            for a in self._matching(state, client_id, mac):
                lease = state.leases[a]
                if lease.state is LeaseState.OFFERED and lease.expires > now:
                    self._put(state, a, attrs.evolve(lease, expires=now), persist=False)

    def share_with_other_servers(self, fraction: float) -> None:
        """Allocate as one of several servers on a shared lease database (issue 15).

        A new client is offered the address its MAC hashes to when that one is free (every
        server computes the same, so two servers answering one client name the same address
        and both claims succeed); otherwise the never-used walk starts ``fraction`` of the
        way into each range (:meth:`start_at`), so that two servers seldom pick the same one.
        """
        self._hashed = True
        self.start_at(fraction)

    def start_at(self, fraction: float) -> None:
        """Walk each range's never-used addresses from ``fraction`` of the way in (wrapping).

        Servers sharing one lease database (issue 15) each start at a different point, so
        that their offers rarely name an address the other just bound (each such REQUEST
        would lose its claim and be NAKed). Survives :meth:`restore`.
        """
        for state in self._ordered:
            span = state.hi - state.lo + 1
            state.offset = int(fraction * span) % span if span > 0 else 0

    def adopt(self, lease: Lease, now: float) -> None:
        """Take in a record another server stored in a shared lease database (issue 15).

        Never persisted again (it is in the database already). A BOUND record wins its address
        over a local offer and takes its client's other records in the pool away (the client
        moved to the other server); a removal drops the local record unless it is an offer
        still held here. Records for addresses outside every pool are ignored.
        """
        self._latest_now = max(self._latest_now, now)
        a = int(lease.address)
        state = self._pool_of(a)
        if state is None:
            return
        held = state.leases.get(a)
        if lease.is_removal:
            if held is not None and not (held.state is LeaseState.OFFERED and held.expires > now):
                self._remove(state, a, now, persist=False)
            return
        if lease.network != state.network:
            lease = attrs.evolve(lease, network=state.network)
        if lease.state is LeaseState.BOUND:
            for other in self._others(state, a, lease.client_id, lease.mac):
                self._remove(state, other, now, persist=False)
        self._put(state, a, lease, persist=False)

    def take_changes(self) -> list[Lease]:
        """What must be persisted since the last call, oldest change first.

        BOUND, RELEASED and DECLINED records, and removals (:attr:`Lease.is_removal`); OFFERED
        records are never included (an offer promises nothing across a restart). Several
        changes to one address are folded into the latest, so applying the list in order, each
        record replacing the stored one for its address and a removal deleting it, gives the
        same store as applying every change.
        """
        changes = list(self._changes.values())
        self._changes.clear()
        return changes

    # -- internals ------------------------------------------------------------------------------

    def _state(self, network: IPv4Network) -> _PoolState:
        try:
            return self._pools[network]
        except KeyError:
            raise ValueError(f"no pool for network {network}") from None

    def _pool_of(self, address: int) -> _PoolState | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index < 0:
            return None
        state = self._ordered[index]
        return state if address <= state.network_last else None

    def _matching(
        self, state: _PoolState, client_id: bytes | None, mac: MacAddress | None
    ) -> list[int]:
        """Addresses of every record in the pool that a request with this identity matches."""
        found: list[int] = []
        if client_id is not None:
            a = state.by_client_id.get(client_id)
            if a is not None:
                found.append(a)
        if mac is not None:
            for a in state.by_mac.get(mac, ()):
                if a not in found and (client_id is None or state.leases[a].client_id is None):
                    found.append(a)
        return found

    def _lookup(
        self, state: _PoolState, client_id: bytes | None, mac: MacAddress | None, now: float
    ) -> Lease | None:
        """The client's record in the pool (dnsmasq ``lease_find_by_client()``)."""
        if client_id is not None:
            a = state.by_client_id.get(client_id)
            if a is not None:
                return state.leases[a]
        if mac is None:
            return None
        best: Lease | None = None
        for a in state.by_mac.get(mac, ()):
            lease = state.leases[a]
            if (client_id is None or lease.client_id is None) and (
                best is None or _rank(lease, now) > _rank(best, now)
            ):
                best = lease
        return best

    def _others(
        self, state: _PoolState, keep: int, client_id: bytes | None, mac: MacAddress | None
    ) -> list[int]:
        return [a for a in self._matching(state, client_id, mac) if a != keep]

    def _available(
        self,
        state: _PoolState,
        address: int,
        client_id: bytes | None,
        mac: MacAddress | None,
        now: float,
    ) -> bool:
        """Free, or held by this very client (never by another, never in quarantine)."""
        lease = state.leases.get(address)
        if lease is None or lease.expires <= now or lease.state is LeaseState.RELEASED:
            return True
        return lease.state is not LeaseState.DECLINED and lease.matches(client_id, mac)

    def _own_record(
        self, client_id: bytes | None, mac: MacAddress | None, address: IPv4Address
    ) -> tuple[_PoolState, Lease] | None:
        """The offered or bound record at ``address`` if it is this client's."""
        if client_id is None and mac is None:
            return None
        state = self._pool_of(int(address))
        if state is None:
            return None
        lease = state.leases.get(int(address))
        if lease is None or lease.state not in _HOLDING or not lease.matches(client_id, mac):
            return None
        return state, lease

    def _at_unknown_limit(self, state: _PoolState, mac: MacAddress | None, now: float) -> bool:
        """Whether a client with ``mac`` is unknown and its pool's unknown clients hold their
        ``unknown_limit`` of addresses already."""
        limit = state.pool.unknown_limit
        if limit is None or (mac is not None and mac in state.pool.known):
            return False
        held = state.unknown
        if len(held) < limit:
            return False
        heap = state.unknown_expiry
        while heap and heap[0][0] <= now:
            expires, a = heapq.heappop(heap)
            if held.get(a) == expires:
                del held[a]
        return len(held) >= limit

    def unknown_held(self, network: IPv4Network, now: float) -> int:
        """How many addresses of the pool unknown clients hold (offered or bound) at ``now``."""
        state = self._state(network)
        return sum(
            1
            for a in state.unknown
            if (lease := state.leases.get(a)) is not None and lease.is_active(now)
        )

    def _reclaim(self, state: _PoolState, now: float, *, unknown_only: bool) -> int | None:
        """The address of the oldest offer still held, taken back for another client.

        With ``unknown_only``, only an offer to an unknown client (see the module docstring).
        """
        leases = state.leases
        unknown = state.unknown
        for a in state.offers:
            lease = leases.get(a)
            if lease is None or lease.state is not LeaseState.OFFERED or lease.expires <= now:
                continue
            if unknown_only and a not in unknown:
                continue
            return a
        return None

    def _allocate(self, state: _PoolState, now: float) -> int | None:
        """A never-used address, else the one free the longest, else the oldest held offer;
        None when every address is bound, reserved or in quarantine."""
        leases = state.leases
        span = state.hi - state.lo + 1
        while state.cursor <= state.hi:
            a = state.cursor
            state.cursor += 1
            if state.offset:
                a = state.lo + (a - state.lo + state.offset) % span
            if a not in leases and state.dynamic(a):
                return a
        heap = state.recycle
        while heap and heap[0][0] <= now:
            _, a = heapq.heappop(heap)
            if not state.dynamic(a):
                continue
            lease = leases.get(a)
            if lease is None or lease.expires <= now or lease.state is LeaseState.RELEASED:
                return a
            # Taken again since this entry was pushed; the new holder pushed its own entry.
        return self._reclaim(state, now, unknown_only=False)

    def _put(self, state: _PoolState, address: int, lease: Lease, *, persist: bool) -> None:
        old = state.leases.get(address)
        if old is not None:
            self._unindex(state, address, old)
        state.leases[address] = lease
        offered = lease.state is LeaseState.OFFERED
        if offered or (old is not None and old.state is LeaseState.OFFERED):
            state.offers.pop(address, None)
            if offered and state.dynamic(address):
                state.offers[address] = None  # the newest offer goes last
        if state.pool.unknown_limit is not None:
            if lease.state in _HOLDING and (lease.mac is None or lease.mac not in state.pool.known):
                if state.dynamic(address):
                    state.unknown[address] = lease.expires
                    if not math.isinf(lease.expires):
                        heapq.heappush(state.unknown_expiry, (lease.expires, address))
                        if len(state.unknown_expiry) > 2 * len(state.unknown) + 1024:
                            state.unknown_expiry = [
                                (e, a) for a, e in state.unknown.items() if not math.isinf(e)
                            ]
                            heapq.heapify(state.unknown_expiry)
            else:
                state.unknown.pop(address, None)
        if lease.state is not LeaseState.DECLINED:
            if lease.client_id is not None:
                state.by_client_id[lease.client_id] = address
            if lease.mac is not None:
                state.by_mac.setdefault(lease.mac, {})[address] = None
        # A released record's ``expires`` is when it was released: free from then on.
        self._push(state, lease.expires, address)
        if persist:
            self._changes.pop(address, None)
            self._changes[address] = lease

    def _remove(self, state: _PoolState, address: int, now: float, *, persist: bool = True) -> None:
        old = state.leases.pop(address, None)
        if old is None:
            return
        self._unindex(state, address, old)
        state.offers.pop(address, None)
        state.unknown.pop(address, None)
        self._push(state, now, address)
        self._changes.pop(address, None)
        if persist:
            self._changes[address] = removal(old.address, state.network, now)

    def _unindex(self, state: _PoolState, address: int, lease: Lease) -> None:
        if lease.client_id is not None and state.by_client_id.get(lease.client_id) == address:
            del state.by_client_id[lease.client_id]
        if lease.mac is not None:
            addresses = state.by_mac.get(lease.mac)
            if addresses is not None:
                addresses.pop(address, None)
                if not addresses:
                    del state.by_mac[lease.mac]

    def _push(self, state: _PoolState, free_from: float, address: int) -> None:
        """Remember when ``address`` may next be free, if the allocator could ever use it."""
        if math.isinf(free_from) or not state.dynamic(address):
            return
        heapq.heappush(state.recycle, (free_from, address))
        if len(state.recycle) > state.rebuild_at:
            self._rebuild(state)

    def _rebuild(self, state: _PoolState) -> None:
        """Drop the stale heap entries (each renewal or offer pushes one): O(n), amortised.

        Kept: one entry per live record, and the entries of addresses that have no record any
        more (removed ones behind the cursor, which only the heap remembers).
        """
        leases = state.leases
        fresh = [
            (lease.expires, a)
            for a, lease in leases.items()
            if not math.isinf(lease.expires) and state.dynamic(a)
        ]
        orphans: dict[int, float] = {}
        for free_from, a in state.recycle:
            if a not in leases:
                orphans[a] = min(free_from, orphans.get(a, free_from))
        fresh.extend((free_from, a) for a, free_from in orphans.items())
        heapq.heapify(fresh)
        state.recycle = fresh
        state.rebuild_at = 2 * len(fresh) + 1024

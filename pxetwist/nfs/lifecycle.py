"""Which address a machine's exports belong to now: the rules of an export's life, pure.

An export is open to one address, the machine's, and only while that address is the machine's:

* a **reservation** (``machines[].address``) is the machine's for as long as the config says so;
* in **authoritative** mode, the address of the machine's bound, unexpired **lease**: the export
  goes when the lease expires or is released, and moves when the lease does.  An address seen
  by TFTP or HTTP counts only outside every configured subnet (addresses we do not hand out);
* otherwise (**proxy** mode, or DHCP off) the address that proxyDHCP, the port-4011 boot server,
  TFTP or HTTP last **saw** for the MAC.  Another MAC seen at that address takes it over: the
  first machine's exports are withdrawn, so a reused address never inherits them.

The book holds only facts and answers questions; :mod:`pxetwist.nfs.service` acts on the answers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from pxetwist.policy.values import MacAddress

#: ``lease_address(mac, now)``: the address of the machine's bound, unexpired lease, if any.
LeaseLookup = Callable[[MacAddress, float], IPv4Address | None]

_UNUSABLE = frozenset({IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255")})


class AddressBook:
    """Reservations, sightings and (in authoritative mode) leases, by MAC; see the module doc."""

    def __init__(
        self,
        reservations: Mapping[MacAddress, IPv4Address],
        *,
        authoritative: bool,
        subnets: Iterable[IPv4Network] = (),
        leases: LeaseLookup | None = None,
    ) -> None:
        self.reservations = dict(reservations)
        self.authoritative = authoritative
        self.subnets = tuple(subnets)
        self.leases = leases
        self._seen: dict[MacAddress, IPv4Address] = {}
        self._seen_at: dict[IPv4Address, MacAddress] = {}

    def see(self, mac: MacAddress, address: IPv4Address) -> set[MacAddress]:
        """Record that ``mac`` was seen at ``address``; return every MAC whose address changed."""
        if address in _UNUSABLE or address.is_loopback or address.is_multicast:
            return set()
        changed: set[MacAddress] = set()
        previous = self._seen.get(mac)
        if previous == address:
            return changed
        if previous is not None:
            self._seen_at.pop(previous, None)
        other = self._seen_at.get(address)
        if other is not None and other != mac:
            del self._seen[other]
            changed.add(other)
        self._seen[mac] = address
        self._seen_at[address] = mac
        changed.add(mac)
        return changed

    def forget(self, mac: MacAddress) -> None:
        address = self._seen.pop(mac, None)
        if address is not None and self._seen_at.get(address) == mac:
            del self._seen_at[address]

    def _ours(self, address: IPv4Address) -> bool:
        return any(address in network for network in self.subnets)

    def address_of(self, mac: MacAddress, now: float) -> IPv4Address | None:
        """The address ``mac``'s exports are granted to now, or ``None`` (withdraw them)."""
        reserved = self.reservations.get(mac)
        if reserved is not None:
            return reserved
        seen = self._seen.get(mac)
        if not self.authoritative:
            return seen
        leased = self.leases(mac, now) if self.leases is not None else None
        if leased is not None:
            return leased
        if seen is not None and not self._ours(seen):
            return seen
        return None

    def macs(self) -> set[MacAddress]:
        """Every MAC the book knows an address for (reservations and sightings)."""
        return set(self.reservations) | set(self._seen)

    # -- persistence: sightings survive a restart (leases and reservations have their own) ----

    def save(self, path: Path) -> None:
        data = {str(mac): str(address) for mac, address in self._seen.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"seen": data}, indent=1, sort_keys=True))
        os.replace(temporary, path)

    def load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        for mac_text, address_text in dict(raw.get("seen", {})).items():
            try:
                self.see(MacAddress.parse(str(mac_text)), IPv4Address(str(address_text)))
            except ValueError:
                continue

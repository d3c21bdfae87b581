"""Who is at which address: what DHCP saw, so TFTP and HTTP can tell which machine is asking.

A TFTP request carries no MAC, and an HTTP request only what its URL says.  DHCP (leases, proxy
offers, port-4011 exchanges) records each machine it answers here; the later stages look the
client's address up and get back the machine's MAC and firmware details.  The kernel's neighbour
table is the fallback for machines DHCP never saw with an address (proxy mode, BIOS clients).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import attrs

from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import MacAddress, Stage

#: Told of every :meth:`SightingRegistry.record`: the request and the address (if known).
SightingObserver = Callable[[BootRequest, IPv4Address | None], None]


@attrs.frozen
class Sighting:
    """The last request DHCP answered for a machine, and where it was."""

    request: BootRequest
    address: IPv4Address | None
    seen_at: float


def read_neighbours(path: Path = Path("/proc/net/arp")) -> dict[IPv4Address, MacAddress]:
    """The kernel's IPv4 neighbour table (complete entries only)."""
    table: dict[IPv4Address, MacAddress] = {}
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return table
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] != "0x0":
            try:
                table[IPv4Address(fields[0])] = MacAddress.parse(fields[3])
            except ValueError:
                continue
    return table


class SightingRegistry:
    """A bounded map of recently seen machines, by MAC and by address (least recent dropped)."""

    def __init__(
        self,
        now: Callable[[], float],
        capacity: int = 100_000,
        neighbours: Callable[[], dict[IPv4Address, MacAddress]] = read_neighbours,
    ) -> None:
        self._now = now
        self._capacity = capacity
        self._neighbours = neighbours
        self._by_mac: OrderedDict[MacAddress, Sighting] = OrderedDict()
        self._by_address: dict[IPv4Address, MacAddress] = {}
        self._observers: tuple[SightingObserver, ...] = ()

    def subscribe(self, observer: SightingObserver) -> None:
        """Call ``observer(request, address)`` after each :meth:`record` (the NFS wrapper does)."""
        self._observers = (*self._observers, observer)

    def unsubscribe(self, observer: SightingObserver) -> None:
        self._observers = tuple(o for o in self._observers if o != observer)

    def record(self, request: BootRequest, address: IPv4Address | None = None) -> None:
        """Remember this request; ``address`` is the client's address when known."""
        previous = self._by_mac.pop(request.mac, None)
        if address is None and previous is not None:
            address = previous.address
        if previous is not None and previous.address is not None and previous.address != address:
            self._by_address.pop(previous.address, None)
        self._by_mac[request.mac] = Sighting(request, address, self._now())
        if address is not None:
            self._by_address[address] = request.mac
        while len(self._by_mac) > self._capacity:
            _, dropped = self._by_mac.popitem(last=False)
            if (
                dropped.address is not None
                and self._by_address.get(dropped.address) == dropped.request.mac
            ):
                del self._by_address[dropped.address]
        for observer in self._observers:
            observer(request, address)

    def by_mac(self, mac: MacAddress) -> Sighting | None:
        return self._by_mac.get(mac)

    def mac_seen_at(self, address: IPv4Address) -> MacAddress | None:
        """The machine DHCP last saw at ``address``, from memory only (no neighbour table)."""
        return self._by_address.get(address)

    def neighbours(self) -> dict[IPv4Address, MacAddress]:
        """The neighbour table this registry falls back to (a file read: not per packet)."""
        return self._neighbours()

    def mac_at(self, address: IPv4Address) -> MacAddress | None:
        mac = self._by_address.get(address)
        if mac is None:
            mac = self._neighbours().get(address)
        return mac

    def request_for(
        self,
        *,
        stage: Stage,
        address: IPv4Address | None,
        mac: MacAddress | None = None,
        path: str | None = None,
    ) -> BootRequest | None:
        """A request for a later stage, from the MAC (if known) or the client's address.

        The firmware details (architecture, classes, UUID) come from the last DHCP sighting, so
        a policy decides for a TFTP or HTTP request the way it did for that machine's DHCP one.
        """
        if mac is None and address is not None:
            mac = self.mac_at(address)
        if mac is None:
            return None
        sighting = self._by_mac.get(mac)
        if sighting is None:
            return BootRequest(mac=mac, stage=stage, client_address=address, path=path)
        return attrs.evolve(sighting.request, stage=stage, client_address=address, path=path)

# -*- test-case-name: tests.sessions.test_attribution -*-
"""Tie events that carry only a client address (TFTP, HTTP) to the machine's MAC.

A TFTP request carries no MAC, and an HTTP request only what its URL says.  Before sessions and
boot-once see an event, :class:`Attribution` fills in its MAC from memory: addresses this
observer saw together with a MAC in earlier events, then what DHCP recorded in the sighting
registry.  Neither costs I/O.  An event still unplaced waits (bounded) for :meth:`resolve`, the
timer's call, which reads the kernel's neighbour table once for all waiting events and passes
them on late: the table is a file, and a file read has no place on the per-packet path.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from typing import Final

import attrs

from pxetwist.events import BootEvent, BootEventObserver
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import MacAddress

PENDING_LIMIT: Final = 4096  # events waiting for the neighbour table (oldest dropped)
ADDRESS_LIMIT: Final = 65536  # addresses remembered from events (least recent dropped)


class Attribution:
    """An observer that passes events on to ``downstream`` with their MAC filled in."""

    def __init__(
        self,
        downstream: Sequence[BootEventObserver],
        sightings: SightingRegistry | None = None,
        *,
        neighbours: Callable[[], dict[IPv4Address, MacAddress]] | None = None,
    ) -> None:
        self.downstream = tuple(downstream)
        self._sightings = sightings
        if neighbours is None and sightings is not None:
            neighbours = sightings.neighbours
        self._neighbours = neighbours
        # by the address's integer: an ``IPv4Address`` hashes in Python, an int in C
        self._addresses: OrderedDict[int, MacAddress] = OrderedDict()
        self._pending: deque[BootEvent] = deque(maxlen=PENDING_LIMIT)
        self.unplaced = 0  # events dropped because no MAC could be found for them

    def __call__(self, event: BootEvent) -> None:
        client = event.client
        if event.mac is None:
            if client is None:
                return
            mac = self._known(client)
            if mac is None:
                if len(self._pending) == self._pending.maxlen:
                    self.unplaced += 1
                self._pending.append(event)
                return
            event = attrs.evolve(event, mac=mac)
        elif client is not None:
            self._learn(client, event.mac)
        self._pass_on(event)

    def _pass_on(self, event: BootEvent) -> None:
        for observer in self.downstream:
            observer(event)

    def _known(self, client: IPv4Address) -> MacAddress | None:
        mac = self._addresses.get(int(client))
        if mac is None and self._sightings is not None:
            mac = self._sightings.mac_seen_at(client)
        return mac

    def _learn(self, client: IPv4Address, mac: MacAddress) -> None:
        key = int(client)
        if key == 0:  # 0.0.0.0: no address yet
            return
        addresses = self._addresses
        addresses[key] = mac
        addresses.move_to_end(key)
        if len(addresses) > ADDRESS_LIMIT:
            addresses.popitem(last=False)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def resolve(self) -> int:
        """Place the waiting events (one neighbour-table read); return how many were placed."""
        if not self._pending:
            return 0
        waiting = list(self._pending)
        self._pending.clear()
        table = self._neighbours() if self._neighbours is not None else {}
        placed = 0
        for event in waiting:
            assert event.client is not None
            mac = self._known(event.client) or table.get(event.client)
            if mac is None:
                self.unplaced += 1
                continue
            self._learn(event.client, mac)
            placed += 1
            self._pass_on(attrs.evolve(event, mac=mac))
        return placed

"""The lease table of the running DHCP service, as the API sees it (:class:`ILeaseView`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from pxetwist.api.sources import ILeaseView, PoolUse
from pxetwist.dhcp.leases import Lease, LeaseTable
from pxetwist.dhcp.store import ILeaseStore


@implementer(ILeaseView)
class TableLeaseView:
    """Reads a :class:`LeaseTable`; releases through it and its store, as a DHCPRELEASE does.

    ``table`` and ``store`` are asked for on every call (the DHCP service opens its store only
    when it starts, and a reload may replace both).
    """

    def __init__(
        self,
        table: Callable[[], LeaseTable | None],
        store: Callable[[], ILeaseStore | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._store = store
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    def leases(self) -> Sequence[Lease]:
        table = self._table()
        return list(table.leases()) if table is not None else []

    def pools(self) -> Sequence[PoolUse]:
        table = self._table()
        if table is None:
            return []
        return [
            PoolUse(network, size, held)
            for network, (held, size) in table.stats(self._clock()).items()
        ]

    def release(self, address: IPv4Address) -> Deferred[Lease | None]:
        table = self._table()
        if table is None:
            return succeed(None)
        now = self._clock()
        lease = table.find_address(address, now)
        if lease is None or not lease.holds_address(now):
            return succeed(None)
        released = table.release(lease.client_id, lease.mac, address, now)
        changes = table.take_changes()
        store = self._store()
        if released is None or store is None or not changes:
            return succeed(released)
        return store.write(changes).addCallback(lambda _: released)

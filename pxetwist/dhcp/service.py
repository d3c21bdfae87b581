"""The DHCP service: sockets per interface on 67 (and 4011), the lease table and its store."""

from __future__ import annotations

import zlib
from ipaddress import IPv4Address
from typing import Any, cast

from twisted.application.service import Service
from twisted.logger import Logger

from pxetwist.config.model import Config, DhcpMode
from pxetwist.context import IServerReactor, ServerContext, Settings
from pxetwist.dhcp.engine import PXE_PORT, SERVER_PORT, DhcpEngine, Interface, pools_for
from pxetwist.dhcp.leases import Lease, LeaseTable, Pool
from pxetwist.dhcp.pgstore import ISharedLeaseStore
from pxetwist.dhcp.protocol import DhcpEndpoint
from pxetwist.dhcp.sockets import DatagramReader, open_udp_socket
from pxetwist.dhcp.store import ILeaseStore, IStoreReactor, open_lease_store, redacted
from pxetwist.policy.overlay import MachineOverlay, served_machines

log = Logger()


def _ordered(pools: list[Pool]) -> list[Pool]:
    """Pools in the table's order (by network), to compare with :meth:`LeaseTable.pools`."""
    return sorted(pools, key=lambda pool: int(pool.network.network_address))


class DhcpService(Service):
    """Authoritative DHCP or proxyDHCP on port 67, and the PXE boot server on 4011."""

    name = "dhcp"

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self._overlay = MachineOverlay.for_config(context.config)
        self._overlay.subscribe(self._machines_changed)
        self.table = LeaseTable(self._pools(context.config))
        self._started_with = context.config
        self.store: ILeaseStore | None = None
        self.readers: list[DatagramReader] = []
        self.endpoints: list[DhcpEndpoint] = []
        self._serving: list[Interface] = []  # the interfaces served now (start, reload)
        context.live.subscribe(self._reloaded)

    @property
    def reactor(self) -> IServerReactor:
        return self.context.reactor

    def _served(self) -> list[Interface]:
        served = []
        for info in self.context.interfaces:
            if info.address is None:
                log.warn(
                    "interface {interface} has no IPv4 address; not serving DHCP on it",
                    interface=info.name,
                )
                continue
            served.append(Interface(info.name, info.address.ip, info.address.network, info.mtu))
        return served

    def _pools(self, config: Config) -> list[Pool]:
        """The pools of ``config`` with the reservations of every machine it serves, the API's
        included (issue 14)."""
        return pools_for(config, served_machines(config, self._overlay))

    def _engine(self, config: Config, served: list[Interface]) -> DhcpEngine:
        server_ids: list[IPv4Address] = [interface.address for interface in served]
        if config.server_address is not None:
            server_ids.append(config.server_address)
        known = frozenset(m.mac for m in served_machines(config, self._overlay))
        return DhcpEngine(config, self.table, server_ids, known=known)

    def _rebuild_table(self, pools: list[Pool], why: str) -> None:
        """A new table for ``pools`` with every lease and held offer carried over."""
        table = LeaseTable(pools)
        if ISharedLeaseStore.providedBy(self.store):
            table.share_with_other_servers(self._spread())
        dropped = table.restore(list(self.table.leases()), self.reactor.seconds())
        self.table = table
        log.info(
            "dhcp: pools rebuilt ({why}); {dropped} leases are in no pool now (their clients "
            "are NAKed at their next REQUEST)",
            why=why,
            dropped=len(dropped),
        )

    def _machines_changed(self) -> None:
        """A machine was added, changed or deleted through the API (issue 14): its reservation
        and its being known count from the next packet on, without a restart.  Called on the
        reactor thread, between two packets (nothing is in flight, as for a reload)."""
        config = self.context.config
        pools = self._pools(config)
        if _ordered(pools) != self.table.pools():
            self._rebuild_table(pools, "machines changed through the API")
        engine = self._engine(config, self._serving)
        for endpoint in self.endpoints:
            endpoint.engine = engine

    def _ports(self) -> list[int]:
        # dhcp.mode and dhcp.boot_server are read at start: a reload does not change the ports
        config = self._started_with
        ports = [SERVER_PORT] if config.dhcp.mode is not DhcpMode.OFF else []
        if config.dhcp.boot_server and config.dhcp.mode is not DhcpMode.OFF:
            ports.append(PXE_PORT)
        return ports

    def _open(self, interface: Interface, engine: DhcpEngine) -> None:
        for port in self._ports():
            sock = open_udp_socket(interface.name, port)
            endpoint = DhcpEndpoint(
                sock=sock,
                interface=interface,
                port=port,
                engine=engine,
                chain=self.context.chain,
                store=self.store,
                sightings=self.context.sightings,
                clock=self.reactor,
                events=self.context.events,
            )
            self.endpoints.append(endpoint)
            reader = DatagramReader(
                sock,
                endpoint.datagram_received,
                call_soon=lambda serve: self.reactor.callLater(0, serve),
            )
            self.readers.append(reader)
            log.info(
                "dhcp ({mode}) listening on {interface} {address}:{port}",
                mode=self._started_with.dhcp.mode.value,
                interface=interface.name,
                address=str(interface.address),
                port=port,
            )

    def privilegedStartService(self) -> None:
        config = self._started_with = self.context.config
        served = self._serving = self._served()
        engine = self._engine(config, served)
        for interface in served:
            self._open(interface, engine)
        super().privilegedStartService()

    def _reloaded(self, old: Settings, new: Settings) -> None:
        """A reload: the new config and chain answer the next packet; pools and reservations
        are rebuilt with every lease and held offer carried over; sockets follow the served
        interfaces.  Nothing is in flight between two packets: the engine hands its changes to
        the store in the turn that made them, so the table can be swapped here."""
        config = new.config
        overlay = MachineOverlay.for_config(config)
        if overlay is not self._overlay:  # another data_dir
            self._overlay.unsubscribe(self._machines_changed)
            self._overlay = overlay
            overlay.subscribe(self._machines_changed)
        pools = self._pools(config)
        if _ordered(pools) != self.table.pools():
            self._rebuild_table(pools, "the reloaded config")
        served = self._serving = self._served()
        engine = self._engine(config, served)
        for endpoint in self.endpoints:
            endpoint.engine = engine
            endpoint.chain = new.chain
        if not self.endpoints and not self.running:
            return
        wanted = set(served)
        for endpoint, reader in list(zip(self.endpoints, self.readers, strict=True)):
            if endpoint.interface in wanted:
                continue
            self.endpoints.remove(endpoint)
            self.readers.remove(reader)
            self.reactor.removeReader(reader)
            reader.close()
            log.info(
                "dhcp: no longer listening on {interface} {address}:{port}",
                interface=endpoint.interface.name,
                address=str(endpoint.interface.address),
                port=endpoint.port,
            )
        listening = {endpoint.interface for endpoint in self.endpoints}
        before = set(self.readers)
        for interface in served:
            if interface in listening:
                continue
            try:
                self._open(interface, engine)
            except OSError as error:
                log.error(
                    "dhcp: cannot listen on {interface}: {error} (ports below 1024 need the "
                    "privileges twistd dropped: restart to serve it)",
                    interface=interface.name,
                    error=str(error),
                )
        if self.running:
            for reader in self.readers:
                if reader not in before:
                    self.reactor.addReader(reader)

    def startService(self) -> None:
        # The lease database is opened here, after twistd has dropped privileges (--uid/--gid),
        # so its files belong to the user that keeps writing them; no packet is read before
        # every lease is back in the table.
        config = self.context.config
        if config.dhcp.mode is DhcpMode.AUTHORITATIVE:
            # IServerReactor includes both halves of IStoreReactor (time and from-threads).
            store_reactor = cast(IStoreReactor, self.reactor)
            self.store = open_lease_store(config.lease_store_url, store_reactor)
            leases = self.store.load()
            self.table.restore(leases, self.reactor.seconds())
            for endpoint in self.endpoints:
                endpoint.store = self.store
            if ISharedLeaseStore.providedBy(self.store):
                self.store.watch(self._adopt)  # type: ignore[attr-defined]
                self.table.share_with_other_servers(self._spread())
            log.info(
                "loaded {count} leases from {url}",
                count=len(leases),
                url=redacted(config.lease_store_url),
            )
        self._overlay.subscribe(self._machines_changed)
        super().startService()
        for reader in self.readers:
            self.reactor.addReader(reader)

    def _spread(self) -> float:
        """Where this server's allocation starts in each range, from its identity in the
        shared database: servers sharing it allocate from different places."""
        server = str(getattr(self.store, "server", ""))
        return (zlib.crc32(server.encode()) % 997) / 997

    def _adopt(self, leases: list[Lease], complete: bool) -> None:
        """Leases other servers stored in the shared database: into the table (issue 15);
        ``complete`` (after a database outage): the table is rebuilt from them."""
        now = self.reactor.seconds()
        if complete:
            self.table.restore(leases, now)
            return
        for lease in leases:
            self.table.adopt(lease, now)

    def stopService(self) -> Any:
        super().stopService()
        self._overlay.unsubscribe(self._machines_changed)
        for reader in self.readers:
            self.reactor.removeReader(reader)
            reader.close()
        self.readers.clear()
        if self.store is not None:
            return self.store.close()
        return None

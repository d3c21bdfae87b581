"""The DHCP service: sockets per interface on 67 (and 4011), the lease table and its store."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, cast

from twisted.application.service import Service
from twisted.logger import Logger

from pxetwist.config.model import Config, DhcpMode
from pxetwist.context import IServerReactor, ServerContext
from pxetwist.dhcp.engine import PXE_PORT, SERVER_PORT, DhcpEngine, Interface
from pxetwist.dhcp.leases import LeaseTable, Pool
from pxetwist.dhcp.protocol import DhcpEndpoint
from pxetwist.dhcp.sockets import DatagramReader, open_udp_socket
from pxetwist.dhcp.store import ILeaseStore, IStoreReactor, open_lease_store

log = Logger()


def pools_for(config: Config) -> list[Pool]:
    """One pool per subnet, with the reservations of the machines whose address falls in it."""
    pools = []
    for subnet in config.dhcp.subnets:
        reservations = {
            machine.mac: machine.address
            for machine in config.machines
            if machine.address is not None and machine.address in subnet.network
        }
        first, last = subnet.range if subnet.range else (None, None)
        pools.append(Pool(subnet.network, first, last, reservations))
    return pools


class DhcpService(Service):
    """Authoritative DHCP or proxyDHCP on port 67, and the PXE boot server on 4011."""

    name = "dhcp"

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.table = LeaseTable(pools_for(context.config))
        self.store: ILeaseStore | None = None
        self.readers: list[DatagramReader] = []
        self.endpoints: list[DhcpEndpoint] = []

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

    def privilegedStartService(self) -> None:
        config = self.context.config
        served = self._served()
        server_ids: list[IPv4Address] = [interface.address for interface in served]
        if config.server_address is not None:
            server_ids.append(config.server_address)
        engine = DhcpEngine(config, self.table, server_ids)
        ports = [SERVER_PORT] if config.dhcp.mode is not DhcpMode.OFF else []
        if config.dhcp.boot_server and config.dhcp.mode is not DhcpMode.OFF:
            ports.append(PXE_PORT)
        for interface in served:
            for port in ports:
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
                )
                self.endpoints.append(endpoint)
                self.readers.append(DatagramReader(sock, endpoint.datagram_received))
                log.info(
                    "dhcp ({mode}) listening on {interface} {address}:{port}",
                    mode=config.dhcp.mode.value,
                    interface=interface.name,
                    address=str(interface.address),
                    port=port,
                )
        super().privilegedStartService()

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
            log.info(
                "loaded {count} leases from {url}", count=len(leases), url=config.lease_store_url
            )
        super().startService()
        for reader in self.readers:
            self.reactor.addReader(reader)

    def stopService(self) -> Any:
        super().stopService()
        for reader in self.readers:
            self.reactor.removeReader(reader)
            reader.socket.close()
        self.readers.clear()
        if self.store is not None:
            return self.store.close()
        return None

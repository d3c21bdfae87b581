"""The running server: one child service per enabled protocol, all asking one policy chain."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from pxetwist.config.model import DhcpMode
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.startup import ServerSetup

log = Logger()


class PxeService(MultiService):
    """The root of ``twistd pxe``'s service tree.

    Children bind their sockets in ``privilegedStartService`` so that ``--uid/--gid`` can drop
    root after ports 67, 69 and 4011 are bound.
    """

    def __init__(self, setup: ServerSetup, reactor: Any) -> None:
        super().__init__()
        self.setup = setup
        self.reactor = reactor
        config = setup.config
        self.chain = PolicyChain(setup.policies, reactor, config.policy.timeout)
        self.sightings = SightingRegistry(reactor.seconds)
        if config.dhcp.mode is not DhcpMode.OFF:
            from pxetwist.dhcp.service import DhcpService

            DhcpService(
                config, setup.interfaces, self.chain, self.sightings, reactor
            ).setServiceParent(self)
        if config.tftp.enabled:
            from pxetwist.tftp.service import TftpService

            TftpService(
                config, setup.interfaces, self.chain, self.sightings, reactor
            ).setServiceParent(self)
        if config.http.enabled:
            from pxetwist.http.service import HttpService

            HttpService(
                config, setup.interfaces, self.chain, self.sightings, reactor
            ).setServiceParent(self)

    def _not_yet(self, protocol: str) -> None:
        log.warn(
            "{protocol} is enabled in the config but not implemented in this version; "
            "it is not being served",
            protocol=protocol,
        )

    def privilegedStartService(self) -> None:
        self.setup.config.data_dir.mkdir(parents=True, exist_ok=True)
        super().privilegedStartService()

    def startService(self) -> None:
        log.info(
            "pxetwist starting with policy chain {chain}",
            chain=" -> ".join(self.chain.names),
        )
        super().startService()

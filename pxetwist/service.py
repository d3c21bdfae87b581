"""The running server: one child service per enabled protocol, all built from one context.

:data:`PROTOCOLS` is the table of protocols: a name, whether the config enables it, and where its
service class lives (imported only when enabled, so a server without HTTP never imports
twisted.web).  Every service class takes a :class:`~pxetwist.context.ServerContext` and nothing
else; a new protocol is its package plus one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorUNIX
from twisted.logger import Logger

from pxetwist.config.model import Config, DhcpMode
from pxetwist.context import IServerReactor, ServerContext
from pxetwist.control import ControlService
from pxetwist.events import LogObserver
from pxetwist.gcpolicy import resettle_garbage_collector, settle_garbage_collector
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.sharedmachines import SharedMachinesService, shared_url
from pxetwist.privileges import RunAs, give_to
from pxetwist.reload import Reloader, SignalHandler, install_sighup, restore_sighup
from pxetwist.sessions.recorder import recorder_for
from pxetwist.startup import ServerSetup

log = Logger()


@attrs.frozen
class ProtocolEntry:
    """One protocol of the server: ``service`` is ``"module:Class"``, the class taking a
    :class:`ServerContext`."""

    name: str
    enabled: Callable[[Config], bool]
    service: str

    def build(self, context: ServerContext) -> IService:
        module, _, name = self.service.partition(":")
        factory: Callable[[ServerContext], IService] = getattr(
            importlib.import_module(module), name
        )
        return factory(context)


PROTOCOLS: tuple[ProtocolEntry, ...] = (
    ProtocolEntry(
        "dhcp", lambda c: c.dhcp.mode is not DhcpMode.OFF, "pxetwist.dhcp.service:DhcpService"
    ),
    ProtocolEntry("tftp", lambda c: c.tftp.enabled, "pxetwist.tftp.service:TftpService"),
    ProtocolEntry("http", lambda c: c.http.enabled, "pxetwist.http.service:HttpService"),
    ProtocolEntry("api", lambda c: c.api.enabled, "pxetwist.api.service:api_service"),
    ProtocolEntry("nfs", lambda c: c.nfs.enabled, "pxetwist.nfs.service:NfsService"),
)


class PxeService(MultiService):
    """The root of ``twistd pxe``'s service tree.

    Children bind their sockets in ``privilegedStartService`` so that ``--uid/--gid`` can drop
    root after ports 67, 69 and 4011 are bound.  Boot events go to the log through a
    :class:`~pxetwist.events.LogObserver` subscribed here; sessions, metrics and the API
    subscribe to ``context.events`` too.
    """

    def __init__(
        self,
        setup: ServerSetup,
        reactor: IServerReactor,
        run_as: RunAs | None = None,
        *,
        settle_gc: bool = False,
    ) -> None:
        super().__init__()
        self.setup = setup
        self._settle_gc = settle_gc  # twistd's process only: it freezes the whole heap
        config = setup.config
        self.context = ServerContext.build(
            config,
            PolicyChain(setup.policies, reactor, config.policy.timeout),
            reactor,
            interfaces=setup.interfaces,
            run_as=run_as,
        )
        # Per-request lines within the config's log budget (read at start; not reloaded).
        budget = config.log_budget
        self.context.events.subscribe(
            LogObserver(reactor, lines=budget.lines, interval=budget.interval)
        )
        # Sessions and boot once first: the boot-once gate goes on the chain before any
        # protocol asks it, and the store is open before the first packet.
        context = self.context
        self.recorder = recorder_for(context)
        self.recorder.setServiceParent(self)
        # Leases on PostgreSQL: the API's machines (and reservations) are the database's too,
        # followed before the DHCP service reads its first packet (issue 15).
        if shared_url(config) is not None:
            shared = SharedMachinesService(config, reactor)
            context.live.subscribe(lambda old, new: shared.configure(new.config))
            shared.setServiceParent(self)
        for entry in PROTOCOLS:
            if entry.enabled(config):
                entry.build(self.context).setServiceParent(self)
        # Hot reload (SIGHUP, `pxetwist reload` through the control socket, the API).
        self.reloader = Reloader(
            self.context,
            setup,
            after_reload=resettle_garbage_collector if settle_gc else None,
        )
        self._previous_sighup: SignalHandler = None
        if IReactorUNIX.providedBy(reactor):
            ControlService(self.reloader, config.data_dir, reactor).setServiceParent(self)

    @property
    def chain(self) -> PolicyChain:
        return self.context.chain

    def privilegedStartService(self) -> None:
        # SIGHUP reloads from before the first socket is bound: its default action would
        # kill the server (issue 18), and a signal can come while the services start.
        self._install_sighup()
        self.context.config.data_dir.mkdir(parents=True, exist_ok=True)
        give_to(self.context.config.data_dir, self.context.run_as)  # before --uid/--gid switch
        super().privilegedStartService()
        give_to(self.context.config.data_dir, self.context.run_as)  # what children made there

    def _install_sighup(self) -> None:
        if self._previous_sighup is None:
            self._previous_sighup = install_sighup(
                self.reloader, self.context.reactor.callFromThread
            )

    def startService(self) -> None:
        log.info(
            "pxetwist starting with policy chain {chain}",
            chain=" -> ".join(self.context.chain.names),
        )
        super().startService()
        self._install_sighup()
        if self._settle_gc:
            settle_garbage_collector()  # once the services built their tables (gcpolicy)

    def stopService(self) -> Any:
        restore_sighup(self._previous_sighup)
        self._previous_sighup = None
        return super().stopService()

"""The operator listener: ``/api/v1/`` (token), ``/metrics`` and the dashboard at ``/``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.web.server import Site

from pxetwist.api import dashboard
from pxetwist.api.leaseview import TableLeaseView
from pxetwist.api.metricsweb import MetricsResource
from pxetwist.api.nfsview import NfsExports
from pxetwist.api.router import Router
from pxetwist.api.sessionview import NoSessions, RecorderBootOnce, RecorderSessions
from pxetwist.api.tokens import TokenSet
from pxetwist.api.v1 import V1, ApiContext
from pxetwist.config import Config, ConfigError
from pxetwist.context import ServerContext, Settings
from pxetwist.dhcp.leases import LeaseTable
from pxetwist.dhcp.store import ILeaseStore
from pxetwist.metrics import BootMetrics, DhcpBacklog, StateCollector
from pxetwist.sessions.recorder import SessionRecorder

log = Logger()


def check_api_config(config: Config) -> TokenSet:
    """Load the tokens file and check ``api.metrics_token`` names one of its tokens."""
    tokens = TokenSet.load(config.api.tokens_file)
    name = config.api.metrics_token
    if name is not None and tokens.named(name) is None:
        raise ConfigError(
            f"no token named {name!r} in {config.api.tokens_file}",
            source=config.source,
            path=("api", "metrics_token"),
        )
    return tokens


class ApiSite(Site):
    """The listener's site: no access log line per request (scrapes and dashboard polling)."""

    def log(self, request: Any) -> None:
        return None


class ApiService(Service):
    """Listens on ``api.listen``; every path below it reads the server through ``context``."""

    name = "api"

    def __init__(
        self,
        context: ApiContext,
        reactor: IReactorTCP,
        metrics: BootMetrics | None = None,
        before_scrape: Callable[[], None] = lambda: None,
        on_start: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_start = on_start
        self.context = context
        self.reactor = reactor
        config = context.config()
        self.tokens = check_api_config(config)
        self.v1 = V1(context)
        self.router = Router(self.v1.routes(), lambda: self.tokens)
        self.root = dashboard.ListenerRoot()
        self.root.putChild(b"api", self.router)
        self.metrics = metrics if metrics is not None else BootMetrics()
        self.metrics_resource = MetricsResource(
            self.metrics.registry,
            lambda: self.tokens,
            lambda: self.context.config().api.metrics_token,
            before_scrape,
        )
        self.root.putChild(b"metrics", self.metrics_resource)
        dashboard.mount(self.root)
        self.site = ApiSite(self.root)
        self.port: Any = None

    def reload_tokens(self) -> None:
        """Read the tokens file again (after a config reload); the old set stays on error."""
        self.tokens = check_api_config(self.context.config())

    def privilegedStartService(self) -> None:
        api = self.context.config().api
        # cast: Site's channel type is narrower than listenTCP's stubs accept (Twisted's typing)
        site = cast(ServerFactory, self.site)
        self.port = self.reactor.listenTCP(api.port, site, interface=api.host)
        host = self.port.getHost()
        if not self.tokens.tokens:
            log.warn(
                "api: no tokens configured (api.tokens_file); every API request will be refused"
            )
        log.info(
            "api: operator API, metrics and dashboard on http://{host}:{port}/",
            host=host.host,
            port=host.port,
        )
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        # After the DHCP service's start (it comes first in the table): its store is open now.
        self._on_start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)

    @property
    def address(self) -> tuple[str, int]:
        host = self.port.getHost()
        return host.host, host.port


def api_service(context: ServerContext) -> ApiService:
    """The API service of a running server (the entry in :data:`pxetwist.service.PROTOCOLS`).

    It reads its sibling services through the service tree, looked up when asked (the DHCP
    service opens its lease store only when it starts): the lease table, TFTP's active
    transfers, the session recorder (sessions, boot once, finished boots for the metrics) and
    the NFS wrapper's exports.  It reads its tokens file again after each config reload.
    """
    holder: list[ApiService] = []

    def sibling(name: str) -> Any:
        parent = holder[0].parent if holder else None
        if parent is None:
            return None
        try:
            return parent.getServiceNamed(name)  # type: ignore[attr-defined]
        except KeyError:
            return None

    def table() -> LeaseTable | None:
        return getattr(sibling("dhcp"), "table", None)

    def store() -> ILeaseStore | None:
        return getattr(sibling("dhcp"), "store", None)

    def active_transfers() -> int | None:
        count = getattr(sibling("tftp"), "active_transfers", None)
        return count() if callable(count) else count

    def dhcp_backlog() -> DhcpBacklog | None:
        readers = getattr(sibling("dhcp"), "readers", None)
        if readers is None:
            return None
        return DhcpBacklog(
            held=sum(reader.held for reader in readers),
            stale=sum(reader.stale for reader in readers),
            overflow=sum(reader.overflow for reader in readers),
        )

    reactor = context.reactor
    leases = TableLeaseView(table, store, reactor.seconds)
    metrics = BootMetrics()
    metrics.registry.register(StateCollector(leases.pools, active_transfers, dhcp_backlog))
    context.events.subscribe(metrics)
    _monitor_chain(context, metrics)

    def hook_store() -> None:
        current = store()
        if current is not None and getattr(current, "on_commit", False) is None:
            current.on_commit = metrics.lease_committed  # type: ignore[attr-defined]

    api_context = ApiContext(
        config=lambda: context.config,
        leases=leases,
        sessions=NoSessions(),
        clock=reactor.seconds,
        started=reactor.seconds(),
        policy_chain=lambda: context.chain.names,
    )

    def started() -> None:
        hook_store()
        reloader = getattr(holder[0].parent, "reloader", None)  # PxeService's Reloader
        if reloader is not None and api_context.reloader is None:
            api_context.reloader = reloader
        nfs = sibling("nfs")
        if nfs is not None and api_context.nfs is None:
            api_context.nfs = NfsExports(lambda: sibling("nfs"))
        recorder = sibling("sessions")
        if isinstance(recorder, SessionRecorder):
            api_context.sessions = RecorderSessions(recorder)
            api_context.boot_once = RecorderBootOnce(recorder)
            if metrics.sessions_changed not in recorder.changed_listeners:
                recorder.changed_listeners.append(metrics.sessions_changed)

    service = ApiService(api_context, reactor, metrics, hook_store, started)
    holder.append(service)

    def reloaded(old: Settings, new: Settings) -> None:
        try:
            service.reload_tokens()
        except ConfigError as error:
            log.error("api: tokens not reloaded, the old ones stay: {error}", error=str(error))

    context.live.subscribe(reloaded)
    return service


def _monitor_chain(context: ServerContext, metrics: BootMetrics) -> None:
    """Put the metrics' monitor on the policy chain, and back on a chain a reload builds."""
    monitor = metrics.policy_answered

    def monitored(settings: Settings) -> Settings | None:
        if settings.chain.monitor is monitor:
            return None
        # evolve: the settings carry more than config and chain (the served interfaces)
        return attrs.evolve(settings, chain=attrs.evolve(settings.chain, monitor=monitor))

    first = monitored(context.live.current)
    if first is not None:
        context.live.replace(first)

    def reloaded(old: Settings, new: Settings) -> None:
        again = monitored(new)
        if again is not None and context.live.current is new:
            context.live.replace(again)

    context.live.subscribe(reloaded)

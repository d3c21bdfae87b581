"""The NFS export wrapper: each machine's exports open to its address, for as long as it holds it.

State is level-triggered.  ``desired`` is what Ganesha should export now, worked out per machine
from the policy decision (which exports) and the :class:`~pxetwist.nfs.lifecycle.AddressBook`
(which address); ``applied`` is what Ganesha has.  Whenever a machine's facts change (DHCP saw
it, TFTP or HTTP served it, its lease was bound, released or expired, the config was reloaded)
the machine is looked at again and :meth:`NfsService._sync` walks ``applied`` towards
``desired`` one DBus call at a time (``RemoveExport`` first, then ``AddExport``).  A Ganesha that
is down is not an error here: the managed one is restarted with a config holding ``desired``.

Every export that Ganesha takes or gives up is logged with MAC, address and path and emitted as
an ``nfs-grant`` / ``nfs-withdraw`` :class:`~pxetwist.events.BootEvent`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from pxetwist.config.model import Config, DhcpMode
from pxetwist.context import IServerReactor
from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.nfs.bus import GaneshaBus, GaneshaBusError
from pxetwist.nfs.exports import ExportIds, ExportPlanner, planner_for, state_dir
from pxetwist.nfs.lifecycle import AddressBook, LeaseLookup
from pxetwist.nfs.managed import ManagedGanesha
from pxetwist.nfs.paths import NfsPathError
from pxetwist.nfs.render import ExportGrant, GaneshaSettings, render_config, render_export
from pxetwist.policy.overlay import MachineOverlay, served_machines
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import MacAddress, Stage

if TYPE_CHECKING:
    from pxetwist.context import ServerContext

log = Logger()

CHECK_INTERVAL = 5.0  # seconds between looks at lease expiry (authoritative mode)
DECIDED_CAPACITY = 100_000  # machines whose last decision is remembered


def ganesha_settings(config: Config) -> GaneshaSettings:
    return GaneshaSettings(
        versions=config.nfs.versions,
        bind_address=config.nfs.ganesha.bind_address,
        recovery_dir=state_dir(config) / "ganesha" / "recov",
    )


class NfsService(Service):
    """Grants and withdraws exports on a Ganesha it runs or an operator's (see module doc)."""

    name = "nfs"

    def __init__(
        self,
        context: ServerContext,
        bus_factory: Callable[[Any, str], GaneshaBus] = GaneshaBus,
    ) -> None:
        self.context = context
        self.bus_factory = bus_factory
        self.reactor: IServerReactor = context.reactor
        config = context.config
        self.state = state_dir(config)
        self.planner: ExportPlanner | None = None
        self.ids: ExportIds | None = None
        self.book = self._book(config)
        self.desired: dict[int, ExportGrant] = {}
        self.applied: dict[int, ExportGrant] = {}
        self.bus: GaneshaBus | None = None
        self.managed: ManagedGanesha | None = None
        self._lock = DeferredLock()
        self._checker: LoopingCall | None = None
        self._running = False
        self._sync_again = False
        self._pending: set[MacAddress] = set()
        self._unreported: list[ExportGrant] = []
        self._mounted: set[tuple[MacAddress, IPv4Address]] = set()
        self._decided: dict[MacAddress, tuple[IPv4Address | None, int]] = {}
        self._generation = 0  # bumped by each reload: every machine is decided again
        self._seen_dirty = False
        self._pending_call: Any = None
        self._overlay: MachineOverlay | None = None  # followed while running (API machines)

    # -- setup ----------------------------------------------------------------------------------

    @staticmethod
    def _reservations(config: Config) -> dict[MacAddress, IPv4Address]:
        """Every machine's fixed address, the API's machines included (issue 14)."""
        return {m.mac: m.address for m in served_machines(config) if m.address is not None}

    def _book(self, config: Config) -> AddressBook:
        reservations = self._reservations(config)
        return AddressBook(
            reservations,
            authoritative=config.dhcp.mode is DhcpMode.AUTHORITATIVE,
            subnets=[subnet.network for subnet in config.dhcp.subnets],
        )

    def _lease_table(self) -> Any:
        """The DHCP service's lease table, when this server hands out addresses."""
        parent = self.parent
        if parent is None or self.context.config.dhcp.mode is not DhcpMode.AUTHORITATIVE:
            return None
        try:
            dhcp: Any = parent.getServiceNamed("dhcp")  # type: ignore[attr-defined]
        except KeyError:
            return None
        return getattr(dhcp, "table", None)

    def _lease_lookup(self) -> LeaseLookup | None:
        table = self._lease_table()
        if table is None:
            return None

        def lookup(mac: MacAddress, now: float) -> IPv4Address | None:
            lease = table.find_client(None, mac, now)
            if lease is None or lease.state.value != "bound":
                return None
            return lease.address  # type: ignore[no-any-return]

        return lookup

    def _leased_macs(self) -> set[MacAddress]:
        """Every MAC with a bound, unexpired lease: after a restart their exports come back."""
        table = self._lease_table()
        if table is None:
            return set()
        now = self.reactor.seconds()
        return {
            lease.mac
            for lease in table.leases()
            if lease.mac is not None and lease.state.value == "bound" and lease.expires > now
        }

    def startService(self) -> None:
        super().startService()
        config = self.context.config
        self._running = True
        self.state.mkdir(parents=True, exist_ok=True)
        self.planner = planner_for(config, create_key=True)
        first, last = config.nfs.ganesha.export_ids
        self.ids = ExportIds(self.state / "export-ids.json", first, last)
        self.book.leases = self._lease_lookup()
        if not self.book.authoritative:
            self.book.load(self.state / "seen.json")
        self.context.sightings.subscribe(self._sighted)
        self.context.events.subscribe(self._event)
        self.context.live.subscribe(self._reloaded)
        self._overlay = MachineOverlay.for_config(config)
        self._overlay.subscribe(self._machines_changed)
        (self.state / "exports").mkdir(exist_ok=True)
        d = self._refresh(self.book.macs() | self._leased_macs(), start=True)
        d.addCallback(lambda _: self._start_backend(config))
        d.addErrback(lambda f: log.failure("nfs: starting the export wrapper failed", f))
        self._checker = LoopingCall(self._check)
        self._checker.clock = self.reactor
        self._checker.start(CHECK_INTERVAL, now=False)

    def _start_backend(self, config: Config) -> Deferred[None] | None:
        settings = ganesha_settings(config)
        if config.nfs.ganesha.managed and os.geteuid() != 0:
            log.error(
                "nfs: a managed Ganesha needs pxetwist to run as root (no --uid): its mount "
                "namespace, port 2049 and root-owned exports; no export is served"
            )
            return None
        if config.nfs.ganesha.managed:
            self.managed = ManagedGanesha(
                self.reactor,
                self.state / "ganesha",
                serves_v3=settings.serves_v3,
                write_config=self._write_config,
                on_ready=self._ganesha_ready,
            )
            self.bus = self.managed.bus
            return self.managed.start()
        address = config.nfs.ganesha.dbus or "system"
        self.bus = self.bus_factory(self.reactor, address)
        return self._adopt_external()

    def _write_config(self, path: Path) -> None:
        """The managed Ganesha's config, holding every export desired now (restored exports)."""
        grants = list(self.desired.values())
        path.write_text(render_config(ganesha_settings(self.context.config), grants))
        before, self.applied = self.applied, {grant.export_id: grant for grant in grants}
        if grants:
            log.info("nfs: Ganesha starts with {count} exports", count=len(grants))
        self._unreported = [
            grant
            for export_id, grant in sorted(self.applied.items())
            if before.get(export_id) != grant
        ]

    def _ganesha_ready(self, _bus: GaneshaBus) -> Deferred[None]:
        """Ganesha answers: the exports its config held are granted now; then catch up."""
        unreported, self._unreported = self._unreported, []
        for grant in unreported:
            if self.applied.get(grant.export_id) == grant:
                self._report(grant, EventStage.NFS_GRANT)
        return self._sync()

    @inlineCallbacks
    def _adopt_external(self) -> Any:
        """An operator's Ganesha: drop every export in our id range, then add ours."""
        assert self.bus is not None and self.ids is not None
        try:
            exports = yield self.bus.show_exports()
        except GaneshaBusError as error:
            log.error("nfs: the operator's Ganesha does not answer: {error}", error=str(error))
            return None
        for export_id in sorted(exports):
            if self.ids.first <= export_id <= self.ids.last:
                try:
                    yield self.bus.remove_export(export_id)
                except GaneshaBusError as error:
                    log.warn("nfs: cannot remove stale export {id}: {e}", id=export_id, e=error)
        self.applied = {}
        yield self._sync()
        return None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._running = False
        if self._pending_call is not None and self._pending_call.active():
            self._pending_call.cancel()
        self._pending_call = None
        if self._checker is not None and self._checker.running:
            self._checker.stop()
        self.context.sightings.unsubscribe(self._sighted)
        self.context.events.unsubscribe(self._event)
        if self._overlay is not None:
            self._overlay.unsubscribe(self._machines_changed)
            self._overlay = None
        if not self.book.authoritative:
            self._save_seen()
        if self.managed is not None:
            return self.managed.stop()
        if self.bus is not None:
            self.bus.close()
        return None

    # -- facts coming in ------------------------------------------------------------------------

    def _sighted(self, request: BootRequest, address: IPv4Address | None) -> None:
        """DHCP recorded a machine (proxy offer, 4011, authoritative ACK)."""
        macs = {request.mac}
        if address is not None and (
            not self.book.authoritative or request.stage is Stage.PROXY_4011
        ):
            moved = self.book.see(request.mac, address)
            self._seen_dirty |= bool(moved)
            macs |= moved
        self._soon(macs)

    def _event(self, event: BootEvent) -> None:
        if event.protocol is EventProtocol.NFS or event.mac is None:
            return
        macs = {event.mac}
        if event.client is not None and event.protocol in (EventProtocol.TFTP, EventProtocol.HTTP):
            moved = self.book.see(event.mac, event.client)
            self._seen_dirty |= bool(moved)
            macs |= moved
        elif event.stage not in (EventStage.REQUEST, EventStage.RELEASE, EventStage.DECLINE):
            return
        self._soon(macs)

    def _machines_changed(self) -> None:
        """A machine's address was set, changed or dropped through the API: its exports
        follow (granted to the new address, or withdrawn)."""
        before = self.book.reservations
        after = self._reservations(self.context.config)
        moved = {mac for mac in before.keys() | after.keys() if before.get(mac) != after.get(mac)}
        self.book.reservations = after
        self._soon(moved)

    def _reloaded(self, old: Any, new: Any) -> None:
        """Exports follow the new config; what Ganesha itself runs with waits for a restart."""
        before, after = old.config.nfs, new.config.nfs
        if self.planner is not None and after.root != before.root:
            self.planner = ExportPlanner(after.root, self.planner.key)
        if (after.versions, after.ganesha) != (before.versions, before.ganesha):
            log.warn(
                "nfs: nfs.versions and nfs.ganesha changed; they take effect when pxetwist "
                "restarts (exports follow the new config now)"
            )
        self._generation += 1
        if self._overlay is not None:
            self._overlay.unsubscribe(self._machines_changed)
            self._overlay = MachineOverlay.for_config(new.config)
            self._overlay.subscribe(self._machines_changed)
        leases = self.book.leases
        seen = {mac: self.book.address_of(mac, 0) for mac in self.book.macs()}
        self.book = self._book(new.config)
        self.book.leases = leases
        if not self.book.authoritative:
            for mac, address in seen.items():
                if address is not None and mac not in self.book.reservations:
                    self.book.see(mac, address)
        self._soon(self.book.macs() | self._granted_macs() | self._leased_macs())

    def _check(self) -> None:
        """Leases expire without a packet: look at every machine that holds exports.  And ask
        Ganesha which clients it has served, for the ``nfs-mount`` events."""
        self._poll_clients()
        self._verify_external()
        if self._seen_dirty and not self.book.authoritative:
            self._save_seen()
        now = self.reactor.seconds()
        stale = {
            grant.mac
            for grant in self.desired.values()
            if self.book.address_of(grant.mac, now) != grant.client
        }
        if stale:
            self._soon(stale)

    def _verify_external(self) -> None:
        """An operator's Ganesha that restarted has lost what we added over DBus: add it again."""
        bus = self.bus
        if bus is None or self.managed is not None or not self.applied or self._lock.locked:
            return
        d = bus.show_exports()
        d.addCallbacks(self._external_exports, lambda _: None)

    def _external_exports(self, exports: dict[int, str]) -> None:
        lost = [i for i, grant in self.applied.items() if exports.get(i) != grant.pseudo]
        if not lost:
            return
        log.warn(
            "nfs: Ganesha no longer has {count} of our exports (restarted?); adding them again",
            count=len(lost),
        )
        for export_id in lost:
            del self.applied[export_id]
        d = self._sync()
        d.addErrback(lambda f: log.failure("nfs: restoring exports failed", f))

    def _poll_clients(self) -> None:
        bus = self.bus
        if bus is None or not self.applied or (self.managed is not None and not self.managed.up):
            return
        d = bus.show_clients()
        d.addCallbacks(self._clients_seen, lambda _: None)

    def _clients_seen(self, clients: dict[str, list[str]]) -> None:
        """A granted machine's address among Ganesha's clients: it mounted (once per grant)."""
        holders = {(grant.mac, grant.client) for grant in self.applied.values()}
        self._mounted &= holders
        for mac, client in sorted(holders - self._mounted):
            protocols = clients.get(str(client))
            if protocols is None:
                continue
            self._mounted.add((mac, client))
            paths = [g.relative for g in self.applied.values() if g.mac == mac]
            self.context.events.emit(
                BootEvent(
                    time=self.reactor.seconds(),
                    protocol=EventProtocol.NFS,
                    stage=EventStage.NFS_MOUNT,
                    outcome=Outcome.OK,
                    mac=mac,
                    client=client,
                    details={"paths": sorted(paths), "protocols": ", ".join(protocols)},
                    message="nfs: {mac} at {client} is using its exports ({protocols})",
                )
            )

    def _soon(self, macs: set[MacAddress]) -> None:
        """Look at these machines again on the next reactor turn (never on a protocol's path)."""
        if not macs or not self._running:
            return
        self._pending |= macs
        if self._pending_call is None:
            self._pending_call = self.reactor.callLater(0, self._run_pending)

    def _run_pending(self) -> None:
        self._pending_call = None
        macs, self._pending = self._pending, set()
        d = self._refresh(macs)
        d.addErrback(lambda f: log.failure("nfs: updating exports failed", f))

    # -- deciding -------------------------------------------------------------------------------

    def _granted_macs(self) -> set[MacAddress]:
        return {grant.mac for grant in self.desired.values()}

    @inlineCallbacks
    def _refresh(self, macs: Iterable[MacAddress], start: bool = False) -> Any:
        """Work out the exports of each machine again, then sync Ganesha.

        A machine is decided again only when its address or the config changed since it was
        last decided (or an export was held back for a missing directory), so a DHCP storm
        costs a dictionary lookup per packet, not a policy decision.
        """
        changed = False
        now = self.reactor.seconds()
        for mac in sorted(macs):
            key = (self.book.address_of(mac, now), self._generation)
            if self._decided.get(mac) == key:
                continue
            grants, complete = yield self._grants_for(mac)
            self._decided.pop(mac, None)
            if complete:
                self._decided[mac] = key
                while len(self._decided) > DECIDED_CAPACITY:
                    del self._decided[next(iter(self._decided))]
            old = {i: g for i, g in self.desired.items() if g.mac == mac}
            if old != grants:
                for export_id in old:
                    del self.desired[export_id]
                self.desired.update(grants)
                changed = True
        if changed and not start:
            yield self._sync()
        return None

    @inlineCallbacks
    def _grants_for(self, mac: MacAddress) -> Any:
        if not self.context.config.nfs.enabled:  # turned off by a reload: withdraw everything
            return {}, True
        address = self.book.address_of(mac, self.reactor.seconds())
        if address is None or self.planner is None or self.ids is None:
            return {}, True
        request = self.context.sightings.request_for(stage=Stage.NFS, address=address, mac=mac)
        if request is None:
            request = BootRequest(mac=mac, stage=Stage.NFS, client_address=address)
        decision = yield self.context.chain.decide(request)
        plan = self.planner.plan(decision, mac)
        for template, problem in plan.refused:
            log.error(
                "nfs: not exporting {path} to {mac}: {problem}",
                path=template,
                mac=mac,
                problem=problem,
            )
        grants: dict[int, ExportGrant] = {}
        complete = True
        in_use = set(self.desired)
        for export in plan.exports:
            if not self._directory_ready(export.path, export.create, mac, export.relative):
                complete = False  # looked at again at the next sighting
                continue
            try:
                export_id = self.ids.id_for(export.pseudo, in_use)
            except NfsPathError as error:
                log.error("nfs: {error}", error=str(error))
                continue
            grants[export_id] = ExportGrant(
                export_id=export_id,
                mac=mac,
                client=address,
                path=export.path,
                pseudo=export.pseudo,
                access=export.access,
                relative=export.relative,
            )
        return grants, complete

    def _directory_ready(self, path: Path, create: bool, mac: MacAddress, relative: str) -> bool:
        if path.is_dir():
            return True
        if path.exists():
            log.error("nfs: {path} for {mac} is not a directory", path=str(path), mac=mac)
            return False
        if not create:
            log.error(
                "nfs: {path} for {mac} does not exist (set create: true to have it made)",
                path=str(path),
                mac=mac,
            )
            return False
        try:
            path.mkdir(parents=True, mode=0o755)
        except OSError as error:
            log.error("nfs: cannot make {path}: {error}", path=str(path), error=error.strerror)
            return False
        log.info("nfs: made {relative} for {mac}", relative=relative, mac=mac)
        return True

    def _save_seen(self) -> None:
        self._seen_dirty = False
        try:
            self.book.save(self.state / "seen.json")
        except OSError as error:
            log.warn("nfs: cannot save sightings: {error}", error=error.strerror)

    # -- applying -------------------------------------------------------------------------------

    def _sync(self) -> Deferred[None]:
        """Walk ``applied`` towards ``desired`` (serialised: one DBus call at a time)."""
        if self._lock.locked:
            self._sync_again = True
            return self._lock.run(lambda: None)  # type: ignore[no-any-return]
        return self._lock.run(self._sync_locked)  # type: ignore[no-any-return]

    @inlineCallbacks
    def _sync_locked(self) -> Any:
        while True:
            self._sync_again = False
            if self.bus is None or (self.managed is not None and not self.managed.up):
                return None
            try:
                yield self._sync_once(self.bus)
            except GaneshaBusError as error:
                log.error("nfs: Ganesha did not take an export change: {error}", error=str(error))
                return None
            if not self._sync_again:
                return None

    @inlineCallbacks
    def _sync_once(self, bus: GaneshaBus) -> Any:
        for export_id, grant in sorted(self.applied.items()):
            if self.desired.get(export_id) == grant:
                continue
            try:
                yield bus.remove_export(export_id)
            except GaneshaBusError as error:
                if not error.refused:
                    raise
                # Ganesha does not have it (any more): it is gone all the same
                log.warn("nfs: Ganesha refused to remove export {id}: {e}", id=export_id, e=error)
            del self.applied[export_id]
            (self.state / "exports" / f"{export_id}.conf").unlink(missing_ok=True)
            self._report(grant, EventStage.NFS_WITHDRAW)
        for export_id, grant in sorted(self.desired.items()):
            if self.applied.get(export_id) == grant:
                continue
            block = self.state / "exports" / f"{export_id}.conf"
            block.write_text(render_export(grant, ganesha_settings(self.context.config)))
            try:
                yield bus.add_export(str(block), export_id)
            except GaneshaBusError as error:
                if not error.refused:
                    raise
                # one bad export must not hold back the others; it is tried at the next sync
                self._report(grant, EventStage.NFS_GRANT, str(error))
                continue
            self.applied[export_id] = grant
            self._report(grant, EventStage.NFS_GRANT)
        return None

    def _report(self, grant: ExportGrant, stage: EventStage, failure: str | None = None) -> None:
        granted = stage is EventStage.NFS_GRANT
        details: dict[str, object] = {
            "path": grant.relative,
            "pseudo": grant.pseudo,
            "access": grant.access.value,
            "export_id": grant.export_id,
        }
        if failure is not None:
            details["error"] = failure
            message = "nfs: Ganesha refused {path} ({access}) for {mac} at {client}: {error}"
        elif granted:
            message = "nfs: granted {path} ({access}) to {mac} at {client} as {pseudo}"
        else:
            message = "nfs: withdrew {path} ({access}) from {mac} at {client} ({pseudo})"
        self.context.events.emit(
            BootEvent(
                time=self.reactor.seconds(),
                protocol=EventProtocol.NFS,
                stage=stage,
                outcome=Outcome.OK if failure is None else Outcome.FAILED,
                mac=grant.mac,
                client=grant.client,
                details=details,
                message=message,
                level=LogLevel.info if failure is None else LogLevel.error,
            )
        )

    # -- for tests and explain ------------------------------------------------------------------

    def exports_of(self, mac: MacAddress) -> list[ExportGrant]:
        return sorted(g for g in self.applied.values() if g.mac == mac)

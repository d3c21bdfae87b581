"""The export wrapper's life cycle, deterministic: a fake Ganesha bus and a Clock.

What a machine's sighting, lease, address change, reload and a TFTP event do to Ganesha's
exports, which DBus calls go out, and which boot events come out.  The same service drives a
real Ganesha in :mod:`tests.nfs.test_ganesha_lab`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.context import ServerContext, Settings
from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.nfs.bus import GaneshaBusError
from pxetwist.nfs.service import CHECK_INTERVAL, NfsService
from pxetwist.policy.builtin import ArchPolicy, StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.overlay import MachineOverlay
from pxetwist.policy.values import MacAddress, Stage
from pxetwist.testing import config_from_yaml, make_request

A = "52:54:00:77:00:10"
B = "52:54:00:77:00:11"


class FakeBus:
    """Records export calls; remembers each added block's client address."""

    def __init__(self, reactor: Any, address: str) -> None:
        self.address = address
        self.calls: list[tuple[str, int]] = []
        self.exports: dict[int, str] = {1500: "10.9.9.9"}  # left over from a previous run
        self.pseudos: dict[int, str] = {1500: "/stale"}
        self.clients: dict[str, list[str]] = {}
        self.refuse = ""  # AddExport of a block naming this path fails, as Ganesha would

    def show_clients(self) -> Deferred[dict[str, list[str]]]:
        return succeed(dict(self.clients))

    def show_exports(self) -> Deferred[dict[int, str]]:
        return succeed(dict(self.pseudos))

    def add_export(self, block_file: str, export_id: int) -> Deferred[None]:
        text = Path(block_file).read_text()
        client = re.search(r"Clients = ([\d.]+);", text)
        assert client is not None and f"Export_Id = {export_id};" in text
        if self.refuse and self.refuse in text:
            raise GaneshaBusError("AddExport: Error while parsing", refused=True)
        self.calls.append(("add", export_id))
        self.exports[export_id] = client.group(1)
        pseudo = re.search(r'Pseudo = "([^"]+)";', text)
        assert pseudo is not None
        self.pseudos[export_id] = pseudo.group(1)
        return succeed(None)

    def remove_export(self, export_id: int) -> Deferred[None]:
        self.calls.append(("remove", export_id))
        del self.exports[export_id]
        del self.pseudos[export_id]
        return succeed(None)

    def close(self) -> None:
        pass


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pxt-nfs-svc-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        (self.base / "nfs" / "images" / "base").mkdir(parents=True)
        self.clock = Clock()
        self.events: list[BootEvent] = []

    def config_text(self, mode: str = "proxy", nfs: str = "[{path: images/base}]") -> str:
        subnets = (
            "  subnets: [{network: 10.77.0.0/16, range: [10.77.1.1, 10.77.1.9]}]\n"
            if mode == "authoritative"
            else ""
        )
        return (
            f"data_dir: {self.base / 'data'}\n"
            f"dhcp:\n  mode: {mode}\n{subnets}"
            f"nfs: {{enabled: true, root: {self.base / 'nfs'}, ganesha: {{dbus: system}}}}\n"
            "defaults:\n"
            f"  nfs: {nfs}\n"
        )

    def start(self, mode: str = "proxy") -> tuple[NfsService, FakeBus]:
        config = config_from_yaml(self.config_text(mode))
        self.context = ServerContext.build(
            config,
            self.chain(config),
            self.clock,  # type: ignore[arg-type]
        )
        self.context.events.subscribe(self.events.append)
        buses: list[FakeBus] = []

        def factory(reactor: Any, address: str) -> Any:
            buses.append(FakeBus(reactor, address))
            return buses[0]

        service = NfsService(self.context, bus_factory=factory)
        parent = MultiService()
        service.setServiceParent(parent)
        parent.startService()
        self.addCleanup(parent.stopService)
        self.clock.advance(0)
        return service, buses[0]

    def chain(self, config: Any) -> PolicyChain:
        return PolicyChain(
            [("static", StaticPolicy(config)), ("arch", ArchPolicy(config))], self.clock
        )

    def nfs_events(self) -> list[tuple[EventStage, str, str, str]]:
        return [
            (e.stage, str(e.mac), str(e.client), str(e.details["path"]))
            for e in self.events
            if e.protocol is EventProtocol.NFS
        ]

    def test_operator_ganesha_stale_exports_removed_at_start(self) -> None:
        _service, bus = self.start()
        self.assertEqual(bus.address, "system")
        self.assertEqual(bus.calls, [("remove", 1500)])

    def test_sighting_grants_and_another_machine_takes_the_address(self) -> None:
        service, bus = self.start()
        ip = IPv4Address("10.77.0.10")
        request = attrs.evolve(make_request(A, arch=7), stage=Stage.PROXY_4011)
        self.context.sightings.record(request, ip)
        self.clock.advance(0)
        [granted] = service.exports_of(MacAddress.parse(A))
        self.assertEqual(bus.exports[granted.export_id], "10.77.0.10")
        self.assertEqual(
            self.nfs_events(), [(EventStage.NFS_GRANT, A, "10.77.0.10", "images/base")]
        )
        # B shows up at A's address (over TFTP): A's export goes, B gets its own
        self.context.events.emit(
            BootEvent(
                time=0, protocol=EventProtocol.TFTP, stage=EventStage.TFTP_TRANSFER,
                outcome=Outcome.OK, mac=MacAddress.parse(B), client=ip,
            )
        )  # fmt: skip
        self.clock.advance(0)
        self.assertEqual(service.exports_of(MacAddress.parse(A)), [])
        [other] = service.exports_of(MacAddress.parse(B))
        self.assertNotEqual(other.pseudo, granted.pseudo)
        self.assertEqual(
            self.nfs_events()[1:],
            [
                (EventStage.NFS_WITHDRAW, A, "10.77.0.10", "images/base"),
                (EventStage.NFS_GRANT, B, "10.77.0.10", "images/base"),
            ],
        )

    def test_address_change_moves_the_export(self) -> None:
        service, bus = self.start()
        request = attrs.evolve(make_request(A, arch=7), stage=Stage.PROXY_4011)
        self.context.sightings.record(request, IPv4Address("10.77.0.10"))
        self.clock.advance(0)
        self.context.sightings.record(request, IPv4Address("10.77.0.11"))
        self.clock.advance(0)
        [grant] = service.exports_of(MacAddress.parse(A))
        self.assertEqual(str(grant.client), "10.77.0.11")
        self.assertEqual(list(bus.exports.values()), ["10.77.0.11"])

    def test_lease_end_withdraws(self) -> None:
        service, bus = self.start("authoritative")
        leases = {MacAddress.parse(A): IPv4Address("10.77.1.3")}
        service.book.leases = lambda mac, now: leases.get(mac)
        self.context.sightings.record(make_request(A, arch=0), IPv4Address("10.77.1.3"))
        self.clock.advance(0)
        self.assertEqual(len(service.exports_of(MacAddress.parse(A))), 1)
        del leases[MacAddress.parse(A)]  # expired or released: no packet says so
        self.clock.advance(CHECK_INTERVAL)
        self.clock.advance(0)
        self.assertEqual(service.exports_of(MacAddress.parse(A)), [])
        self.assertEqual([c for c, _ in bus.calls], ["remove", "add", "remove"])

    def test_an_api_reservation_grants_and_its_deletion_withdraws(self) -> None:
        MachineOverlay.forget_all()
        self.addCleanup(MachineOverlay.forget_all)
        service, bus = self.start()
        overlay = MachineOverlay.for_config(self.context.config)
        overlay.put({"mac": A, "address": "10.77.0.20"})
        self.clock.advance(0)
        [grant] = service.exports_of(MacAddress.parse(A))
        self.assertEqual(str(grant.client), "10.77.0.20")
        self.assertEqual(list(bus.exports.values()), ["10.77.0.20"])
        overlay.put({"mac": A, "address": "10.77.0.21"})  # moved
        self.clock.advance(0)
        self.assertEqual(list(bus.exports.values()), ["10.77.0.21"])
        overlay.remove(MacAddress.parse(A))  # never seen anywhere else: withdrawn
        self.clock.advance(0)
        self.assertEqual(service.exports_of(MacAddress.parse(A)), [])
        self.assertEqual(bus.exports, {})

    def test_reload_removes_exports_no_longer_configured(self) -> None:
        service, bus = self.start()
        request = attrs.evolve(make_request(A, arch=7), stage=Stage.PROXY_4011)
        self.context.sightings.record(request, IPv4Address("10.77.0.10"))
        self.clock.advance(0)
        new = config_from_yaml(self.config_text(nfs="[]"))
        self.context.live.replace(Settings(new, self.chain(new), self.context.interfaces))
        self.clock.advance(0)
        self.assertEqual(service.exports_of(MacAddress.parse(A)), [])
        self.assertEqual(bus.exports, {})

    def test_mount_event_once_per_grant(self) -> None:
        _service, bus = self.start()
        request = attrs.evolve(make_request(A, arch=7), stage=Stage.PROXY_4011)
        self.context.sightings.record(request, IPv4Address("10.77.0.10"))
        self.clock.advance(0)
        bus.clients = {"10.77.0.99": ["NFSv41"]}  # someone else: no event
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual([e for e in self.events if e.stage is EventStage.NFS_MOUNT], [])
        bus.clients["10.77.0.10"] = ["NFSv41"]
        for _ in range(3):
            self.clock.advance(CHECK_INTERVAL)
        [mount] = [e for e in self.events if e.stage is EventStage.NFS_MOUNT]
        self.assertEqual((str(mount.mac), str(mount.client)), (A, "10.77.0.10"))
        self.assertEqual(mount.details["paths"], ["images/base"])
        self.assertEqual(mount.details["protocols"], "NFSv41")

    def test_reload_turning_nfs_off_withdraws_everything(self) -> None:
        service, bus = self.start()
        request = attrs.evolve(make_request(A, arch=7), stage=Stage.PROXY_4011)
        self.context.sightings.record(request, IPv4Address("10.77.0.10"))
        self.clock.advance(0)
        self.assertEqual(len(bus.exports), 1)
        new = config_from_yaml(self.config_text().replace("enabled: true", "enabled: false"))
        self.context.live.replace(
            attrs.evolve(self.context.live.current, config=new, chain=self.chain(new))
        )
        self.clock.advance(0)
        self.assertEqual(bus.exports, {})
        self.assertEqual(service.exports_of(MacAddress.parse(A)), [])

    def test_repeated_sightings_decide_once(self) -> None:
        """A DHCP storm from a known machine costs no policy decisions."""
        _service, bus = self.start()
        decided = []
        original = ArchPolicy.decide

        def counting(policy: ArchPolicy, request: Any) -> Any:
            if request.stage is Stage.NFS:
                decided.append(request.mac)
            return original(policy, request)

        patcher = mock.patch.object(ArchPolicy, "decide", counting)
        patcher.start()
        self.addCleanup(patcher.stop)
        request = attrs.evolve(make_request(A, arch=7), stage=Stage.PROXY_4011)
        for _ in range(100):
            self.context.sightings.record(request, IPv4Address("10.77.0.10"))
            self.clock.advance(0)
        self.assertEqual(len(decided), 1)
        self.assertEqual(len(bus.exports), 1)
        self.context.sightings.record(request, IPv4Address("10.77.0.12"))  # moved: decide again
        self.clock.advance(0)
        self.assertEqual(len(decided), 2)

    def test_one_refused_export_does_not_hold_back_the_others(self) -> None:
        (self.base / "nfs" / "images" / "other").mkdir()
        config = config_from_yaml(
            self.config_text(nfs="[{path: images/base}, {path: images/other}]")
        )
        self.context = ServerContext.build(
            config,
            self.chain(config),
            self.clock,  # type: ignore[arg-type]
        )
        self.context.events.subscribe(self.events.append)
        bus = FakeBus(None, "system")
        bus.refuse = "images/base"
        service = NfsService(self.context, bus_factory=lambda reactor, address: bus)  # type: ignore[arg-type,return-value]
        parent = MultiService()
        service.setServiceParent(parent)
        parent.startService()
        self.addCleanup(parent.stopService)
        request = attrs.evolve(make_request(A, arch=7), stage=Stage.PROXY_4011)
        self.context.sightings.record(request, IPv4Address("10.77.0.10"))
        self.clock.advance(0)
        self.assertEqual(
            [g.relative for g in service.exports_of(MacAddress.parse(A))], ["images/other"]
        )
        failed = [e for e in self.events if e.outcome is Outcome.FAILED]
        self.assertEqual([e.details["path"] for e in failed], ["images/base"])
        self.assertIn("Error while parsing", str(failed[0].details["error"]))

    def test_operator_ganesha_restarted_gets_its_exports_again(self) -> None:
        service, bus = self.start()
        request = attrs.evolve(make_request(A, arch=7), stage=Stage.PROXY_4011)
        self.context.sightings.record(request, IPv4Address("10.77.0.10"))
        self.clock.advance(0)
        [grant] = service.exports_of(MacAddress.parse(A))
        bus.exports.clear()  # the operator's Ganesha restarted from its own config
        bus.pseudos.clear()
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(bus.pseudos, {grant.export_id: grant.pseudo})
        self.assertEqual(bus.calls[-1], ("add", grant.export_id))

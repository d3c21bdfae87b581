"""The one boot-config resolver (:mod:`pxetwist.bootconfig`) and the one serving context rule
(:func:`pxetwist.policy.render.serving_context`), without a protocol in front."""

from __future__ import annotations

import shutil
import tempfile
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.bootconfig import BootConfig, BootConfigResolver, ConfigAsk, ConfigStatus
from pxetwist.context import IServerReactor, ServerContext, Settings
from pxetwist.policy.builtin import StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.render import LoaderKind, Renderer, ServingContext, serving_context
from pxetwist.policy.request import BootRequest
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import Arch, BootAction, Firmware, MacAddress, Stage
from pxetwist.testing import config_from_yaml, make_request

MAC = MacAddress.parse("52:54:00:77:00:10")
CLIENT = IPv4Address("10.77.0.50")
LOCAL = IPv4Address("10.77.0.1")


class _Answer:
    """A policy answering every machine with one decision, remembering what it was asked."""

    def __init__(self, decision: BootDecision | None) -> None:
        self.decision = decision
        self.asked: list[BootRequest] = []

    def decide(self, request: BootRequest) -> BootDecision | None:
        self.asked.append(request)
        return self.decision


class ResolverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        (self.base / "tftp").mkdir()
        self.config = config_from_yaml(
            f"tftp: {{root: {self.base}/tftp}}\nhttp: {{enabled: false}}\n"
            f"dhcp: {{ipxe_user_classes: [MyIPXE]}}\ntemplates: {self.base}/templates\n"
        )
        self.clock = MemoryReactorClock()
        self.neighbours: dict[IPv4Address, MacAddress] = {}
        self.sightings = SightingRegistry(self.clock.seconds, neighbours=lambda: self.neighbours)

    def resolver(self, decision: BootDecision | None) -> tuple[BootConfigResolver, _Answer]:
        policy = _Answer(decision)
        chain = PolicyChain([("answer", cast(Any, policy))], self.clock)
        context = ServerContext.build(
            self.config, chain, cast(IServerReactor, self.clock), sightings=self.sightings
        )
        return BootConfigResolver(context), policy

    def ask(self, kind: LoaderKind = LoaderKind.PXELINUX, **changes: Any) -> ConfigAsk:
        serving = serving_context(self.config, LOCAL)
        fields: dict[str, Any] = {
            "kind": kind,
            "path": "pxelinux.cfg/default",
            "stage": Stage.TFTP,
            "client": CLIENT,
            "serving": serving,
            "interface": "srv0",
        }
        fields.update(changes)
        return ConfigAsk(**fields)

    def resolve(self, resolver: BootConfigResolver, ask: ConfigAsk) -> BootConfig:
        answered: Deferred[BootConfig] = resolver.resolve(ask)
        return self.successResultOf(answered)

    def test_an_unknown_client_is_unidentified_and_no_policy_is_asked(self) -> None:
        resolver, policy = self.resolver(BootDecision(kernel="k"))
        config = self.resolve(resolver, self.ask())
        self.assertEqual(config.status, ConfigStatus.UNIDENTIFIED)
        self.assertIsNone(config.mac)
        self.assertEqual(policy.asked, [])

    def test_the_client_is_found_by_address_and_the_request_says_where_it_asked(self) -> None:
        self.sightings.record(make_request(str(MAC), arch=0), CLIENT)
        resolver, policy = self.resolver(BootDecision(kernel="linux", reason="r"))
        config = self.resolve(resolver, self.ask())
        self.assertEqual(config.status, ConfigStatus.RENDERED)
        assert config.text is not None
        self.assertIn("KERNEL linux", config.text)
        (asked,) = policy.asked
        self.assertEqual(
            (asked.mac, asked.stage, asked.server_address, asked.interface, asked.path),
            (MAC, Stage.TFTP, LOCAL, "srv0", "pxelinux.cfg/default"),
        )

    def test_undecided_ignored_and_nothing_to_say(self) -> None:
        ask = self.ask(mac=MAC)
        for decision, status in [
            (None, ConfigStatus.UNDECIDED),
            (BootDecision(action=BootAction.IGNORE), ConfigStatus.IGNORED),
            (BootDecision(program="undionly.kpxe"), ConfigStatus.NOTHING),
        ]:
            resolver, _ = self.resolver(decision)
            self.assertEqual(self.resolve(resolver, ask).status, status)

    def test_a_program_is_chained_only_where_the_front_end_allows(self) -> None:
        resolver, _ = self.resolver(BootDecision(program="http://x/next.efi"))
        plain = self.ask(LoaderKind.IPXE, mac=MAC, path="x.ipxe")
        self.assertEqual(self.resolve(resolver, plain).status, ConfigStatus.NOTHING)
        allowed = self.ask(LoaderKind.IPXE, mac=MAC, path="x.ipxe", may_chain=lambda p, c: True)
        config = self.resolve(resolver, allowed)
        self.assertEqual(config.status, ConfigStatus.RENDERED)
        assert config.text is not None
        self.assertIn("http://x/next.efi", config.text)
        refused = self.ask(LoaderKind.IPXE, mac=MAC, path="x.ipxe", may_chain=lambda p, c: False)
        self.assertEqual(self.resolve(resolver, refused).status, ConfigStatus.NOTHING)

    def test_an_ipxe_asker_never_seen_by_dhcp_is_ipxe_with_what_the_url_says(self) -> None:
        resolver, policy = self.resolver(None)
        uuid = make_request(uuid="12345678-1234-1234-1234-123456789abc").uuid
        ask = self.ask(LoaderKind.IPXE, stage=Stage.HTTP, mac=MAC, arch=Arch.EFI_X86_64, uuid=uuid)
        self.resolve(resolver, ask)
        (asked,) = policy.asked
        self.assertEqual(asked.arches, (Arch.EFI_X86_64,))
        self.assertEqual(asked.uuid, uuid)
        self.assertEqual(asked.ipxe_user_classes, (b"MyIPXE",))
        self.assertIs(asked.firmware, Firmware.IPXE)

    def test_a_render_error_is_reported_not_raised(self) -> None:
        (self.base / "templates").mkdir()
        (self.base / "templates" / "pxelinux.j2").write_text("{{ nonsense }}\n")
        resolver, _ = self.resolver(BootDecision(kernel="k"))
        config = self.resolve(resolver, self.ask(mac=MAC))
        self.assertEqual(config.status, ConfigStatus.FAILED)
        assert config.error is not None
        self.assertIn("pxelinux.j2", str(config.error))

    def test_the_live_config_and_chain_are_read_per_request(self) -> None:
        resolver, _ = self.resolver(None)
        ask = self.ask(mac=MAC)
        self.assertEqual(self.resolve(resolver, ask).status, ConfigStatus.UNDECIDED)
        context = resolver.context
        static = StaticPolicy(config_from_yaml(f"machines: [{{mac: '{MAC}', kernel: new}}]"))
        context.live.replace(
            Settings(
                context.config,
                PolicyChain([("static", static)], self.clock),
                context.interfaces,
            )
        )
        config = self.resolve(resolver, ask)
        assert config.text is not None
        self.assertIn("KERNEL new", config.text)

    def test_a_reload_naming_other_templates_rebuilds_the_renderer(self) -> None:
        resolver, _ = self.resolver(None)
        first = resolver.renderer
        self.assertIs(resolver.renderer, first)
        other = config_from_yaml(f"templates: {self.base}/other")
        resolver.context.live.replace(
            Settings(other, resolver.context.chain, resolver.context.interfaces)
        )
        self.assertIsNot(resolver.renderer, first)
        self.assertEqual(resolver.renderer.override_dir, self.base / "other")

    def test_a_given_renderer_is_kept(self) -> None:
        renderer = Renderer()
        resolver = BootConfigResolver(self.resolver(None)[0].context, renderer)
        self.assertIs(resolver.renderer, renderer)


class ServingContextTests(SynchronousTestCase):
    def test_tftp_listener_on_port_0_names_its_bound_port(self) -> None:
        config = config_from_yaml("tftp: {root: /t}\nhttp: {root: /h, port: 8081}")
        self.assertEqual(
            serving_context(config, LOCAL, tftp_port=40000),
            ServingContext("10.77.0.1", 8081, 40000, Path("/h"), Path("/t")),
        )

    def test_server_address_wins_with_the_configured_ports(self) -> None:
        config = config_from_yaml("server_address: 192.0.2.9\nhttp: {port: 80}\ntftp: {port: 69}")
        context = serving_context(config, LOCAL, http_port=31337, tftp_port=40000)
        self.assertEqual(
            (context.server, context.http_port, context.tftp_port), ("192.0.2.9", 80, 69)
        )

    def test_unserved_roots_are_never_pointed_at(self) -> None:
        config = config_from_yaml("tftp: {enabled: false}\nhttp: {enabled: false}")
        context = serving_context(config, LOCAL)
        self.assertEqual((context.http_root, context.tftp_root), (None, None))

    def test_grub_over_http_gets_no_tftp_root_but_ipxe_does(self) -> None:
        config = config_from_yaml("tftp: {root: /t}\nhttp: {root: /h}")
        grub = serving_context(config, LOCAL, http_port=8080, over_http=LoaderKind.GRUB)
        ipxe = serving_context(config, LOCAL, http_port=8080, over_http=LoaderKind.IPXE)
        self.assertIsNone(grub.tftp_root)
        self.assertEqual(ipxe.tftp_root, Path("/t"))

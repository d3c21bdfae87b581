"""``{nfs}``, ``{nfs2}`` in boot configs: SERVER:/PSEUDO with the address the client reached."""

import shutil
import tempfile
from ipaddress import IPv4Address
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.bootconfig import BootConfigResolver, ConfigAsk, ConfigStatus
from pxetwist.context import ServerContext
from pxetwist.nfs.paths import pseudo_path
from pxetwist.policy.builtin import StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.render import LoaderKind, ServingContext
from pxetwist.policy.values import MacAddress, Stage
from pxetwist.testing import config_from_yaml, make_request

MAC = "52:54:00:77:00:10"


class NfsPlaceholderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pxt-nfs-bc-"))
        self.addCleanup(shutil.rmtree, self.base, True)

    def resolve(self, machine: str, enabled: bool = True) -> tuple[ConfigStatus, str]:
        config = config_from_yaml(
            f"data_dir: {self.base / 'data'}\n"
            f"nfs: {{enabled: {str(enabled).lower()}, root: {self.base / 'nfs'}}}\n"
            f"machines:\n  - {{mac: '{MAC}', kernel: vmlinuz, {machine}}}\n"
        )
        reactor = Clock()
        context = ServerContext.build(
            config,
            PolicyChain([("static", StaticPolicy(config))], reactor),
            reactor,  # type: ignore[arg-type]
        )
        resolver = BootConfigResolver(context)
        ask = ConfigAsk(
            kind=LoaderKind.IPXE,
            path="boot.ipxe",
            stage=Stage.HTTP,
            client=IPv4Address("10.77.0.10"),
            serving=ServingContext("10.77.0.1"),
            mac=MacAddress.parse(MAC),
        )
        context.sightings.record(make_request(MAC, arch=0, firmware="ipxe"))
        results: list[object] = []
        resolver.resolve(ask).addCallback(results.append)
        answer = results[0]
        text = getattr(answer, "text", None) or str(getattr(answer, "error", ""))
        return getattr(answer, "status"), text  # noqa: B009

    def test_cmdline_gets_server_and_pseudo_paths(self) -> None:
        status, text = self.resolve(
            "nfs: [{path: images/base}, {path: 'hosts/{mac}', access: rw, create: true}], "
            "cmdline: 'root=/dev/nfs nfsroot={nfs} ro={nfs2}'"
        )
        self.assertEqual(status, ConfigStatus.RENDERED, text)
        key = (self.base / "data" / "nfs" / "pseudo.key").read_bytes()
        mac = MacAddress.parse(MAC)
        first = pseudo_path(key, mac, "images/base")
        second = pseudo_path(key, mac, "hosts/52-54-00-77-00-10")
        self.assertIn(f"nfsroot=10.77.0.1:{first} ro=10.77.0.1:{second}", text)
        self.assertNotIn("52-54-00", text)

    def test_placeholder_without_export_is_a_render_error(self) -> None:
        status, text = self.resolve("nfs: [{path: a}], cmdline: 'root={nfs2}'")
        self.assertEqual(status, ConfigStatus.FAILED)
        self.assertIn("{nfs2} names NFS export 2, but the machine has 1 export", text)

    def test_nfs_disabled_is_a_render_error(self) -> None:
        status, text = self.resolve("nfs: [{path: a}], cmdline: 'root={nfs}'", enabled=False)
        self.assertEqual(status, ConfigStatus.FAILED)
        self.assertIn("{nfs} names NFS export 1", text)


class TemplateTests(SynchronousTestCase):
    def test_templates_get_nfs_and_the_placeholders(self) -> None:
        from pxetwist.policy.decision import BootDecision
        from pxetwist.policy.render import Renderer

        templates = Path(tempfile.mkdtemp(prefix="pxt-nfs-tpl-"))
        self.addCleanup(shutil.rmtree, templates, True)
        (templates / "ipxe.j2").write_text(
            "#!ipxe\nkernel {{ kernel }} root={{ nfs[0] }} extra={nfs2}\nboot\n"
        )
        text = Renderer(templates).render(
            LoaderKind.IPXE,
            BootDecision(kernel="http://x/linux"),
            make_request(MAC, arch=0, firmware="ipxe"),
            ServingContext("10.77.0.1"),
            nfs=["10.77.0.1:/aaaa", "10.77.0.1:/bbbb"],
        )
        self.assertIn("root=10.77.0.1:/aaaa extra=10.77.0.1:/bbbb", text)

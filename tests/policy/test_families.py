"""Answers per client family (issue 17): U-Boot boot keys, no program across processor families,
configs whose kernel and initrd the asking client can fetch.

Firmware facts from ``../shared/docs/firmware-notes.md`` ("U-Boot"): ``dhcp`` sends option 93 = 22
and option 60 ``U-Boot.armv8``; its EFI boot step sends 93 = 11 and ``PXEClient:Arch:00011``;
``pxe get`` fetches every name over TFTP, a ``tftp://`` URL literally.
"""

from __future__ import annotations

import contextlib
import io
from ipaddress import IPv4Address, IPv4Network

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist import cli
from pxetwist.dhcp.engine import DhcpEngine, Exchange, Interface, Outcome, Verdict, pools_for
from pxetwist.dhcp.leases import LeaseTable
from pxetwist.dhcp.options import MessageType, OptionCode, encode_arches
from pxetwist.dhcp.packet import DhcpPacket, encode
from pxetwist.policy.builtin import ArchPolicy, StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.plugins import build_policies
from pxetwist.policy.reach import client_fetches, unreachable_values
from pxetwist.policy.render import (
    LoaderKind,
    Renderer,
    RenderError,
    ServingContext,
    Unreachable,
    uboot_location,
)
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import (
    BOOT_KEYS,
    Arch,
    BootAction,
    Firmware,
    Isa,
    MacAddress,
    Stage,
    boot_key_isa,
)
from pxetwist.testing import config_from_yaml, make_request, run_chain
from tests.util import temp_dir

SERVER = IPv4Address("192.0.2.10")
ETH0 = Interface("eth0", SERVER, IPv4Network("192.0.2.0/24"))
MAC = "52:54:00:77:00:22"


def uboot(
    arch: int | None = 22, vendor: bytes | None = b"U-Boot.armv8", **kw: object
) -> BootRequest:
    return BootRequest(
        mac=MacAddress.parse(MAC),
        stage=kw.pop("stage", Stage.DHCP),  # type: ignore[arg-type]
        arches=(Arch(arch),) if arch is not None else (),
        vendor_class=vendor,
        path=kw.pop("path", None),  # type: ignore[arg-type]
    )


class ValueTests(SynchronousTestCase):
    def test_uboot_arches_have_boot_keys(self) -> None:
        self.assertEqual(Arch(21).boot_key, "uboot-arm32")
        self.assertEqual(Arch(22).boot_key, "uboot-arm64")
        self.assertEqual(Arch(23).boot_key, "http-uboot-arm32")
        self.assertEqual(Arch(24).boot_key, "http-uboot-arm64")
        for key in ("uboot-arm32", "uboot-arm64", "uboot-riscv32", "uboot-riscv64"):
            self.assertIn(key, BOOT_KEYS)

    def test_families(self) -> None:
        self.assertIs(Arch(0).isa, Isa.X86)
        self.assertIs(Arch(9).isa, Isa.X86)
        self.assertIs(Arch(11).isa, Isa.ARM64)
        self.assertIs(Arch(22).isa, Isa.ARM64)
        self.assertIs(Arch(21).isa, Isa.ARM32)
        self.assertIs(Arch(8).isa, Isa.ARM32)
        self.assertIs(Arch(27).isa, Isa.RISCV64)
        self.assertIsNone(Arch(4242).isa)
        self.assertIs(boot_key_isa("bios"), Isa.X86)
        self.assertIs(boot_key_isa("efi-ia32"), Isa.X86)
        self.assertIs(boot_key_isa("http-efi-x86_64"), Isa.X86)
        self.assertIs(boot_key_isa("uboot-arm64"), Isa.ARM64)
        self.assertIsNone(boot_key_isa("ipxe"))

    def test_config_accepts_uboot_keys(self) -> None:
        config = config_from_yaml("boot: {uboot-arm64: uboot/arm64.scr, uboot-riscv64: rv.scr}")
        self.assertEqual(config.boot_table["uboot-arm64"], "uboot/arm64.scr")


class ClassificationTests(SynchronousTestCase):
    def test_uboot_by_vendor_class_or_arch(self) -> None:
        self.assertIs(uboot().firmware, Firmware.UBOOT)
        self.assertIs(uboot(vendor=None).firmware, Firmware.UBOOT)
        self.assertIs(uboot(arch=21, vendor=b"U-Boot.armv7").firmware, Firmware.UBOOT)
        self.assertIs(uboot(arch=27, vendor=b"U-Boot").firmware, Firmware.UBOOT)

    def test_uboot_efi_step_is_a_uefi_pxe_client(self) -> None:
        request = uboot(arch=11, vendor=b"PXEClient:Arch:00011:UNDI:003000")
        self.assertIs(request.firmware, Firmware.PXE_ROM)

    def test_family_from_vendor_class_when_93_is_not_iana(self) -> None:
        """Older distro U-Boot sends 93 = 0x100 and names the CPU only in 60."""
        self.assertIs(uboot(arch=0x100, vendor=b"U-Boot.armv8").isa, Isa.ARM64)
        self.assertIs(uboot(arch=0x100, vendor=b"U-Boot.armv7").isa, Isa.ARM32)
        self.assertIsNone(uboot(arch=0x100, vendor=b"U-Boot").isa)


X86_ONLY = "boot: {bios: undionly.kpxe, efi-x86_64: ipxe.efi}\npolicy: {plugin_dirs: []}\n"
WITH_UBOOT = (
    "boot: {bios: undionly.kpxe, efi-x86_64: ipxe.efi, uboot-arm64: uboot/arm64.img,"
    " uboot-riscv64: uboot/rv64.img}\npolicy: {plugin_dirs: []}\n"
)


class PolicyTests(SynchronousTestCase):
    def decide(self, text: str, request: BootRequest) -> BootDecision:
        decision = ArchPolicy(config_from_yaml(text)).decide(request)
        assert decision is not None
        return decision

    def test_uboot_without_its_key_gets_no_program_and_says_why(self) -> None:
        decision = self.decide(X86_ONLY, uboot())
        self.assertIsNone(decision.program)
        self.assertIn("no boot[uboot-arm64] configured", decision.reason)

    def test_uboot_with_its_key(self) -> None:
        self.assertEqual(self.decide(WITH_UBOOT, uboot()).program, "uboot/arm64.img")
        self.assertEqual(self.decide(WITH_UBOOT, uboot(vendor=None)).program, "uboot/arm64.img")
        self.assertEqual(
            self.decide(WITH_UBOOT, uboot(arch=27, vendor=b"U-Boot")).program, "uboot/rv64.img"
        )

    def test_the_default_never_crosses_families(self) -> None:
        """Arch 8 (EFI XScale, ARM32) has no key; the default is the x86 BIOS program."""
        decision = self.decide(X86_ONLY, make_request(MAC, arch=8))
        self.assertIsNone(decision.program)
        self.assertIn("boot[bios] is for x86, not offered to an arm32 client", decision.reason)
        ignore = self.decide(
            X86_ONLY.replace("{plugin_dirs: []}", "{arch_default: ignore}"), uboot()
        )
        self.assertIs(ignore.action, BootAction.IGNORE)

    def test_the_default_applies_within_a_family(self) -> None:
        text = "boot: {efi-arm32: arm32.efi}\npolicy: {arch_default: efi-arm32}\n"
        self.assertEqual(self.decide(text, make_request(MAC, arch=8)).program, "arm32.efi")
        unknown = self.decide(X86_ONLY, make_request(MAC, arch=4242))
        self.assertEqual(unknown.program, "undionly.kpxe")  # family unknown: default, logged

    def test_http_boot_default_stays_within_the_family(self) -> None:
        """Arch 26 (HTTP RISC-V 32) has no key; the HTTP default is x86."""
        decision = self.decide(X86_ONLY, make_request(MAC, arch=26, firmware=Firmware.HTTP_BOOT))
        self.assertIsNone(decision.program)


def discover(arch: int, vendor: bytes) -> bytes:
    packet = DhcpPacket(
        xid=0x1234,
        chaddr=MacAddress.parse(MAC).octets,
        options=(
            (OptionCode.MESSAGE_TYPE, bytes((MessageType.DISCOVER,))),
            (OptionCode.CLIENT_ARCH, encode_arches([arch])),
            (OptionCode.VENDOR_CLASS, vendor),
        ),
    )
    return encode(packet, max_size=1400)


AUTHORITATIVE = """
dhcp:
  mode: {mode}
  subnets: [{{network: 192.0.2.0/24, range: [192.0.2.50, 192.0.2.60]}}]
"""


class DhcpTests(SynchronousTestCase):
    """An arch-22 DISCOVER through the engine and the config's own chain."""

    def offer(
        self, text: str, mode: str, arch: int = 22, vendor: bytes = b"U-Boot.armv8"
    ) -> Outcome:
        config = config_from_yaml(AUTHORITATIVE.format(mode=mode) + text)
        engine = DhcpEngine(config, LeaseTable(pools_for(config)), [SERVER])
        received = engine.receive(
            discover(arch, vendor),
            interface=ETH0,
            port=67,
            source=("0.0.0.0", 68),
            to_broadcast=True,
            now=1_000_000.0,
        )
        assert isinstance(received, Exchange) and received.request is not None
        decision = run_chain(build_policies(config), received.request)
        return engine.answer(received.decided(decision), 1_000_000.0)

    def test_no_program_for_uboot_with_only_x86_configured(self) -> None:
        outcome = self.offer(X86_ONLY, "authoritative")
        self.assertEqual(outcome.verdict, Verdict.ANSWERED, outcome.reason)
        (reply,) = outcome.replies
        self.assertEqual(reply.packet.file.rstrip(b"\0"), b"")
        self.assertIsNone(reply.packet.get(OptionCode.BOOTFILE))
        self.assertIsNone(reply.packet.get(OptionCode.VENDOR_SPECIFIC))
        self.assertEqual(reply.packet.siaddr, SERVER)  # U-Boot's serverip, for `pxe get`
        self.assertIn("no boot[uboot-arm64] configured", outcome.reason)
        proxy = self.offer(X86_ONLY, "proxy")
        self.assertEqual((proxy.verdict, proxy.replies), (Verdict.IGNORED, ()))

    def test_uboot_gets_its_program_without_pxe_options(self) -> None:
        for mode in ("authoritative", "proxy"):
            (reply,) = self.offer(WITH_UBOOT, mode).replies
            self.assertEqual(reply.packet.file, b"uboot/arm64.img", mode)
            self.assertEqual(reply.packet.get(OptionCode.BOOTFILE), b"uboot/arm64.img\0")
            self.assertIsNone(reply.packet.get(OptionCode.VENDOR_SPECIFIC), mode)
            self.assertNotEqual(reply.packet.get(OptionCode.VENDOR_CLASS), b"PXEClient", mode)

    def test_the_uboot_efi_step_gets_the_arm64_efi_program(self) -> None:
        (reply,) = self.offer(
            X86_ONLY, "authoritative", 11, b"PXEClient:Arch:00011:UNDI:003000"
        ).replies
        self.assertEqual(reply.packet.file, b"ipxe-arm64.efi")


def roots(testcase: SynchronousTestCase) -> ServingContext:
    base = temp_dir(testcase)
    http, tftp = base / "http", base / "tftp"
    (tftp / "arm64").mkdir(parents=True)
    http.mkdir()
    (tftp / "arm64" / "linux").write_bytes(b"k")
    (tftp / "arm64" / "initrd.gz").write_bytes(b"i")
    (http / "only-http.gz").write_bytes(b"h")
    (http / "arm64").mkdir()
    (http / "arm64" / "initrd.gz").write_bytes(b"i")
    return ServingContext("10.77.0.1", 8080, 69, http, tftp)


URLS = BootDecision(
    kernel="tftp://{server}/arm64/linux",
    initrds=("http://{server}:{http_port}/arm64/initrd.gz",),
    cmdline="console=ttyAMA0",
)


class UbootRenderTests(SynchronousTestCase):
    def render(
        self, decision: BootDecision, path: str = f"pxelinux.cfg/01-{MAC.replace(':', '-')}"
    ) -> str:
        request = uboot(stage=Stage.TFTP, path=path)
        return Renderer().render(LoaderKind.PXELINUX, decision, request, roots(self))

    def test_urls_to_us_become_paths(self) -> None:
        text = self.render(URLS)
        self.assertIn("KERNEL arm64/linux\n", text)
        self.assertIn("INITRD arm64/initrd.gz\n", text)
        self.assertNotIn("://", text)

    def test_other_clients_keep_the_urls(self) -> None:
        request = make_request(MAC, arch=0, stage=Stage.TFTP)
        text = Renderer().render(LoaderKind.PXELINUX, URLS, request, roots(self))
        self.assertIn("KERNEL tftp://10.77.0.1/arm64/linux\n", text)

    def test_paths_relative_to_the_boot_file_directory(self) -> None:
        text = self.render(URLS, path=f"arm64/pxelinux.cfg/01-{MAC.replace(':', '-')}")
        self.assertIn("KERNEL linux\n", text)
        text = self.render(URLS, path="uboot/pxelinux.cfg/default")
        self.assertIn("KERNEL ../arm64/linux\n", text)

    def test_what_uboot_cannot_fetch_is_an_error(self) -> None:
        context = roots(self)
        for value in (
            "http://10.9.9.9/arm64/linux",  # another server
            "tftp://10.9.9.9/arm64/linux",
            "tftp://{server}:1069/arm64/linux",  # not the port it asks
            "http://{server}:{http_port}/only-http.gz",  # our HTTP, not under the TFTP root
            "only-http.gz",
        ):
            with self.assertRaises(Unreachable, msg=value):
                uboot_location(value, context)
        with self.assertRaises(RenderError) as caught:
            self.render(BootDecision(kernel="http://10.9.9.9/linux"))
        self.assertIn("U-Boot cannot fetch 'http://10.9.9.9/linux'", str(caught.exception))
        with self.assertRaises(RenderError):
            self.render(BootDecision(kernel="arm64/linux", initrds=("a", "b")))


class ReachTests(SynchronousTestCase):
    def test_explain_fetches(self) -> None:
        fetches = client_fetches(
            BootDecision(kernel="tftp://{server}/k", initrds=("http://10.9.9.9/i",)),
            uboot(),
            ServingContext("10.77.0.1"),
        )
        self.assertEqual(
            (fetches[0].loader, fetches[0].what, fetches[0].location), ("u-boot", "kernel", "k")
        )
        self.assertIn("U-Boot cannot fetch", fetches[1].problem or "")

    def test_check_config_names_the_setting(self) -> None:
        config = config_from_yaml(
            "defaults: {kernel: 'tftp://{server}/k', initrd: 'http://10.9.9.9/i'}\n"
            "machines: [{mac: '52:54:00:00:00:01', name: n1, kernel: 'http://mirror/k'}]\n"
        )
        lines = unreachable_values(config, ["10.77.0.1"])
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("defaults: initrd unreachable for U-Boot clients"))
        self.assertTrue(lines[1].startswith("machines[0] (n1): kernel unreachable"))


class TftpTests(SynchronousTestCase):
    """The generated ``pxelinux.cfg/01-<mac>`` U-Boot downloads, through the TFTP server."""

    def test_uboot_gets_paths_for_tftp_urls(self) -> None:
        from tests.tftp.test_protocol import CLIENT, SERVER, Harness

        config = config_from_yaml(
            f"tftp: {{root: {temp_dir(self)}}}\nhttp: {{enabled: false}}\n"
            f"machines: [{{mac: '{MAC}', kernel: 'tftp://{{server}}/arm64/linux',"
            " initrd: 'tftp://{server}/arm64/initrd.gz'}]\n"
        )
        harness = Harness(
            self, config=config, chain=PolicyChain([("static", StaticPolicy(config))], Clock())
        )
        name = f"pxelinux.cfg/01-{MAC.replace(':', '-')}"
        harness.sightings.record(uboot(), IPv4Address(CLIENT[0]))
        text = harness.download(name).decode()
        self.assertIn("KERNEL arm64/linux\n", text)
        self.assertIn("INITRD arm64/initrd.gz\n", text)
        harness.sightings.record(make_request(MAC, arch=0), IPv4Address(CLIENT[0]))
        self.assertIn(f"KERNEL tftp://{SERVER}/arm64/linux\n", harness.download(name).decode())


class ExplainTests(SynchronousTestCase):
    """``pxetwist explain --arch 22 --vendor-class U-Boot.armv8`` and ``--arch 11``."""

    def explain(self, *args: str) -> str:
        directory = temp_dir(self)
        config = directory / "pxe.yaml"
        config.write_text(
            f"tftp: {{root: {directory}}}\nhttp: {{root: {directory}}}\n"
            "dhcp: {mode: authoritative, subnets: [{network: 10.77.0.0/16,"
            " range: [10.77.1.0, 10.77.1.9]}]}\n"
            "boot: {bios: undionly.kpxe, efi-x86_64: ipxe.efi}\npolicy: {plugin_dirs: []}\n"
            f"machines: [{{mac: '{MAC}', kernel: 'tftp://{{server}}/arm64/linux',"
            " initrd: 'http://10.9.9.9/initrd.gz'}]\n"
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(
                ["explain", "-c", str(config), "--mac", MAC, "--server-address", "10.77.0.1", *args]
            )
        self.assertEqual(code, 0, out.getvalue())
        return out.getvalue()

    def test_uboot(self) -> None:
        text = self.explain("--arch", "22", "--vendor-class", "U-Boot.armv8")
        self.assertIn("firmware u-boot  arch 22 (UBOOT_ARM64)", text)
        self.assertIn("no boot[uboot-arm64] configured", text)
        self.assertIn("  file ''", text)  # an address, no boot program
        self.assertNotIn("undionly.kpxe", text)
        self.assertIn("u-boot fetches kernel as arm64/linux", text)
        self.assertIn("UNREACHABLE for u-boot: initrd: U-Boot cannot fetch", text)

    def test_arm64_uefi(self) -> None:
        text = self.explain("--arch", "11")
        self.assertIn("arch 11 (EFI_ARM64) -> boot[efi-arm64] = ipxe-arm64.efi", text)
        self.assertIn("option  67 bootfile: ipxe-arm64.efi", text)
        self.assertIn("grub fetches kernel as (tftp,10.77.0.1)/arm64/linux", text)

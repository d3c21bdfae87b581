"""Unit tests for :mod:`pxetwist.http.scripts`: generated iPXE scripts and GRUB configs over HTTP.

In memory with :class:`treq.testing.StubTreq` (its client is 127.0.0.1:31337, its server
127.0.0.1 on the URL's port); protocol-reference §4.2 for the iPXE script URL, §3.1 for UEFI.
The last classes feed raw bytes into :class:`pxetwist.http.service.BootSite`, where the exact
dispatch between scripts and files, and the access log, are the point.
"""

from __future__ import annotations

import shutil
import tempfile
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet import address, defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pxetwist.config.model import Config
from pxetwist.context import IServerReactor, ServerContext
from pxetwist.events import BootEvent, BootEventBus, EventProtocol, EventStage, LogObserver, Outcome
from pxetwist.http.scripts import BootScripts, arch_from_query, script_name
from pxetwist.http.site import BootRoot, BootSite
from pxetwist.http.static import BootFiles
from pxetwist.policy.builtin import ArchPolicy, StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.interfaces import IBootPolicy
from pxetwist.policy.render import LoaderKind
from pxetwist.policy.request import BootRequest
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import Arch, Firmware, MacAddress, Stage
from pxetwist.testing import config_from_yaml, make_request

KNOWN = "52:54:00:77:00:10"
LOCAL = "52:54:00:77:00:12"
IGNORED = "52:54:00:77:00:13"
UNKNOWN = "52:54:00:99:99:99"
CLIENT = IPv4Address("127.0.0.1")  # StubTreq's client address
BASE = "http://127.0.0.1:8080/"

CONFIG_YAML = """
http: {{root: {http}, port: 8080}}
tftp: {{root: {tftp}}}
dhcp: {{mode: off}}
templates: {templates}
defaults:
  kernel: default/linux
  initrd: [default/initrd.gz]
  cmdline: "priority=critical"
machines:
  - mac: {known}
    name: node1
    kernel: node/linux
    initrd: [node/initrd.gz, node/extra.cpio]
    cmdline: "console=ttyS0 root=/dev/nfs"
  - mac: {local}
    action: local
  - mac: {ignored}
    action: ignore
"""


def _tempdir(case: SynchronousTestCase) -> Path:
    path = Path(tempfile.mkdtemp(prefix="pxetwist-scripts-"))
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


@implementer(IBootPolicy)
class _Fixed:
    """A policy that answers every machine with one decision (or a Deferred of it)."""

    def __init__(self, decision: BootDecision | Deferred[BootDecision | None] | None) -> None:
        self.decision = decision
        self.requests: list[BootRequest] = []

    def decide(self, request: BootRequest) -> Any:
        self.requests.append(request)
        return self.decision


class _Case(SynchronousTestCase):
    """A served tree, a config, a chain of ``static`` then ``arch``, a StubTreq on the scripts."""

    def setUp(self) -> None:
        base = _tempdir(self)
        self.http_root = base / "http"
        self.templates = base / "templates"
        for directory in (self.http_root, base / "tftp", self.templates):
            directory.mkdir()
        for name in ("default/linux", "default/initrd.gz", "node/linux", "node/initrd.gz"):
            (self.http_root / name).parent.mkdir(parents=True, exist_ok=True)
            (self.http_root / name).write_bytes(b"x" * 64)
        (self.http_root / "node/extra.cpio").write_bytes(b"y")
        self.config: Config = config_from_yaml(
            CONFIG_YAML.format(
                http=self.http_root,
                tftp=base / "tftp",
                templates=self.templates,
                known=KNOWN,
                local=LOCAL,
                ignored=IGNORED,
            )
        )
        self.clock = MemoryReactorClock()
        self.neighbours: dict[IPv4Address, MacAddress] = {}
        self.sightings = SightingRegistry(self.clock.seconds, neighbours=lambda: self.neighbours)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.use(("static", StaticPolicy(self.config)), ("arch", ArchPolicy(self.config)))

    def use(self, *policies: tuple[str, Any]) -> None:
        """Serve with this policy chain from now on."""
        self.chain = PolicyChain(policies, self.clock)
        self.resource = BootScripts(
            ServerContext.build(
                self.config,
                self.chain,
                cast(IServerReactor, self.clock),  # a clock and TCP: what scripts use
                sightings=self.sightings,
            )
        )
        self.stub: Any = StubTreq(self.resource)

    def _drive(self, d: Any) -> Any:
        for _ in range(1000):
            self.stub.flush()
            if d.called:
                break
            self.clock.advance(0)
        return self.successResultOf(d)

    def get(self, path: str, method: str = "GET") -> tuple[int, str, Any]:
        response = self._drive(self.stub.request(method, BASE + path))
        body = self._drive(self.stub.content(response))
        return response.code, body.decode("utf-8"), response

    def logged(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events if text in e.get("log_format", "")]


class InterfaceTests(SynchronousTestCase):
    def test_resource(self) -> None:
        base = _tempdir(self)
        config = config_from_yaml(f"http: {{root: {base}}}")
        clock = MemoryReactorClock()
        scripts = BootScripts(
            ServerContext.build(config, PolicyChain([], clock), cast(IServerReactor, clock))
        )
        verifyObject(IResource, scripts)
        verifyObject(IResource, BootRoot(scripts, BootFiles(base, clock)))


class ScriptNameTests(SynchronousTestCase):
    """Which paths are generated (module docstring): iPXE's script URL and GRUB's search."""

    def name(self, path: str, client: IPv4Address | None = None) -> Any:
        return script_name([segment.encode() for segment in path.split("/")], client)

    def test_boot_ipxe_anywhere(self) -> None:
        self.assertEqual(self.name("boot.ipxe").kind, LoaderKind.IPXE)
        self.assertEqual(self.name("ipxe/boot.ipxe").path, "ipxe/boot.ipxe")
        self.assertIsNone(self.name("boot.ipxe").mac)

    def test_mac_named_ipxe_script(self) -> None:
        named = self.name("52-54-00-77-00-10.ipxe")
        self.assertEqual((named.kind, str(named.mac)), (LoaderKind.IPXE, KNOWN))

    def test_other_ipxe_files_are_files(self) -> None:
        self.assertIsNone(self.name("menu.ipxe"))

    def test_grub_search_names(self) -> None:
        """GRUB's net search: grub.cfg-01-<mac>, -<UUID>, -<hex address prefixes>, grub.cfg."""
        named = self.name("grub/grub.cfg-01-52-54-00-77-00-10")
        self.assertEqual((named.kind, str(named.mac)), (LoaderKind.GRUB, KNOWN))
        self.assertEqual(self.name("grub/grub.cfg").kind, LoaderKind.GRUB)
        self.assertEqual(self.name("grub.cfg").kind, LoaderKind.GRUB)
        self.assertEqual(self.name("grub.cfg-7F00", CLIENT).kind, LoaderKind.GRUB)
        self.assertIsNone(self.name("grub.cfg-C0A8", CLIENT))  # another machine's file

    def test_pxelinux_and_plain_files_are_files(self) -> None:
        self.assertIsNone(self.name("pxelinux.cfg/default"))
        self.assertIsNone(self.name("vmlinuz"))
        self.assertIsNone(self.name("grub/"))

    def test_odd_paths_are_left_to_the_files(self) -> None:
        """Traversal and encoded tricks are never scripts: BootFiles refuses them with a 400."""
        self.assertIsNone(script_name([b"..", b"boot.ipxe"], None))
        self.assertIsNone(script_name([b"a/b", b"boot.ipxe"], None))
        self.assertIsNone(script_name([b"boot.ipxe\x00"], None))
        self.assertIsNone(script_name([b"\xff", b"grub.cfg"], None))
        self.assertIsNone(script_name([], None))


class ArchFromQueryTests(SynchronousTestCase):
    """iPXE's ${buildarch} (+ ${platform}) to the option-93 value DHCP would have carried."""

    def test_with_platform(self) -> None:
        self.assertEqual(arch_from_query("i386", "pcbios"), Arch.BIOS)
        self.assertEqual(arch_from_query("x86_64", "pcbios"), Arch.BIOS)
        self.assertEqual(arch_from_query("i386", "efi"), Arch.EFI_IA32)
        self.assertEqual(arch_from_query("x86_64", "efi"), Arch.EFI_X86_64)
        self.assertEqual(arch_from_query("arm64", "efi"), Arch.EFI_ARM64)
        self.assertIsNone(arch_from_query("arm64", "pcbios"))

    def test_without_platform(self) -> None:
        """i386 iPXE is the BIOS build; any other build architecture is UEFI."""
        self.assertEqual(arch_from_query("i386"), Arch.BIOS)
        self.assertEqual(arch_from_query("x86_64"), Arch.EFI_X86_64)
        self.assertEqual(arch_from_query("ARM64"), Arch.EFI_ARM64)
        self.assertEqual(arch_from_query("arm32"), Arch.EFI_ARM32)
        self.assertEqual(arch_from_query("riscv64"), Arch.EFI_RISCV64)
        self.assertEqual(arch_from_query("loong64"), Arch.EFI_LOONGARCH64)

    def test_numbers_and_junk(self) -> None:
        self.assertEqual(arch_from_query("7"), Arch.EFI_X86_64)
        self.assertEqual(arch_from_query("9"), Arch.EFI_X86_64)  # EBC read as x64 (§2.4)
        for junk in (None, "", "${buildarch}", "sparc", "99999999"):
            self.assertIsNone(arch_from_query(junk), junk)


class IpxeScriptTests(_Case):
    """``/boot.ipxe?mac=${mac}&uuid=${uuid}&arch=${buildarch}`` (protocol-reference §4.2)."""

    def test_known_machine(self) -> None:
        code, body, response = self.get(f"boot.ipxe?mac={KNOWN}&arch=x86_64")
        self.assertEqual(code, 200)
        self.assertTrue(body.startswith("#!ipxe\n"), body)
        self.assertIn(
            "kernel http://127.0.0.1:8080/node/linux initrd=initrd.gz initrd=extra.cpio "
            "console=ttyS0 root=/dev/nfs\n",
            body,
        )
        self.assertIn("initrd http://127.0.0.1:8080/node/initrd.gz\n", body)
        self.assertIn("initrd http://127.0.0.1:8080/node/extra.cpio\n", body)
        self.assertTrue(body.rstrip().endswith("boot"), body)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(response.length, len(body.encode()))

    def test_mac_in_other_notations(self) -> None:
        """iPXE's ${mac:hexhyp} and ${mac:hexraw} name the same machine."""
        for spelled in ("52-54-00-77-00-10", "525400770010"):
            code, body, _ = self.get(f"boot.ipxe?mac={spelled}")
            self.assertEqual(code, 200)
            self.assertIn("node/linux", body)

    def test_unknown_machine_with_arch_policy(self) -> None:
        """The ``arch`` policy's defaults, for an iPXE client the DHCP side never saw."""
        code, body, _ = self.get(f"boot.ipxe?mac={UNKNOWN}&uuid=&arch=x86_64")
        self.assertEqual(code, 200)
        self.assertIn("kernel http://127.0.0.1:8080/default/linux initrd=initrd.gz", body)
        self.assertIn("priority=critical", body)

    def test_unknown_machine_without_arch_policy(self) -> None:
        """No policy decides: 404 with the reason in the body (and in the response's event)."""
        self.use(("static", StaticPolicy(self.config)))
        code, body, _ = self.get(f"boot.ipxe?mac={UNKNOWN}&arch=x86_64")
        self.assertEqual(code, 404)
        self.assertIn(f"no boot policy decided for {UNKNOWN}", body)
        self.assertNotIn("#!ipxe", body)

    def test_request_from_the_query(self) -> None:
        """A machine DHCP never saw: stage HTTP, path, addresses, arch and UUID from the URL,
        and the iPXE user class (whoever fetches boot.ipxe is iPXE)."""
        policy = _Fixed(None)
        self.use(("probe", policy))
        uuid = "8b5a3c1e-2f44-4c1a-9d2e-0a1b2c3d4e5f"
        self.get(f"ipxe/boot.ipxe?mac={UNKNOWN}&uuid={uuid}&arch=arm64")
        [request] = policy.requests
        self.assertEqual(str(request.mac), UNKNOWN)
        self.assertEqual(request.stage, Stage.HTTP)
        self.assertEqual(request.path, "ipxe/boot.ipxe")
        self.assertEqual(request.arches, (Arch.EFI_ARM64,))
        self.assertEqual(str(request.uuid), uuid)
        self.assertEqual(request.client_address, CLIENT)
        self.assertEqual(request.server_address, IPv4Address("127.0.0.1"))
        self.assertIs(request.firmware, Firmware.IPXE)

    def test_dhcp_sighting_wins_over_the_query(self) -> None:
        """What DHCP saw (arch, classes) is what the policy sees; the URL's arch is not used."""
        seen = make_request(
            UNKNOWN, arch=0, firmware="ipxe", uuid="8b5a3c1e-2f44-4c1a-9d2e-0a1b2c3d4e5f"
        )
        self.sightings.record(seen, IPv4Address("10.77.1.5"))
        policy = _Fixed(None)
        self.use(("probe", policy))
        self.get(f"boot.ipxe?mac={UNKNOWN}&arch=x86_64")
        [request] = policy.requests
        self.assertEqual(request.arches, (Arch.BIOS,))
        self.assertEqual(request.uuid, seen.uuid)
        self.assertEqual(request.client_address, CLIENT)

    def test_pxe_rom_sighting_is_asked_as_ipxe(self) -> None:
        """The ROM's DHCP sighting, then iPXE fetching the script: the policy sees iPXE."""
        self.sightings.record(make_request(UNKNOWN, arch=7, firmware="pxe"), CLIENT)
        policy = _Fixed(None)
        self.use(("probe", policy))
        self.get("boot.ipxe")
        [request] = policy.requests
        self.assertIs(request.firmware, Firmware.IPXE)
        self.assertEqual(request.arches, (Arch.EFI_X86_64,))

    def test_client_address_fallback(self) -> None:
        """No mac= in the URL: the machine DHCP saw at the client's address."""
        self.sightings.record(make_request(KNOWN, arch=7, firmware="ipxe"), CLIENT)
        code, body, _ = self.get("boot.ipxe")
        self.assertEqual(code, 200)
        self.assertIn("node/linux", body)

    def test_neighbour_table_fallback(self) -> None:
        """DHCP never saw it with an address (proxy mode): the kernel's neighbour table."""
        self.neighbours[CLIENT] = MacAddress.parse(KNOWN)
        code, body, _ = self.get("boot.ipxe?arch=x86_64")
        self.assertEqual(code, 200)
        self.assertIn("node/linux", body)

    def test_unidentified_client(self) -> None:
        code, body, _ = self.get("boot.ipxe?arch=x86_64")
        self.assertEqual(code, 404)
        self.assertIn("cannot tell which machine 127.0.0.1 is", body)
        self.assertIn("mac=", body)

    def test_bad_mac(self) -> None:
        """An unexpanded ${mac} is refused rather than guessed at."""
        code, body, _ = self.get("boot.ipxe?mac=${mac}")
        self.assertEqual(code, 400)
        self.assertIn("not a MAC address", body)

    def test_local_exits(self) -> None:
        """``local``: iPXE's ``exit`` hands the boot back to the firmware's next device."""
        code, body, _ = self.get(f"boot.ipxe?mac={LOCAL}")
        self.assertEqual(code, 200)
        lines = [line for line in body.splitlines() if line and not line.startswith("#")]
        self.assertEqual(lines, ["exit"])

    def test_ignored_is_404(self) -> None:
        code, body, _ = self.get(f"boot.ipxe?mac={IGNORED}")
        self.assertEqual(code, 404)
        self.assertIn(f"{IGNORED} is ignored by policy static", body)

    def test_efi_kernel_gets_initrd_argument(self) -> None:
        """The EFI stub finds its initrd only through ``initrd=<name>`` on the command line."""
        for arch in ("x86_64", "arm64"):
            code, body, _ = self.get(f"boot.ipxe?mac={UNKNOWN}&arch={arch}")
            self.assertEqual(code, 200)
            [kernel] = [line for line in body.splitlines() if line.startswith("kernel ")]
            self.assertIn(" initrd=initrd.gz", kernel)

    def test_script_verbatim(self) -> None:
        script = "#!ipxe\necho booting ${mac} from {server}\nsanboot iscsi:10.0.0.1::::iqn.x\n"
        self.use(("script", _Fixed(BootDecision(script=script))))
        code, body, _ = self.get(f"boot.ipxe?mac={UNKNOWN}")
        self.assertEqual(code, 200)
        self.assertEqual(body, script.replace("{server}", "127.0.0.1"))

    def test_program_is_chained(self) -> None:
        program = "http://192.0.2.9/menus/site.ipxe"
        self.use(("chain", _Fixed(BootDecision(program=program))))
        code, body, _ = self.get(f"boot.ipxe?mac={UNKNOWN}")
        self.assertEqual(code, 200)
        self.assertIn(f"chain {program}\n", body)

    def test_never_chains_to_itself(self) -> None:
        """The ``ipxe`` boot entry is this very script: chaining to it would loop forever."""
        loop = "http://{server}:{http_port}/boot.ipxe?mac=${mac}&uuid=${uuid}&arch=${buildarch}"
        self.use(("loop", _Fixed(BootDecision(program=loop, reason="no kernel"))))
        code, body, _ = self.get(f"boot.ipxe?mac={UNKNOWN}")
        self.assertEqual(code, 404)
        self.assertIn("names no kernel or script for ipxe", body)
        self.assertIn("there is no file boot.ipxe", body)

    def test_nothing_to_run_falls_back_to_the_file(self) -> None:
        """An operator's own boot.ipxe serves machines the policy only knows as iPXE clients."""
        (self.http_root / "boot.ipxe").write_bytes(b"#!ipxe\nmenu Site menu\n")
        loop = "http://{server}:{http_port}/boot.ipxe?mac=${mac}"
        self.use(("loop", _Fixed(BootDecision(program=loop))))
        code, body, _ = self.get(f"boot.ipxe?mac={UNKNOWN}")
        self.assertEqual((code, body), (200, "#!ipxe\nmenu Site menu\n"))

    def test_decision_beats_the_file(self) -> None:
        (self.http_root / "boot.ipxe").write_bytes(b"#!ipxe\nmenu Site menu\n")
        code, body, _ = self.get(f"boot.ipxe?mac={KNOWN}")
        self.assertEqual(code, 200)
        self.assertIn("node/linux", body)

    def test_ignored_never_gets_the_file(self) -> None:
        (self.http_root / "boot.ipxe").write_bytes(b"#!ipxe\nmenu Site menu\n")
        code, _, _ = self.get(f"boot.ipxe?mac={IGNORED}")
        self.assertEqual(code, 404)

    def test_mac_named_script(self) -> None:
        code, body, _ = self.get("52-54-00-77-00-10.ipxe")
        self.assertEqual(code, 200)
        self.assertIn("node/linux", body)

    def test_head(self) -> None:
        _, full, _ = self.get(f"boot.ipxe?mac={KNOWN}")
        code, body, response = self.get(f"boot.ipxe?mac={KNOWN}", method="HEAD")
        self.assertEqual((code, body), (200, ""))
        self.assertEqual(
            response.headers.getRawHeaders(b"content-length"), [str(len(full.encode())).encode()]
        )

    def test_other_methods(self) -> None:
        code, _, response = self.get(f"boot.ipxe?mac={KNOWN}", method="POST")
        self.assertEqual(code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])

    def test_asynchronous_policy(self) -> None:
        """The answer waits for a policy that answers later (a CMDB, an API)."""
        later: Deferred[BootDecision | None] = Deferred()
        self.use(("slow", _Fixed(later)))
        d = self.stub.get(BASE + f"boot.ipxe?mac={UNKNOWN}")
        self.stub.flush()
        self.assertNoResult(d)
        later.callback(BootDecision.local("later"))
        response = self._drive(d)
        self.assertEqual(response.code, 200)
        self.assertIn(b"exit", self._drive(self.stub.content(response)))

    def test_policy_timeout(self) -> None:
        """A policy that never answers is skipped after the chain's timeout: 404, not a hang."""
        self.use(("stuck", _Fixed(Deferred())))
        d = self.stub.get(BASE + f"boot.ipxe?mac={UNKNOWN}")
        self.stub.flush()
        self.clock.advance(self.chain.timeout + 1)
        response = self._drive(d)
        self.assertEqual(response.code, 404)
        self.assertEqual(len(self.flushLoggedErrors(defer.TimeoutError)), 1)

    def test_unknown_path(self) -> None:
        code, _, _ = self.get("vmlinuz")
        self.assertEqual(code, 404)


class TemplateErrorTests(_Case):
    """A broken operator template: 500, one error line naming the template, no half script."""

    def check(self, template: str) -> None:
        (self.templates / "ipxe.j2").write_text(template)
        code, body, response = self.get(f"boot.ipxe?mac={KNOWN}")
        self.assertEqual(code, 500)
        self.assertNotIn("#!ipxe", body)
        self.assertNotIn("node/linux", body)
        self.assertIn("ipxe.j2", body)
        self.assertEqual(response.length, len(body.encode()))
        [event] = self.logged("cannot render")
        self.assertIn(str(self.templates / "ipxe.j2"), event["template"])
        self.assertIn("ipxe.j2", event["error"])
        self.assertEqual(event["log_level"].name, "error")

    def test_undefined_variable(self) -> None:
        self.check("#!ipxe\nkernel {{ kernel }}\n{{ no_such_variable }}\nboot\n")

    def test_syntax_error(self) -> None:
        self.check("#!ipxe\n{% if kernel %}\nkernel {{ kernel }}\n")

    def test_grub_template(self) -> None:
        (self.templates / "grub.j2").write_text("linux {{ kernel }\n")
        code, body, _ = self.get(f"grub/grub.cfg-01-{KNOWN.replace(':', '-')}")
        self.assertEqual(code, 500)
        self.assertIn("grub.j2", body)


class GrubConfigTests(_Case):
    """GRUB loaded over HTTP: its prefix is ``(http,server:port)/grub``."""

    def test_mac_named(self) -> None:
        code, body, _ = self.get(f"grub/grub.cfg-01-{KNOWN.replace(':', '-')}")
        self.assertEqual(code, 200)
        self.assertIn("linux (http,127.0.0.1:8080)/node/linux console=ttyS0 root=/dev/nfs\n", body)
        self.assertIn(
            "initrd (http,127.0.0.1:8080)/node/initrd.gz (http,127.0.0.1:8080)/node/extra.cpio",
            body,
        )

    def test_by_client_address(self) -> None:
        self.sightings.record(make_request(KNOWN, arch=16, firmware="http-boot"), CLIENT)
        code, body, _ = self.get("grub/grub.cfg")
        self.assertEqual(code, 200)
        self.assertIn("node/linux", body)

    def test_local(self) -> None:
        code, body, _ = self.get(f"grub.cfg-{LOCAL}")
        self.assertEqual(code, 200)
        self.assertIn("exit", body)

    def test_no_kernel_falls_back_to_the_file(self) -> None:
        self.use(("program", _Fixed(BootDecision(program="grubx64.efi"))))
        self.sightings.record(make_request(UNKNOWN, arch=16, firmware="http-boot"), CLIENT)
        code, body, _ = self.get("grub/grub.cfg")
        self.assertEqual(code, 404)
        self.assertIn("names no kernel for grub", body)
        (self.http_root / "grub").mkdir()
        (self.http_root / "grub" / "grub.cfg").write_text("menuentry installer {}\n")
        code, body, _ = self.get("grub/grub.cfg")
        self.assertEqual((code, body), (200, "menuentry installer {}\n"))


# --- The site: dispatch and access log --------------------------------------------------------

_PEER = address.IPv4Address("TCP", "10.77.1.5", 40000)
_HOST = address.IPv4Address("TCP", "10.77.0.1", 8080)


class SiteTests(_Case):
    """:class:`BootSite` over :class:`BootRoot`: raw bytes in, one boot event per response out."""

    def setUp(self) -> None:
        super().setUp()
        (self.http_root / "boot.ipxe").write_bytes(b"#!ipxe\nfile on disk\n")
        (self.http_root / "menu.ipxe").write_bytes(b"#!ipxe\nmenu\n")
        self.bus = BootEventBus()
        self.boot_events: list[BootEvent] = []
        self.bus.subscribe(self.boot_events.append)
        self.site = BootSite(
            BootRoot(self.resource, BootFiles(self.http_root, self.clock)),
            self.clock,
            events=self.bus,
            sightings=self.sightings,
        )

    def raw(self, request: bytes) -> bytes:
        protocol = self.site.buildProtocol(_PEER)
        assert protocol is not None
        transport = StringTransport(hostAddress=_HOST, peerAddress=_PEER)
        protocol.makeConnection(transport)
        protocol.dataReceived(request)
        for _ in range(100):
            self.clock.advance(0.001)
        response: bytes = transport.value()
        protocol.connectionLost(Failure(ConnectionDone()))
        return response

    def access(self) -> list[BootEvent]:
        return self.boot_events

    def test_scripts_take_precedence(self) -> None:
        response = self.raw(f"GET /boot.ipxe?mac={KNOWN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.assertIn(b"kernel http://10.77.0.1:8080/node/linux", response)
        self.assertNotIn(b"file on disk", response)

    def test_files_for_the_rest(self) -> None:
        response = self.raw(b"GET /menu.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        self.assertTrue(response.endswith(b"\r\n\r\n#!ipxe\nmenu\n"), response)
        response = self.raw(b"GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(response.startswith(b"HTTP/1.1 400 "), response)

    def test_access_log(self) -> None:
        """A generated script: one event, with the script's MAC and ``generated`` set."""
        self.raw(f"GET /boot.ipxe?mac={KNOWN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        [event] = self.access()
        self.assertEqual(
            (event.protocol, event.stage, event.outcome),
            (EventProtocol.HTTP, EventStage.HTTP_REQUEST, Outcome.OK),
        )
        self.assertEqual(event.client, IPv4Address("10.77.1.5"))
        self.assertEqual(str(event.mac), KNOWN)
        details = event.details
        self.assertEqual(details["method"], "GET")
        self.assertEqual(details["path"], f"/boot.ipxe?mac={KNOWN}")
        self.assertEqual(details["status"], 200)
        self.assertIs(details["generated"], True)
        self.assertIs(details["complete"], True)
        self.assertIsNone(details["range"])
        self.assertGreater(cast(int, details["bytes"]), 50)
        self.assertGreaterEqual(cast(float, details["seconds"]), 0)

    def test_script_event_says_what_was_decided(self) -> None:
        """A generated script's event carries the decision; the log line says it."""
        self.bus.subscribe(LogObserver())
        self.raw(f"GET /boot.ipxe?mac={KNOWN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        [event] = self.access()
        self.assertEqual(
            (event.details["loader"], event.details["policy"], event.details["action"]),
            ("ipxe", "static", "boot"),
        )
        [logged] = [e for e in self.events if e.get("log_namespace") == "pxetwist.http"]
        self.assertTrue(
            formatEvent(logged).endswith(f"mac {KNOWN} ipxe config: boot by static"),
            formatEvent(logged),
        )

    def test_script_refusal_event_says_why(self) -> None:
        """A script not sent: the event (and its log line) says why, as the body does."""
        self.bus.subscribe(LogObserver())
        self.raw(f"GET /boot.ipxe?mac={IGNORED} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        [event] = self.access()
        self.assertEqual((event.details["status"], event.outcome), (404, Outcome.REFUSED))
        self.assertIn(f"{IGNORED} is ignored by policy static", str(event.details["why"]))
        self.assertEqual(event.details["policy"], "static")
        [logged] = [e for e in self.events if e.get("log_namespace") == "pxetwist.http"]
        self.assertIn(f": {IGNORED} is ignored by policy static", formatEvent(logged))

    def test_access_log_mac_from_sightings(self) -> None:
        """A file download is reported with the MAC DHCP saw at the client's address."""
        self.sightings.record(make_request(KNOWN), IPv4Address(_PEER.host))
        self.raw(b"GET /node/linux HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n")
        [event] = self.access()
        self.assertEqual(
            (event.details["status"], event.details["bytes"], str(event.mac)), (206, 10, KNOWN)
        )
        self.assertEqual(event.details["range"], "bytes=0-9")
        self.assertIs(event.details["generated"], False)

    def test_access_log_line(self) -> None:
        """The log observer writes the event as the access-log line, in ``pxetwist.http``."""
        self.bus.subscribe(LogObserver())
        self.sightings.record(make_request(KNOWN), IPv4Address(_PEER.host))
        self.raw(b"GET /node/linux HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n")
        [logged] = [e for e in self.events if e.get("log_namespace") == "pxetwist.http"]
        self.assertEqual(
            formatEvent(logged),
            f"10.77.1.5 GET /node/linux 206 10 bytes 0.0s mac {KNOWN} range bytes=0-9",
        )

    def test_client_gone_before_the_decision(self) -> None:
        """A client that hangs up while a slow policy thinks gets nothing written, no error."""
        later: Deferred[BootDecision | None] = Deferred()
        self.use(("slow", _Fixed(later)))
        self.site.resource = BootRoot(self.resource, BootFiles(self.http_root, self.clock))
        protocol = self.site.buildProtocol(_PEER)
        assert protocol is not None
        transport = StringTransport(hostAddress=_HOST, peerAddress=_PEER)
        protocol.makeConnection(transport)
        protocol.dataReceived(f"GET /boot.ipxe?mac={KNOWN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        protocol.connectionLost(Failure(ConnectionDone()))
        later.callback(BootDecision.local("too late"))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.access(), [])

    def test_access_log_unknown_machine(self) -> None:
        self.raw(b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
        [event] = self.access()
        self.assertEqual(
            (event.details["status"], event.mac, event.outcome), (404, None, Outcome.REFUSED)
        )

"""Real firmware boots (QEMU, TCG) against pxetwist itself (``twistd -n pxe``).

The same scenarios (a)-(e) and (h)-(l) as the reference suite, with pxetwist as DHCP, TFTP and
HTTP server, plus (f) proxyDHCP beside an address-only dnsmasq and (g) per-MAC policy with
several VMs.  (h)-(l) are issue 17's firmware breadth: ARM64 UEFI (AAVMF), U-Boot's ``pxe``
commands with ``tftp://`` URLs in the machine's config (pxetwist offers U-Boot no program and
renders the URLs as paths), U-Boot's default EFI boot, and Secure Boot enforced (signed chain
boots, an unsigned NBP is refused). The run's token exists only in pxetwist's config (a
``machines:`` entry): the iPXE script, pxelinux config and grub.cfg carrying it are rendered
by pxetwist's policy, so a pxetwist that serves nothing cannot pass. Every test also checks
pxetwist's own log for the stages it served (DHCP offer/ack, TFTP transfers, HTTP requests for
the right paths).

Measured VM start -> marker under TCG (2 runs, 2 cores): (a) 7.4-7.7 s, (a) without RAs
23.3-25.0 s, (b) 8.2-9.6 s, (c) 14.8-17.3 s, (d) 14.7-18.3 s, (e) 19.8-22.5 s, (f) BIOS
7.5 s, UEFI via port 4011 15.7 s; (g) 11.5 s (three VMs at once) and 30.5 s (an ignored VM
is watched for 30 s). The module takes about 2.5 minutes, the whole e2e suite about 4.5.
(h)-(l) on a heavily loaded machine (load 8-10): 21.1, 7.6, 8.7, 47.9 s, and (l) refused.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import NetLab, remove_stale_labs
from pxetwist.lab.e2e import SCENARIOS, WATCH, BootRun, BootServer, Scenario
from pxetwist.lab.e2e.boottree import MARKER_RE, BootTree, build_tree
from pxetwist.lab.e2e.pxetwist_server import PxetwistProxy, PxetwistServer, machine_entry
from pxetwist.lab.e2e.vm import RouterAdvertiser, Vm, VmError, random_mac
from tests.e2e import BootScenarioTests

PXETWIST = Path(sys.executable).with_name("pxetwist")

# What pxetwist must have logged serving each scenario, per stage (regexes; {mac} filled in).
_DHCP_AUTH = [r"DISCOVER from {mac} on srv0: offer ", r"REQUEST from {mac} on srv0: ack "]


def _http_script(policy: str = "static") -> list[str]:
    """The iPXE script decided by ``policy`` (the e2e machine is listed: ``static``; a machine
    the config does not list is decided by the catch-all ``arch`` from ``defaults``), then the
    kernel and initrd it names."""
    return [
        rf"GET /boot\.ipxe\S* 200 .* mac {{mac}} ipxe config: boot by {policy}",
        r"GET /boot/linux 200 8\d{{6}} bytes .* mac {mac}",
        r"GET /boot/initrd\.img 200 \d+ bytes .* mac {mac}",
    ]


_HTTP_SCRIPT = _http_script()


def _tftp(*paths: str) -> list[str]:
    return [rf"tftp completed: {re.escape(p)} to \S+ \(mac {{mac}}\)" for p in paths]


EXPECTED_LOG: dict[str, list[str]] = {
    "bios-ipxe-http": _DHCP_AUTH + _HTTP_SCRIPT,
    "bios-pxelinux-tftp": _DHCP_AUTH
    + _tftp("pxelinux.0", "pxelinux.cfg/01-{hyphens}", "boot/linux", "boot/initrd.img"),
    "uefi-pxe-snponly": [
        *_DHCP_AUTH,
        r"DISCOVER from {mac} on srv0: offer .*arch 7",
        *_tftp("snponly.efi"),
        r"DISCOVER from {mac} on srv0: offer .*iPXE client",
        *_HTTP_SCRIPT,
    ],
    "uefi-pxe-shim-grub": _DHCP_AUTH
    + _tftp("shimx64.efi", "grubx64.efi", "grub/grub.cfg", "boot/linux", "boot/initrd.img"),
    "uefi-http-ipxe": [
        *_DHCP_AUTH,
        r"DISCOVER from {mac} on srv0: offer .*arch 16",
        r"GET /ipxe\.efi 200 .* mac {mac}",
        *_HTTP_SCRIPT,
    ],
    "arm64-uefi-grub": [
        *_DHCP_AUTH,
        r"DISCOVER from {mac} on srv0: offer .*arch 11 \(EFI_ARM64\) -> boot\[efi-arm64\]",
        *_tftp("grubaa64.efi", "grub/grub.cfg", "arm64/linux", "arm64/initrd.img"),
    ],
    "uboot-pxe": [
        *_DHCP_AUTH,
        # issue 17: no boot program for U-Boot (none configured), an address all the same ...
        r"DISCOVER from {mac} on srv0: offer .*U-Boot\.armv8, arch 22 \(UBOOT_ARM64\), arm64: "
        r"no boot\[uboot-arm64\] configured",
        # ... and its config with the tftp:// URLs turned into paths it can fetch
        *_tftp("pxelinux.cfg/01-{hyphens}", "arm64/linux", "arm64/initrd.img"),
    ],
    "uboot-bootefi": [
        *_DHCP_AUTH,
        r"DISCOVER from {mac} on srv0: offer .*arch 11 \(EFI_ARM64\) -> boot\[efi-arm64\]",
        *_tftp("grubaa64.efi", "grub/grub.cfg", "arm64/linux", "arm64/initrd.img"),
    ],
    "secure-shim-grub": _DHCP_AUTH
    + _tftp("shimx64.efi", "grubx64.efi", "grub/grub.cfg", "boot/linux", "boot/initrd.img"),
    "secure-unsigned-refused": [
        *_DHCP_AUTH,
        r"DISCOVER from {mac} on srv0: offer .*arch 7 \(EFI_X86_64\) -> boot\[efi-x86_64\]",
        *_tftp("ipxe.efi"),
    ],
}


def assert_logged(
    testcase: SynchronousTestCase, log: str, patterns: Sequence[str], mac: str, what: str
) -> None:
    """Every pattern (with ``{mac}``/``{hyphens}`` filled in) matches a line of ``log``."""
    values = {"mac": mac.lower(), "hyphens": mac.lower().replace(":", "-")}
    missing = []
    for pattern in patterns:
        rx = pattern.replace("{mac}", re.escape(values["mac"]))
        rx = rx.replace(re.escape("{hyphens}"), re.escape(values["hyphens"]))
        rx = rx.replace("{{", "{").replace("}}", "}")
        if not re.search(rx, log, re.MULTILINE):
            missing.append(rx)
    if missing:
        testcase.fail(f"{what}: pxetwist did not log\n  " + "\n  ".join(missing) + f"\n{log}")


class PxetwistBootTests(BootScenarioTests, SynchronousTestCase):
    """Scenarios (a) to (e) against pxetwist, and pxetwist's log of each stage."""

    def make_server(self) -> BootServer:
        self.server = PxetwistServer()
        return self.server

    def boot(self, scenario: Scenario, *, ipv6_ra: bool = True) -> Any:
        result = super().boot(scenario, ipv6_ra=ipv6_ra)
        mac = _mac_of(self.server)
        assert_logged(self, self.server.log(), EXPECTED_LOG[scenario.name], mac, scenario.title)
        self._check_session(mac, scenario)
        return result

    def _check_session(self, mac: str, scenario: Scenario) -> None:
        """The boot is one session: DHCP first, then (in time order) the kernel and initrd
        (U-Boot's ``pxe boot`` loads the initrd first, the others the kernel)."""
        title = scenario.title
        wanted = {"kernel", "initrd"}
        session = self._session(mac, lambda s: wanted <= {i["stage"] for i in s["stages"]})
        stages = [item["stage"] for item in session["stages"]]
        times = [item["time"] for item in session["stages"]]
        self.assertIn(stages[0], ("dhcp-offer", "ipxe-dhcp"), f"{title}: {stages}")
        first, second = (
            ("initrd", "kernel") if scenario.name == "uboot-pxe" else ("kernel", "initrd")
        )
        self.assertLess(stages.index(first), stages.index(second), f"{title}: {stages}")
        self.assertEqual(times, sorted(times), f"{title}: {session['stages']}")
        self.assertTrue(all(item["seconds"] >= 0 for item in session["stages"]))

    def _session(self, mac: str, wanted: Any, timeout: float = 30.0) -> dict[str, Any]:
        """The machine's newest session once ``wanted(session)`` holds (polled)."""
        return self._sessions(mac, lambda found: bool(found) and wanted(found[0]), timeout)[0]

    def _sessions(self, mac: str, wanted: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The machine's sessions, newest first, once ``wanted(sessions)`` holds (polled: the
        server writes them about once a second)."""
        assert self.server.config_path is not None
        argv = [
            str(PXETWIST), "sessions", "--config", str(self.server.config_path),
            "--mac", mac, "--json",
        ]  # fmt: skip
        deadline = time.monotonic() + timeout
        sessions: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if done.returncode == 0:
                sessions = json.loads(done.stdout)
                if wanted(sessions):
                    return sessions
            time.sleep(1.0)
        self.fail(f"no such sessions for {mac} after {timeout:g}s: {sessions}")

    def refuse(self, scenario: Scenario) -> Any:
        """The firmware refused what pxetwist served: pxetwist served the NBP whole, the program
        never ran (iPXE would have asked for its script with user class iPXE), and pxetwist's
        boot session says so once the firmware starts over with its next boot option."""
        vm = super().refuse(scenario)
        mac = _mac_of(self.server)
        session = self._failed_session(mac)
        vm.stop()
        self.assertEqual(session["stage"], "nbp", session)
        self.assertIn("the machine started over", session["hint"])
        self.assertIn("Secure Boot may have refused an unsigned NBP", session["hint"])
        log = self.server.log()
        assert_logged(self, log, EXPECTED_LOG[scenario.name], mac, scenario.title)
        self.assertNotRegex(log, rf"from {re.escape(mac)} on srv0: .*iPXE client")
        self.assertNotRegex(log, rf"GET /boot\.ipxe\S* .* mac {re.escape(mac)}")
        return vm

    def _failed_session(self, mac: str) -> dict[str, Any]:
        """The machine's first failed session (the sessions come newest first)."""
        found = self._sessions(mac, lambda found: any(s["state"] == "failed" for s in found))
        return [s for s in found if s["state"] == "failed"][-1]


def _mac_of(server: PxetwistServer | PxetwistProxy) -> str:
    """The run's MAC (the server learns it in ``start``)."""
    if server.mac is None:
        raise AssertionError("the server was never started")
    return server.mac


class _Booter(BootScenarioTests):
    """The mixin's :meth:`BootScenarioTests.boot` for a test case that does not inherit its
    scenario tests: every TestCase method (fail, addCleanup, assert*) is the case's own."""

    def __init__(self, case: SynchronousTestCase, server: BootServer) -> None:
        self._case = case
        self._server = server

    def __getattr__(self, name: str) -> Any:
        return getattr(self._case, name)

    def make_server(self) -> BootServer:
        return self._server


class PxetwistProxyBootTests(SynchronousTestCase):
    """(f) proxyDHCP: dnsmasq (addresses only) + pxetwist ``dhcp.mode: proxy``."""

    def boot(self, scenario: Scenario) -> None:
        server = PxetwistProxy()
        booter = _Booter(self, server)
        booter.server_binaries = ("dnsmasq",)
        booter.boot(scenario)
        log = server.log()
        mac = _mac_of(server)
        expected = [
            r"DISCOVER from {mac} on srv0: proxy offer",  # boot answers, no address
            *(p for p in EXPECTED_LOG[scenario.name] if "srv0" not in p),
        ]
        if scenario.firmware.is_uefi:  # EDK2 follows the redirect to the boot server
            expected += [
                r"DISCOVER from {mac} on srv0: proxy offer, redirect to port 4011: .*arch 7",
                r"REQUEST from {mac} on srv0: boot server ACK: .*arch 7",
            ]
        assert_logged(self, log, expected, mac, f"{scenario.title} (proxyDHCP)")
        # proxyDHCP never hands out an address: dnsmasq did that
        self.assertRegex(server.dnsmasq_log(), rf"DHCPACK\(br0\) 10\.77\.\S+ {re.escape(mac)}")
        self.assertNotRegex(
            log, r": (offer|ack) 10\.77\.", "pxetwist gave an address in proxy mode"
        )

    def test_f_proxy_bios_ipxe(self) -> None:
        """BIOS iPXE: address from dnsmasq, boot.ipxe URL from pxetwist's proxy offer."""
        self.boot(SCENARIOS["bios-ipxe-http"])

    def test_f_proxy_uefi_pxe(self) -> None:
        """UEFI PXE: proxy offer, then the boot file from pxetwist's port 4011."""
        self.boot(SCENARIOS["uefi-pxe-snponly"])


class PolicyBootTests(SynchronousTestCase):
    """(g) Several VMs at once: each MAC gets its own command line from the static policy."""

    scenario = SCENARIOS["bios-ipxe-http"]
    taps = ("vmtap0", "vmtap1", "vmtap2")
    server_binaries: tuple[str, ...] = ()
    ignore_wait = 30.0  # seconds an ignored VM is watched for a boot that must not happen

    def _lab(self, workdir_name: str) -> tuple[NetLab, BootTree, Path]:
        BootScenarioTests._require(self)  # type: ignore[arg-type]
        remove_stale_labs()
        workdir = BootScenarioTests._workdir(self, workdir_name)  # type: ignore[arg-type]
        tree = build_tree(workdir / "root")
        lab = NetLab(clients=0, taps=list(self.taps))
        lab.up()
        self.addCleanup(lab.down)
        return lab, tree, workdir

    def _boot_vms(
        self,
        machines: Sequence[Mapping[str, Any]],
        defaults: Mapping[str, Any],
        macs: Sequence[str],
        tag: str,
    ) -> tuple[PxetwistServer, list[Vm]]:
        lab, tree, workdir = self._lab(tag)
        server = PxetwistServer(machines=machines, defaults=defaults)
        run = BootRun(self.scenario, macs[0], "unused", lab.srv_ip, server.http_port)
        self.addCleanup(server.stop)
        server.start(lab, tree, run, workdir / "server")
        ra = RouterAdvertiser(lab, duration=self.scenario.timeout + 30).start()
        self.addCleanup(ra.stop)
        vms = []
        for tap, mac in zip(self.taps, macs, strict=False):
            vm = Vm(
                self.scenario.firmware,
                workdir / f"vm-{tap}",
                lab=lab,
                tap=tap,
                mac=mac,
                timeout=self.scenario.timeout,
                watch=WATCH,
            )
            self.addCleanup(vm.stop)
            vms.append(vm.start())
        return server, vms

    def _marker(self, vm: Vm, server: PxetwistServer) -> str:
        try:
            return vm.wait_for(MARKER_RE).group("cmdline")
        except VmError as e:
            self.fail(f"{vm.mac}: {e}\n{server.diagnostics()}")

    @staticmethod
    def _cmdline(token: str) -> str:
        return f"console=ttyS0,115200 panic=-1 pxetwist.token={token}"

    def test_g_per_mac_cmdlines_and_default(self) -> None:
        """Two listed MACs get their own tokens; an unlisted MAC gets ``defaults``."""
        macs = [random_mac() for _ in range(3)]
        tokens = [secrets.token_hex(8) for _ in range(3)]
        machines = [
            machine_entry(macs[0], self._cmdline(tokens[0]), name="alpha"),
            machine_entry(macs[1], self._cmdline(tokens[1]), name="beta"),
        ]
        defaults = {
            "kernel": BootTree.KERNEL,
            "initrd": BootTree.INITRD,
            "cmdline": self._cmdline(tokens[2]),
        }
        server, vms = self._boot_vms(machines, defaults, macs, "policy")
        for vm, token, other in zip(
            vms, tokens, [tokens[1:], tokens[::2], tokens[:2]], strict=True
        ):
            words = self._marker(vm, server).split()
            self.assertIn(f"pxetwist.token={token}", words, vm.mac)
            for wrong in other:
                self.assertNotIn(f"pxetwist.token={wrong}", words, vm.mac)
        log = server.log()
        for mac, why, policy in zip(
            macs,
            ["machine alpha", "machine beta", "by architecture"],
            ["static", "static", "arch"],
            strict=True,
        ):
            assert_logged(
                self,
                log,
                [
                    rf"DISCOVER from {{mac}} on srv0: offer .*{why}.* \[{policy}: boot\]",
                    *_http_script(policy),
                ],
                mac,
                f"policy boot of {mac}",
            )

    def test_g_unlisted_mac_ignored(self) -> None:
        """With ``defaults: {action: ignore}`` an unlisted MAC gets no answer at all, while a
        listed one beside it boots."""
        known, unknown = random_mac(), random_mac()
        token = secrets.token_hex(8)
        machine = machine_entry(known, self._cmdline(token), name="alpha")
        server, (vm_known, vm_unknown) = self._boot_vms(
            [machine], {"action": "ignore"}, [known, unknown], "ignore"
        )
        self.assertIn(f"pxetwist.token={token}", self._marker(vm_known, server).split())
        left = self.ignore_wait - vm_unknown.elapsed
        deadline = time.monotonic() + max(left, 0)
        while time.monotonic() < deadline and vm_unknown.running:
            self.assertIsNone(MARKER_RE.search(vm_unknown.serial()), "ignored VM booted")
            time.sleep(0.5)
        serial = vm_unknown.serial()
        self.assertIsNone(MARKER_RE.search(serial), "the ignored VM booted")
        self.assertNotIn("Linux version", serial)
        log = server.log()
        assert_logged(
            self,
            log,
            [r"DISCOVER from {mac} on srv0: policy: .*action ignore \[arch: ignore\]"],
            unknown,
            "ignoring the unlisted MAC",
        )
        self.assertNotRegex(log, rf"GET .* mac {re.escape(unknown)}")
        self.assertNotRegex(log, rf"from {re.escape(unknown)} on srv0: (offer|ack)")


class BootOnceTests(SynchronousTestCase):
    """Issue 13: a ``boot_once`` QEMU machine netboots once, then gets the local-boot answer
    (no boot file) on its next attempt, also after a server restart."""

    scenario = PolicyBootTests.scenario
    taps = ("vmtap0",)
    server_binaries: tuple[str, ...] = ()
    local_wait = 25.0  # seconds a later attempt is watched: its offer must carry no boot file
    _cmdline = staticmethod(PolicyBootTests._cmdline)

    def _lab(self, workdir_name: str) -> tuple[NetLab, BootTree, Path]:
        return PolicyBootTests._lab(self, workdir_name)  # type: ignore[arg-type]

    def _marker(self, vm: Vm, server: PxetwistServer) -> str:
        return PolicyBootTests._marker(self, vm, server)  # type: ignore[arg-type]

    def _vm(self, lab: NetLab, workdir: Path, mac: str, name: str) -> Vm:
        vm = Vm(
            self.scenario.firmware,
            workdir / name,
            lab=lab,
            tap=self.taps[0],
            mac=mac,
            timeout=self.scenario.timeout,
            watch=WATCH,
        )
        self.addCleanup(vm.stop)
        return vm.start()

    def _local_answer(self, server: PxetwistServer, vm: Vm, mac: str, before: int) -> None:
        """The machine asks again and is told to boot locally: no script, no kernel, no marker."""
        pattern = rf"DISCOVER from {re.escape(mac)} on srv0: offer .*boot once used up"
        deadline = time.monotonic() + self.local_wait
        while time.monotonic() < deadline and not re.search(pattern, server.log()[before:]):
            time.sleep(0.5)
        later = server.log()[before:]
        self.assertRegex(later, pattern, server.diagnostics())
        time.sleep(3.0)  # what a netbooting client would fetch next comes within seconds
        later = server.log()[before:]
        self.assertNotRegex(later, rf"GET /boot/linux .* mac {re.escape(mac)}")
        self.assertIsNone(MARKER_RE.search(vm.serial()), "the used-up machine netbooted again")
        vm.stop()

    def test_boot_once_then_local_also_after_a_restart(self) -> None:
        lab, tree, workdir = self._lab("boot-once")
        mac, token = random_mac(), secrets.token_hex(8)
        entry = {**machine_entry(mac, self._cmdline(token), name="installer"), "boot_once": True}
        server = PxetwistServer(machines=[entry], defaults={})
        run = BootRun(self.scenario, mac, token, lab.srv_ip, server.http_port)
        self.addCleanup(server.stop)
        server.start(lab, tree, run, workdir / "server")
        ra = RouterAdvertiser(lab, duration=self.scenario.timeout + 120).start()
        self.addCleanup(ra.stop)
        first = self._vm(lab, workdir, mac, "vm-1")
        self.assertIn(f"pxetwist.token={token}", self._marker(first, server).split())
        first.stop()
        time.sleep(2.0)  # the used boot reaches sessions.sqlite (written about once a second)
        self._local_answer(server, self._vm(lab, workdir, mac, "vm-2"), mac, len(server.log()))
        server.stop()
        server.start(lab, tree, run, workdir / "server")
        self._local_answer(server, self._vm(lab, workdir, mac, "vm-3"), mac, len(server.log()))

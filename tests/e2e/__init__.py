"""End-to-end firmware boots: the test mixin that boots every scenario of
:mod:`pxetwist.lab.e2e` against whatever server ``make_server()`` returns.

Running the same scenarios against another server is one small module::

    class PxetwistBootTests(BootScenarioTests, SynchronousTestCase):
        def make_server(self) -> BootServer:
            return PxetwistServer()
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pxetwist.lab import NetLab, in_ci, remove_stale_labs, require_binary, require_lab
from pxetwist.lab.e2e import SCENARIOS, TAP, BootRun, BootServer, Scenario, scenario_vm
from pxetwist.lab.e2e.arm64tree import arm64_missing_inputs
from pxetwist.lab.e2e.boottree import MARKER_RE, build_tree, missing_inputs
from pxetwist.lab.e2e.vm import Firmware, RouterAdvertiser, Vm, VmError, random_mac

__all__ = ["BootResult", "BootScenarioTests"]

KEEP_ENV = "PXETWIST_E2E_KEEP"  # set: keep each boot's work dir (logs, serial) in /tmp
TIMINGS_ENV = "PXETWIST_E2E_TIMINGS"  # path: append one JSON line per boot


if TYPE_CHECKING:
    _TestCase = unittest.TestCase
else:
    _TestCase = object


@dataclass
class BootResult:
    scenario: str
    server: str
    marker_s: float  # VM start -> marker line on serial
    total_s: float  # lab up -> VM powered off
    seen: dict[str, float] = field(default_factory=dict)
    ipv6_ra: bool = True
    cmdline: str = ""


class BootScenarioTests(_TestCase):
    """Mixin: one test per scenario; subclasses choose the server with ``make_server``.

    Every boot gets its own lab (namespaces with a unique prefix), tap, MAC, token, work
    dir and time limit; a missing dependency skips locally and fails under ``CI=true``.
    """

    server_binaries: tuple[str, ...] = ()  # extra binaries the server needs (checked first)
    #: A boot is tried again once, from scratch (new lab, server, VM, MAC and token), when the
    #: marker does not come: emulated firmware under TCG on a loaded 2-core machine stalls now
    #: and then (seen once in CI: pxelinux hung after a completed TFTP transfer of the kernel).
    #: A broken server still fails, because it fails both times; the first failure is printed.
    boot_attempts: int = 2

    def make_server(self) -> BootServer:
        raise NotImplementedError

    def _require(self, scenario: Scenario | None = None) -> None:
        firmware = scenario.firmware if scenario is not None else Firmware.UEFI_PXE
        require_lab(self)
        for binary in (firmware.qemu, "timeout", *self.server_binaries):
            require_binary(binary, self)
        inputs = arm64_missing_inputs() if firmware.is_arm64 else missing_inputs()
        missing = inputs + [str(p) for p in firmware.files if not p.exists()]
        if missing:
            why = "e2e boot inputs missing: " + ", ".join(missing)
            if in_ci():
                self.fail(why + " (CI is set: a missing dependency is a failure)")
            raise unittest.SkipTest(why)

    def _workdir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"pxetwist-e2e-{name}-"))
        path.chmod(0o755)  # servers may drop privileges (dnsmasq, nginx workers)
        if not os.environ.get(KEEP_ENV):
            self.addCleanup(shutil.rmtree, path, True)
        return path

    def boot(self, scenario: Scenario, *, ipv6_ra: bool = True) -> BootResult:
        """Boot ``scenario`` against ``make_server()``; assert the token comes back."""
        for attempt in range(1, self.boot_attempts + 1):
            try:
                return self._boot_once(scenario, ipv6_ra=ipv6_ra)
            except self.failureException as error:
                if attempt == self.boot_attempts:
                    raise
                sys.stderr.write(
                    f"\n{scenario.name}: attempt {attempt} failed, trying again from scratch:"
                    f"\n{str(error)[:2000]}\n"
                )
        raise AssertionError("unreachable")

    def _boot_once(self, scenario: Scenario, *, ipv6_ra: bool = True) -> BootResult:
        t0 = time.monotonic()
        server, run, vm = self._start(scenario, ipv6_ra=ipv6_ra)
        try:
            match = vm.wait_for(MARKER_RE)
            marker_s = round(vm.elapsed, 2)
            for proof in scenario.serial_proof:
                vm.wait_for(proof, timeout=1)
        except VmError as e:
            self.fail(f"{scenario.title} [{server.name}]: {e}\n{server.diagnostics()}")
        cmdline = match.group("cmdline")
        self.assertIn(
            f"pxetwist.token={run.token}",
            cmdline.split(),
            f"marker arrived without this run's token: {cmdline!r}",
        )
        rc = vm.wait_exit(15)
        self.assertIsNotNone(rc, "the initrd printed its marker but the VM did not power off")
        result = BootResult(
            scenario=scenario.name,
            server=server.name,
            marker_s=marker_s,
            total_s=round(time.monotonic() - t0, 2),
            seen=dict(vm.seen),
            ipv6_ra=ipv6_ra,
            cmdline=cmdline,
        )
        self._report(result)
        return result

    def refuse(self, scenario: Scenario) -> Vm:
        """Boot a scenario whose firmware must refuse the boot program: its ``refused`` line
        comes on serial and Linux never starts.  Returns the VM, still running (the firmware
        goes on to its next boot option), for more checks; it is stopped at cleanup."""
        assert scenario.refused is not None
        server, _run, vm = self._start(scenario, ipv6_ra=True)
        try:
            vm.wait_for(scenario.refused)
        except VmError as e:
            self.fail(f"{scenario.title} [{server.name}]: {e}\n{server.diagnostics()}")
        serial = vm.serial()
        self.assertIsNone(MARKER_RE.search(serial), "the refused boot reached the initrd")
        self.assertNotIn("Linux version", serial)
        return vm

    def _start(self, scenario: Scenario, *, ipv6_ra: bool) -> tuple[BootServer, BootRun, Vm]:
        """Lab, tree, server and a started VM for one boot of ``scenario``."""
        self._require(scenario)
        remove_stale_labs()
        workdir = self._workdir(scenario.name)
        tree = build_tree(workdir / "root", scenario.platform)
        lab = NetLab(clients=0, taps=[TAP])
        lab.up()
        self.addCleanup(lab.down)
        server = self.make_server()
        run = BootRun(
            scenario=scenario,
            mac=random_mac(),
            token=secrets.token_hex(8),
            server_ip=lab.srv_ip,
            http_port=server.http_port,
        )
        self.addCleanup(server.stop)
        server.start(lab, tree, run, workdir / "server")
        if ipv6_ra:
            ra = RouterAdvertiser(lab, duration=scenario.timeout + 30).start()
            self.addCleanup(ra.stop)
        vm = scenario_vm(scenario, workdir / "vm", lab, run.mac)
        self.addCleanup(vm.stop)
        vm.start()
        return server, run, vm

    @staticmethod
    def _report(result: BootResult) -> None:
        line = json.dumps(result.__dict__, sort_keys=True)
        print(f"E2E-TIMING {line}")
        path = os.environ.get(TIMINGS_ENV)
        if path:
            with open(path, "a") as f:
                f.write(line + "\n")

    # -- the scenarios -------------------------------------------------------------------

    def test_a_bios_ipxe_http(self) -> None:
        """SeaBIOS + iPXE ROM -> iPXE script over HTTP -> kernel + initrd over HTTP."""
        self.boot(SCENARIOS["bios-ipxe-http"])

    def test_a_bios_ipxe_http_without_ra(self) -> None:
        """As (a) with no IPv6 router on the LAN: slower (iPXE waits ~13 s), still boots."""
        self.boot(SCENARIOS["bios-ipxe-http"], ipv6_ra=False)

    def test_b_bios_pxelinux_tftp(self) -> None:
        """SeaBIOS -> pxelinux.0 over TFTP -> pxelinux.cfg/01-<mac> -> kernel over TFTP."""
        self.boot(SCENARIOS["bios-pxelinux-tftp"])

    def test_c_uefi_pxe_snponly(self) -> None:
        """OVMF PXE (arch 7) -> snponly.efi over TFTP -> iPXE script over HTTP."""
        self.boot(SCENARIOS["uefi-pxe-snponly"])

    def test_d_uefi_pxe_shim_grub(self) -> None:
        """OVMF PXE -> signed shim -> signed GRUB -> grub.cfg -> kernel over TFTP."""
        self.boot(SCENARIOS["uefi-pxe-shim-grub"])

    def test_e_uefi_http_boot(self) -> None:
        """OVMF HTTP Boot (arch 16) -> ipxe.efi by URL -> iPXE script over HTTP."""
        self.boot(SCENARIOS["uefi-http-ipxe"])

    def test_h_arm64_uefi_grub(self) -> None:
        """AAVMF PXE (arch 11) -> signed grubnetaa64 -> grub.cfg -> ARM64 kernel over TFTP."""
        self.boot(SCENARIOS["arm64-uefi-grub"])

    def test_i_uboot_pxe(self) -> None:
        """U-Boot: dhcp; pxe get; pxe boot -> pxelinux.cfg/01-<mac> -> kernel over TFTP."""
        self.boot(SCENARIOS["uboot-pxe"])

    def test_j_uboot_bootefi(self) -> None:
        """U-Boot's default boot: EFI PXE (arch 11) -> GRUB by bootefi -> ARM64 kernel."""
        self.boot(SCENARIOS["uboot-bootefi"])

    def test_k_secure_boot_shim_grub(self) -> None:
        """Secure Boot enforced: signed shim -> signed GRUB -> grub.cfg -> signed kernel."""
        self.boot(SCENARIOS["secure-shim-grub"])

    def test_l_secure_boot_refuses_unsigned(self) -> None:
        """Secure Boot enforced: the firmware downloads an unsigned NBP and refuses it."""
        self.refuse(SCENARIOS["secure-unsigned-refused"])

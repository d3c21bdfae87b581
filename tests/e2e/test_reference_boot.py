"""Real firmware boots (QEMU, TCG) against the reference servers dnsmasq + nginx.

Each test builds its own namespace lab, starts the reference servers in it, boots one VM
and waits (at most the scenario's limit, 120 s) for the initrd's marker line carrying this
run's token. Measured VM start -> marker under TCG (3 runs, noisy 2-core machine):
(a) 7.4-9.8 s, (a) without RAs 23.5-28.7 s, (b) 8.8-14.7 s, (c) 14.6-21.6 s,
(d) 16.2-23.0 s, (e) 19.4-22.4 s; the whole module takes about 100-130 s.  The firmware
breadth scenarios (one run, loaded machine): (h) ARM64 UEFI 21.6 s, (i) U-Boot pxe 11.4 s,
(j) U-Boot bootefi 14.2 s, (k) Secure Boot 26.7 s, (l) refused.
Set ``PXETWIST_E2E_TIMINGS=/path/file.jsonl`` to collect timings and
``PXETWIST_E2E_KEEP=1`` to keep serial logs and server logs in /tmp.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import unittest
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import NetLab, in_ci, require_binary
from pxetwist.lab.e2e import SCENARIOS, BootRun, BootServer, ClientClass
from pxetwist.lab.e2e.boottree import MARKER_RE, BootTree, cached_tree, make_initrd, missing_inputs
from pxetwist.lab.e2e.pxetwist_server import pxetwist_config
from pxetwist.lab.e2e.reference import DnsmasqNginx, dnsmasq_config
from pxetwist.lab.e2e.vm import QEMU, Firmware, Vm, router_advertisement
from tests.e2e import BootScenarioTests


class ReferenceBootTests(BootScenarioTests, SynchronousTestCase):
    """Scenarios (a) to (e) and (h) to (l) against dnsmasq (DHCP + TFTP) and nginx (HTTP)."""

    server_binaries = ("dnsmasq", "nginx")

    def make_server(self) -> BootServer:
        return DnsmasqNginx()


def _require_inputs(testcase: unittest.TestCase) -> None:
    missing = missing_inputs()
    if missing:
        why = "boot tree inputs missing: " + ", ".join(missing)
        if in_ci():
            testcase.fail(why)
        raise unittest.SkipTest(why)


class BootTreeTests(SynchronousTestCase):
    """The tree and the initrd, and the initrd on the D-I kernel without any network."""

    def test_tree_is_cached_and_complete(self) -> None:
        _require_inputs(self)
        tree = cached_tree()
        self.assertEqual(cached_tree().root, tree.root)  # second call: cache hit
        for rel in tree.files():
            self.assertTrue(tree.path(rel).is_file(), rel)
        self.assertLess(tree.path(BootTree.INITRD).stat().st_size, 4 << 20)

    def test_initrd_is_reproducible_newc(self) -> None:
        _require_inputs(self)
        a, b = make_initrd(), make_initrd()
        self.assertEqual(a, b)
        archive = gzip.decompress(a)
        self.assertTrue(archive.startswith(b"070701"))
        for name in (b"init\0", b"bin/busybox\0", b"dev/console\0", b"TRAILER!!!\0"):
            self.assertIn(name, archive)
        self.assertNotIn(b"pxetwist.token=", archive)  # the token only comes from servers

    def test_direct_kernel_boot_prints_marker_and_powers_off(self) -> None:
        """QEMU -kernel/-initrd, no NIC at all: isolates the kernel+initrd from the chain."""
        _require_inputs(self)
        require_binary(QEMU, self)
        tree = cached_tree()
        workdir = Path(tempfile.mkdtemp(prefix="pxetwist-e2e-direct-"))
        self.addCleanup(shutil.rmtree, workdir, True)
        append = "console=ttyS0,115200 panic=-1 pxetwist.token=direct0123"
        vm = Vm(
            Firmware.BIOS,
            workdir,
            kernel=(tree.path(BootTree.KERNEL), tree.path(BootTree.INITRD), append),
            timeout=60,
        )
        self.addCleanup(vm.stop)
        vm.start()
        m = vm.wait_for(MARKER_RE)
        self.assertIn("pxetwist.token=direct0123", m.group("cmdline").split())
        self.assertEqual(vm.wait_exit(15), 0)


class ConfigRenderingTests(SynchronousTestCase):
    """Pure checks of what the scenarios ask of a server (no lab, no QEMU)."""

    def run_for(self, name: str) -> BootRun:
        return BootRun(SCENARIOS[name], "52:54:00:AB:cd:01", "feedc0de", "10.77.0.1", 8080)

    def test_pxelinux_config_is_per_mac(self) -> None:
        files = self.run_for("bios-pxelinux-tftp").config_files()
        self.assertEqual(list(files), ["pxelinux.cfg/01-52-54-00-ab-cd-01"])
        cfg = files["pxelinux.cfg/01-52-54-00-ab-cd-01"]
        self.assertIn("APPEND console=ttyS0,115200 panic=-1 pxetwist.token=feedc0de", cfg)

    def test_ipxe_script_names_initrd_for_efi_stub(self) -> None:
        script = self.run_for("uefi-pxe-snponly").config_files()["boot.ipxe"]
        self.assertIn("kernel http://10.77.0.1:8080/boot/linux initrd=initrd.img ", script)
        self.assertIn("initrd http://10.77.0.1:8080/boot/initrd.img", script)

    def test_grub_config_path(self) -> None:
        cfg = self.run_for("uefi-pxe-shim-grub").config_files()["grub/grub.cfg"]
        self.assertIn("linux /boot/linux console=ttyS0,115200", cfg)

    def test_boot_files(self) -> None:
        run = self.run_for("uefi-http-ipxe")
        self.assertEqual(run.boot_file(ClientClass.EFI_HTTP), "http://10.77.0.1:8080/ipxe.efi")
        self.assertIsNone(run.boot_file(ClientClass.EFI_PXE))

    def test_dnsmasq_lines(self) -> None:
        lab = NetLab()  # never brought up: only its subnet is used
        conf = dnsmasq_config(lab, self.run_for("uefi-http-ipxe"), Path("/r"), Path("/w"))
        self.assertIn("dhcp-boot=tag:ipxe,http://10.77.0.1:8080/boot.ipxe\n", conf)
        self.assertIn("dhcp-boot=tag:!ipxe,tag:efihttp,http://10.77.0.1:8080/ipxe.efi\n", conf)
        self.assertIn("dhcp-range=10.77.0.100,10.77.0.250,255.255.0.0,1h\n", conf)

    def test_uboot_scenario_configs(self) -> None:
        """(i): the reference gets a hand-written config with paths; pxetwist's machine names
        its kernel and initrd as tftp:// URLs and its boot table has no U-Boot program."""
        run = self.run_for("uboot-pxe")
        cfg = run.config_files()["pxelinux.cfg/01-52-54-00-ab-cd-01"]
        self.assertIn("  KERNEL arm64/linux\n", cfg)
        self.assertIn("APPEND console=ttyAMA0 panic=-1 pxetwist.token=feedc0de", cfg)
        lab = NetLab()
        config = pxetwist_config(lab, run, Path("/r"), Path("/w"))
        (machine,) = config["machines"]
        self.assertEqual(machine["kernel"], "tftp://{server}/arm64/linux")
        self.assertEqual(machine["initrd"], "tftp://{server}/arm64/initrd.img")
        self.assertNotIn("uboot-arm64", config["boot"])
        conf = dnsmasq_config(lab, run, Path("/r"), Path("/w"))
        self.assertIn("dhcp-match=set:uboot,option:client-arch,22\n", conf)
        self.assertNotIn("dhcp-boot=tag:!ipxe,tag:uboot", conf)
        arm64 = dnsmasq_config(lab, self.run_for("arm64-uefi-grub"), Path("/r"), Path("/w"))
        self.assertIn("dhcp-boot=tag:!ipxe,tag:efiarm64,grubaa64.efi\n", arm64)

    def test_vm_command_lines(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="pxetwist-e2e-argv-"))
        self.addCleanup(shutil.rmtree, workdir, True)
        lab = NetLab()
        secure = " ".join(Vm(Firmware.UEFI_SECURE, workdir, lab=lab).argv())
        self.assertIn("-machine q35,smm=on", secure)
        self.assertIn("driver=cfi.pflash01,property=secure,value=on", secure)
        self.assertIn("OVMF_CODE_4M.ms.fd", secure)
        uboot = Vm(
            Firmware.UBOOT_ARM64, workdir, lab=lab, mac="52:54:00:00:00:01",
            console_script=(("=> ", "dhcp\r"),),
        ).argv()  # fmt: skip
        self.assertEqual(uboot[3], "qemu-system-aarch64")
        self.assertIn("virtio-net-device,netdev=n0,mac=52:54:00:00:00:01", uboot)
        self.assertIn("chardev:ser0", uboot)
        aavmf = " ".join(Vm(Firmware.UEFI_ARM64, workdir, lab=lab).argv())
        self.assertIn("AAVMF_CODE.fd", aavmf)
        self.assertIn("romfile=", aavmf)

    def test_router_advertisement_frame(self) -> None:
        frame = router_advertisement(bytes.fromhex("020000000001"))
        self.assertEqual(frame[:6], bytes.fromhex("333300000001"))
        self.assertEqual(frame[14 + 7], 255)  # hop limit
        self.assertEqual(frame[14 + 40], 134)  # ICMPv6 router advertisement
        self.assertEqual(frame[14 + 8 : 14 + 10], b"\xfe\x80")  # link-local source
        self.assertEqual(frame[14 + 40 + 5], 0)  # M=0, O=0
        self.assertEqual(frame[14 + 40 + 6 : 14 + 40 + 8], b"\0\0")  # router lifetime 0

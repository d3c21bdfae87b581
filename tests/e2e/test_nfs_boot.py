"""A diskless BIOS machine boots through pxetwist with its root on its own NFS export.

``twistd -n pxe`` in the lab's server namespace is the authoritative DHCP server, serves the
kernel and initrd over HTTP, renders the iPXE script from the machine's ``cmdline`` (where
``{nfs}`` and ``{nfs2}`` become ``SERVER:/PSEUDO``) and runs NFS-Ganesha.  Machine 1 (SeaBIOS,
QEMU's iPXE ROM, TCG) gets its lease, and with it its exports; its initrd
(:mod:`pxetwist.lab.e2e.nfsroot`) mounts the read-write export and switches root to it, and
PID 1 from the export proves:

* it is PID 1 and the root is the NFSv4 export (``NFSROOT-PID1 pid=1 root=[nfs4 ...]``);
* a write lands on the server, in the machine's directory under ``nfs.root``;
* the read-only export can be read and cannot be written.

Machine 2 boots at the same time with machine 1's two ``SERVER:/PSEUDO`` on its command line and
tries to mount them: both are refused (Ganesha's CLIENT blocks name machine 1's address only).

Measured under TCG on the 2 shared cores: VM start -> PID 1 from the export done in 11.4 s
on a quiet machine, 30 s on a busy one (both VMs at once).  The test takes 18-40 s, plus about
20 s once to build the initrd (and the one-time ``apt-get download`` of the kernel package,
70 MB, kept in the boot-tree cache).
"""

from __future__ import annotations

import re
import secrets
import shutil
import time

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import NetLab, remove_stale_labs
from pxetwist.lab.e2e import WATCH
from pxetwist.lab.e2e.boottree import DI_KERNEL, MissingInput
from pxetwist.lab.e2e.nfsroot import nfsroot_initrd, populate_root
from pxetwist.lab.e2e.vm import Firmware, RouterAdvertiser, Vm, VmError, random_mac
from pxetwist.lab.nfs import NfsLabServer
from pxetwist.nfs.paths import load_or_create_key, pseudo_path
from pxetwist.policy.values import MacAddress
from tests.e2e import BootScenarioTests

VM_TIMEOUT = 300.0  # TCG on two shared cores: a boot normally takes 15-40 s


class DisklessBootTests(SynchronousTestCase):
    server_binaries = ("ganesha.nfsd", "rpcbind", "dbus-daemon", "unshare", "nsenter", "dpkg-deb")

    def setUp(self) -> None:
        BootScenarioTests._require(self)  # type: ignore[arg-type]
        remove_stale_labs()
        self.workdir = BootScenarioTests._workdir(self, "nfs")  # type: ignore[arg-type]

    def test_diskless_machine_root_on_its_export(self) -> None:
        try:
            initrd = nfsroot_initrd(DI_KERNEL)
        except MissingInput as error:
            self.fail(f"cannot build the NFS-root initrd: {error}")
        mac1, mac2 = random_mac(), random_mac()
        dashed = MacAddress.parse(mac1).dashed
        token = secrets.token_hex(8)
        lab = NetLab(clients=0, taps=["vmtap0", "vmtap1"]).up()
        self.addCleanup(lab.down)

        http = self.workdir / "http"
        (http / "boot").mkdir(parents=True)
        shutil.copyfile(DI_KERNEL, http / "boot" / "linux")
        shutil.copyfile(initrd, http / "boot" / "nfsroot.img")
        data = self.workdir / "data"
        # made here, before the server starts, so the test knows machine 1's pseudo paths
        key = load_or_create_key(data / "nfs" / "pseudo.key")
        root_pseudo = pseudo_path(key, MacAddress.parse(mac1), f"hosts/{dashed}")
        base_pseudo = pseudo_path(key, MacAddress.parse(mac1), "images/base")
        server_ip = lab.srv_ip
        net = lab.subnet
        config = {
            "data_dir": str(data),
            "dhcp": {
                "mode": "authoritative",
                "raspberry_pi": False,
                "subnets": [
                    {
                        "network": str(net),
                        "range": [str(net.network_address + 100), str(net.network_address + 250)],
                        "lease_time": "1h",
                    }
                ],
            },
            "http": {"enabled": True, "root": str(http), "port": 8080},
            "nfs": {"versions": ["4.1", "3"]},
            "machines": [
                {
                    "mac": mac1,
                    "name": "diskless1",
                    "kernel": "boot/linux",
                    "initrd": "boot/nfsroot.img",
                    "nfs": [
                        {"path": "hosts/{mac}", "access": "rw"},
                        {"path": "images/base", "access": "ro"},
                    ],
                    "cmdline": "console=ttyS0,115200 panic=-1 nfsroot={nfs} "
                    f"pxetwist.ro={{nfs2}} pxetwist.token={token}",
                },
                {
                    "mac": mac2,
                    "name": "intruder",
                    "kernel": "boot/linux",
                    "initrd": "boot/nfsroot.img",
                    "cmdline": "console=ttyS0,115200 panic=-1 "
                    f"pxetwist.probe={server_ip}:{root_pseudo} "
                    f"pxetwist.probe={server_ip}:{base_pseudo}",
                },
            ],
        }
        server = NfsLabServer(lab, config, self.workdir)
        populate_root(server.root / "hosts" / dashed)
        (server.root / "images" / "base").mkdir(parents=True)
        (server.root / "images" / "base" / "release").write_text("base image 7\n")
        self.addCleanup(server.stop)
        server.start()
        server.wait_log("nfs: Ganesha is up", timeout=90)
        lab.wait_port("srv", "tcp", 8080, 15)
        lab.wait_port("srv", "udp", 67, 15)
        ra = RouterAdvertiser(lab, duration=VM_TIMEOUT + 30).start()
        self.addCleanup(ra.stop)

        vms = []
        for tap, mac in (("vmtap0", mac1), ("vmtap1", mac2)):
            vm = Vm(
                Firmware.BIOS,
                self.workdir / f"vm-{tap}",
                lab=lab,
                tap=tap,
                mac=mac,
                timeout=VM_TIMEOUT,
                watch={**WATCH, "pid1": "NFSROOT-PID1"},
            )
            self.addCleanup(vm.stop)
            vms.append(vm.start())
        machine, intruder = vms
        started = time.monotonic()

        try:
            machine.wait_for("NFSROOT-DONE")
        except VmError as error:
            self.fail(f"machine 1 did not finish: {error}\n{server.tail(60)}")
        serial = machine.serial()
        pid1 = re.search(r"NFSROOT-PID1 pid=(\d+) root=\[(\S+) (\S+)\]", serial)
        assert pid1 is not None, serial[-3000:]
        self.assertEqual(pid1.group(1), "1", "PID 1 is the export's /sbin/init")
        self.assertEqual(pid1.group(2), "nfs4")
        self.assertEqual(pid1.group(3), f"{server_ip}:{root_pseudo}")
        self.assertIn("NFSROOT-WRITE ok", serial)
        written = server.root / "hosts" / dashed / "written-by-machine"
        self.assertEqual(written.read_text().strip(), token, "the write landed on the server")
        self.assertIn("NFSROOT-RO-READ [base image 7]", serial)
        self.assertIn("NFSROOT-RO-WRITE refused", serial)
        self.assertFalse((server.root / "images" / "base" / "written-by-machine").exists())
        seconds = time.monotonic() - started

        try:
            intruder.wait_for(r"NFSROOT-INITRD probe done")
        except VmError as error:
            self.fail(f"machine 2 did not finish its probe: {error}\n{server.tail(60)}")
        probe = intruder.serial()
        for pseudo in (root_pseudo, base_pseudo):
            self.assertIn(f"NFSPROBE-REFUSED {server_ip}:{pseudo}", probe)
            self.assertNotIn(f"NFSPROBE-MOUNTED {server_ip}:{pseudo}", probe)

        server.wait_log(f"nfs: {mac1} at ", timeout=30)  # the nfs-mount event
        log = server.log_text()
        self.assertRegex(log, rf"nfs: granted hosts/{dashed} \(rw\) to {mac1} at 10\.77\.")
        self.assertRegex(log, rf"nfs: granted images/base \(ro\) to {mac1} at 10\.77\.")
        self.assertNotRegex(log, rf"nfs: granted \S+ \(r[ow]\) to {mac2}")
        self.assertRegex(log, rf"nfs: {mac1} at 10\.77\.\S+ is using its exports \(.*NFSv41")
        self.assertNotIn(f"nfs: {mac2} at", log)
        print(f"\ndiskless boot: VM start -> PID 1 from NFS done in {seconds:.1f} s")

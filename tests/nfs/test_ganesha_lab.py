"""The NFS export wrapper with a real NFS-Ganesha, in a network namespace lab.

``twistd -n pxe`` runs in the lab's server namespace with ``nfs.enabled``; it starts and
supervises Ganesha (with its private dbus-daemon and rpcbind) itself.  libnfs's user-space
clients (``nfs-ls``, ``nfs-cat``, ``nfs-cp``) run in client namespaces, each with its own
address, so what Ganesha sees is the address a machine really has:

* a machine with a reserved address mounts its exports (NFSv3 and v4, by the opaque pseudo
  path), reads the read-only one, writes its read-write one as root (the file lands on the
  server, owned by root), and cannot write the read-only one; any other address is refused;
* a Ganesha killed with SIGKILL is started again by pxetwist, with the exports;
* in authoritative mode a machine's export exists while its DHCP lease does (busybox udhcpc)
  and is gone once the lease is released;
* stopping pxetwist stops every process it started.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import NetLab, require_binary, require_lab
from pxetwist.lab.nfs import NfsLabServer, nfs_cat, nfs_ls, nfs_put, nfs_url, process_names

MAC = "52:54:00:77:00:10"
DASHED = "52-54-00-77-00-10"
MACHINE_IP = "10.77.0.10"
OTHER_IP = "10.77.0.20"
VERSIONS = ["4.0", "4.1", "3"]  # libnfs speaks NFSv4.0; the kernel client of the e2e test 4.1
TOOLS = ("ganesha.nfsd", "rpcbind", "dbus-daemon", "nfs-ls", "nfs-cat", "nfs-cp", "unshare")


def _require(case: SynchronousTestCase | None = None) -> None:
    require_lab(case)
    for tool in TOOLS:
        require_binary(tool, case)


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


class ReservedMachineTests(SynchronousTestCase):
    """A machine with a reservation and two exports; each test gets its own lab and server."""

    def setUp(self) -> None:
        _require(self)
        self.lab = NetLab(clients=2).up()
        self.addCleanup(self.lab.down)
        self.lab.run("c1", ["ip", "addr", "add", f"{MACHINE_IP}/16", "dev", "eth0"], check=True)
        self.lab.run("c2", ["ip", "addr", "add", f"{OTHER_IP}/16", "dev", "eth0"], check=True)
        self.server = NfsLabServer(
            self.lab,
            {
                "nfs": {"versions": VERSIONS},
                "machines": [
                    {
                        "mac": MAC,
                        "address": MACHINE_IP,
                        "nfs": [
                            {"path": "images/base", "access": "ro"},
                            {"path": "hosts/{mac}", "access": "rw", "create": True},
                        ],
                    }
                ],
            },
        )
        self.addCleanup(shutil.rmtree, self.server.workdir, True)
        base = self.server.root / "images" / "base"
        base.mkdir(parents=True)
        (base / "release").write_text("base image 1\n")
        (base / "shadow").write_text("root only\n")
        (base / "shadow").chmod(0o600)
        self.addCleanup(self.server.stop)
        self.server.start()
        self.server.wait_log("nfs: granted hosts/", timeout=90)
        self.server.wait_log("nfs: granted images/base", timeout=30)

    def url(self, relative: str, path: str = "", version: str = "3") -> str:
        return nfs_url(self.lab.srv_ip, self.server.pseudo(MAC, relative), path, version)

    def test_machine_mounts_its_exports(self) -> None:
        made = self.server.root / "hosts" / DASHED
        self.assertTrue(made.is_dir(), "create: true makes the machine's directory")
        for version in ("3", "4"):
            listing = nfs_ls(self.lab, "c1", self.url("images/base", version=version))
            self.assertEqual(listing.returncode, 0, listing.stderr)
            self.assertIn("release", listing.stdout)
            read = nfs_cat(self.lab, "c1", self.url("images/base", "release", version))
            self.assertEqual(read.stdout, "base image 1\n", read.stderr)
            rw = nfs_ls(
                self.lab, "c1", self.url("hosts/{mac}".replace("{mac}", DASHED), version=version)
            )
            self.assertEqual(rw.returncode, 0, rw.stderr)

        # the machine's root reads root-only files on its read-only export (no root squash)
        secret = nfs_cat(self.lab, "c1", self.url("images/base", "shadow"))
        self.assertEqual(secret.stdout, "root only\n", secret.stderr)
        # Ganesha now lists the machine's address among its clients: an nfs-mount event
        self.server.wait_log(f"nfs: {MAC} at {MACHINE_IP} is using its exports", timeout=30)

    def test_other_address_refused(self) -> None:
        for relative in ("images/base", f"hosts/{DASHED}"):
            for version in ("3", "4"):
                listing = nfs_ls(self.lab, "c2", self.url(relative, version=version))
                self.assertNotEqual(listing.returncode, 0, listing.stdout)
                self.assertRegex(
                    listing.stdout + listing.stderr, "NFS4ERR_NOENT|MNT3ERR_ACCES|ACCES|NOENT"
                )
        # and the pseudo root shows it nothing of the machine's exports
        root = nfs_ls(self.lab, "c2", f"nfs://{self.lab.srv_ip}/?version=4")
        self.assertNotIn(self.server.pseudo(MAC, "images/base").strip("/"), root.stdout)

    def test_rw_write_lands_and_ro_refuses(self) -> None:
        local = Path(tempfile.mkdtemp(prefix="pxt-nfs-put-")) / "note"
        self.addCleanup(shutil.rmtree, local.parent, True)
        local.write_text("written by the machine\n")
        put = nfs_put(self.lab, "c1", local, self.url(f"hosts/{DASHED}", "note"))
        self.assertEqual(put.returncode, 0, put.stdout + put.stderr)
        landed = self.server.root / "hosts" / DASHED / "note"
        self.assertEqual(landed.read_text(), "written by the machine\n")
        self.assertEqual(os.stat(landed).st_uid, 0, "rw: the machine's root is not squashed")
        refused = nfs_put(self.lab, "c1", local, self.url("images/base", "note"))
        self.assertNotEqual(refused.returncode, 0, refused.stdout)
        self.assertFalse((self.server.root / "images" / "base" / "note").exists())

    def test_killed_ganesha_restarted_with_exports(self) -> None:
        before = self.server.ganesha_pid()
        assert before is not None, self.server.tail()
        os.kill(before, signal.SIGKILL)
        _wait(
            lambda: (pid := self.server.ganesha_pid()) is not None and pid != before,
            60,
            "a new Ganesha",
        )
        _wait(
            lambda: nfs_ls(self.lab, "c1", self.url("images/base")).returncode == 0,
            60,
            "the export back after the restart",
        )
        self.assertEqual(self.server.log_text().count("Ganesha starts with 2 exports"), 2)
        self.assertNotEqual(nfs_ls(self.lab, "c2", self.url("images/base")).returncode, 0)


class LeaseLifecycleTests(SynchronousTestCase):
    """Authoritative DHCP: the export follows the lease; stopping pxetwist stops Ganesha."""

    def setUp(self) -> None:
        _require(self)
        require_binary("busybox", self)
        self.lab = NetLab(clients=1).up()
        self.addCleanup(self.lab.down)
        self.server = NfsLabServer(
            self.lab,
            {
                "dhcp": {
                    "mode": "authoritative",
                    "subnets": [{"network": "10.77.0.0/16", "range": ["10.77.1.10", "10.77.1.50"]}],
                },
                "nfs": {"versions": VERSIONS},
                "defaults": {"nfs": [{"path": "hosts/{mac}", "access": "rw", "create": True}]},
            },
        )
        self.addCleanup(shutil.rmtree, self.server.workdir, True)
        self.addCleanup(self.server.stop)

    def dhcp(self, *extra: str) -> str:
        """busybox udhcpc in c1: get a lease (and with -R release it on exit); the address."""
        result = self.lab.run(
            "c1",
            [
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-n",
                "-q",
                "-f",
                "-t",
                "5",
                "-T",
                "2",
                "-s",
                "/bin/true",
                *extra,
            ],
            timeout=60,
        )
        for line in (result.stdout + result.stderr).splitlines():
            if "obtained" in line and "lease of" in line:
                return str(line.split("lease of", 1)[1].split()[0])
        raise AssertionError(f"no lease: {result.stdout}{result.stderr}\n{self.server.tail()}")

    def release(self) -> str:
        """Run udhcpc in the background until it holds the lease, then stop it: it releases."""
        proc = self.lab.spawn(
            "c1",
            [
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-f",
                "-R",
                "-t",
                "5",
                "-T",
                "2",
                "-s",
                "/bin/true",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                line = proc.stdout.readline() if ready else ""
                if "lease of" in line and "obtained" in line:
                    return str(line.split("lease of", 1)[1].split()[0])
                if proc.poll() is not None:
                    break
            raise AssertionError("udhcpc got no lease to release")
        finally:
            NetLab.stop(proc)

    def test_export_follows_the_lease(self) -> None:
        mac = self.lab.run("c1", ["cat", "/sys/class/net/eth0/address"], check=True).stdout.strip()
        dashed = mac.replace(":", "-")
        self.server.start()
        self.server.wait_log("nfs: Ganesha is up", timeout=90)
        address = self.dhcp()
        self.lab.run("c1", ["ip", "addr", "add", f"{address}/16", "dev", "eth0"], check=True)
        self.server.wait_log("nfs: granted hosts/", timeout=30)
        url = nfs_url(self.lab.srv_ip, self.server.pseudo(mac, f"hosts/{dashed}"))
        listing = nfs_ls(self.lab, "c1", url)
        self.assertEqual(listing.returncode, 0, listing.stderr + self.server.tail())
        self.assertIn(f"{address}", self.server.log_text())
        # stopping pxetwist stops Ganesha, rpcbind and the dbus-daemon it started ...
        names = set(process_names(self.lab, "srv").values())
        self.assertTrue({"ganesha.nfsd", "rpcbind", "dbus-daemon"} <= names, names)
        self.assertIn(self.server.stop(), (0, -signal.SIGTERM))  # twistd re-raises SIGTERM
        self.assertEqual(process_names(self.lab, "srv"), {})
        self.assertNotEqual(nfs_ls(self.lab, "c1", url).returncode, 0)
        # ... and a restarted pxetwist grants the export again from the stored lease
        self.server.start()
        self.server.wait_log("nfs: granted hosts/", timeout=90, count=2)
        listing = nfs_ls(self.lab, "c1", url)
        self.assertEqual(listing.returncode, 0, listing.stderr + self.server.tail())
        # the same client asks again, then releases the lease as it stops (udhcpc -R, SIGTERM)
        self.assertEqual(self.release(), address)
        self.server.wait_log("nfs: withdrew hosts/", timeout=30)
        _wait(lambda: nfs_ls(self.lab, "c1", url).returncode != 0, 15, "the export gone")
        self.assertIn(self.server.stop(), (0, -signal.SIGTERM))
        self.assertEqual(process_names(self.lab, "srv"), {})


class OperatorGaneshaTests(SynchronousTestCase):
    """``nfs.ganesha.dbus``: pxetwist drives a Ganesha it did not start, over that Ganesha's bus.

    The "operator's" Ganesha here is one a first pxetwist runs (with its own export in ids
    1000-1999); a second pxetwist with ``managed: false`` and ids 2000-2999 adds its machine's
    export to it, leaves the first one's alone, and starts no process of its own.
    """

    def test_exports_on_an_operators_ganesha(self) -> None:
        _require(self)
        lab = NetLab(clients=2).up()
        self.addCleanup(lab.down)
        lab.run("c1", ["ip", "addr", "add", f"{MACHINE_IP}/16", "dev", "eth0"], check=True)
        lab.run("c2", ["ip", "addr", "add", f"{OTHER_IP}/16", "dev", "eth0"], check=True)
        other_mac = "52:54:00:77:00:20"
        operator = NfsLabServer(
            lab,
            {
                "nfs": {"versions": VERSIONS, "ganesha": {"export_ids": [1000, 1999]}},
                "machines": [
                    {"mac": other_mac, "address": OTHER_IP, "nfs": [{"path": "a", "create": True}]}
                ],
            },
        )
        self.addCleanup(shutil.rmtree, operator.workdir, True)
        self.addCleanup(operator.stop)
        operator.start()
        operator.wait_log("nfs: granted a", timeout=90)
        bus = f"unix:path={operator.ganesha_dir / 'bus.sock'}"
        driver = NfsLabServer(
            lab,
            {
                "nfs": {
                    "versions": VERSIONS,
                    "ganesha": {"managed": False, "dbus": bus, "export_ids": [2000, 2999]},
                },
                "machines": [
                    {"mac": MAC, "address": MACHINE_IP, "nfs": [{"path": "b", "create": True}]}
                ],
            },
        )
        self.addCleanup(shutil.rmtree, driver.workdir, True)
        self.addCleanup(driver.stop)
        # the driver exports a directory of its own root on the operator's Ganesha
        before = set(process_names(lab, "srv"))
        driver.start()
        driver.wait_log("nfs: granted b", timeout=60)
        mine = nfs_url(lab.srv_ip, driver.pseudo(MAC, "b"))
        theirs = nfs_url(lab.srv_ip, operator.pseudo(other_mac, "a"))
        self.assertEqual(nfs_ls(lab, "c1", mine).returncode, 0, driver.tail())
        self.assertNotEqual(nfs_ls(lab, "c2", mine).returncode, 0)
        self.assertEqual(nfs_ls(lab, "c2", theirs).returncode, 0, operator.tail())
        self.assertIn("Export_Id = 2000;", (driver.data_dir / "nfs/exports/2000.conf").read_text())
        # it started nothing: the only new process in the namespace is its own twistd
        started = set(process_names(lab, "srv")) - before
        assert driver.proc is not None
        self.assertEqual(started, {driver.proc.pid})
        driver.stop()
        self.assertEqual(nfs_ls(lab, "c2", theirs).returncode, 0, "the operator's export stays")


class ProxyModeTests(SynchronousTestCase):
    """proxyDHCP mode: the address HTTP saw for a MAC is the machine's, until another MAC shows
    up at it (a reused address never inherits the first machine's exports)."""

    def test_http_sighting_grants_and_a_new_mac_takes_over(self) -> None:
        _require(self)
        require_binary("curl", self)
        lab = NetLab(clients=1).up()
        self.addCleanup(lab.down)
        lab.run("c1", ["ip", "addr", "add", f"{MACHINE_IP}/16", "dev", "eth0"], check=True)
        other_mac = "52:54:00:77:00:21"
        server = NfsLabServer(
            lab,
            {
                "dhcp": {"mode": "proxy"},
                "http": {"enabled": True, "root": "http", "port": 8080},
                "nfs": {"versions": VERSIONS},
                "defaults": {
                    "kernel": "linux",
                    "nfs": [{"path": "hosts/{mac}", "access": "rw", "create": True}],
                    "cmdline": "root=/dev/nfs nfsroot={nfs}",
                },
            },
        )
        self.addCleanup(shutil.rmtree, server.workdir, True)
        self.addCleanup(server.stop)
        (server.workdir / "http").mkdir()
        (server.workdir / "http" / "linux").write_bytes(b"kernel")
        server.config["http"]["root"] = str(server.workdir / "http")
        server.config_path.write_text(yaml.safe_dump(server.config, sort_keys=False))
        server.start()
        server.wait_log("nfs: Ganesha is up", timeout=90)
        lab.wait_port("srv", "tcp", 8080, 15)

        def fetch(mac: str) -> str:
            url = f"http://{lab.srv_ip}:8080/boot.ipxe?mac={mac}"
            result = lab.run("c1", ["curl", "-sS", "--max-time", "20", url], timeout=30)
            self.assertEqual(result.returncode, 0, result.stderr)
            return str(result.stdout)

        script = fetch(MAC)
        mine = server.pseudo(MAC, f"hosts/{DASHED}")
        self.assertIn(f"nfsroot={lab.srv_ip}:{mine}", script)  # {nfs}: our address, its path
        server.wait_log(f"nfs: granted hosts/{DASHED} (rw) to {MAC} at {MACHINE_IP}", 30)
        url = nfs_url(lab.srv_ip, mine)
        self.assertEqual(nfs_ls(lab, "c1", url).returncode, 0, server.tail())
        # another machine now has that address: the first one's export is withdrawn
        fetch(other_mac)
        server.wait_log(f"nfs: withdrew hosts/{DASHED} (rw) from {MAC} at {MACHINE_IP}", 30)
        _wait(lambda: nfs_ls(lab, "c1", url).returncode != 0, 15, "the first export gone")
        other = nfs_url(lab.srv_ip, server.pseudo(other_mac, "hosts/52-54-00-77-00-21"))
        _wait(lambda: nfs_ls(lab, "c1", other).returncode == 0, 15, "the new machine's export")

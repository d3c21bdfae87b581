"""Boot sessions and boot once with real sockets: ``twistd -n pxe`` in a lab, scripted clients.

The server (authoritative DHCP, TFTP, HTTP) runs in the lab's server namespace; each machine
is a bare client namespace that plays a boot step by step with real clients: the scripted PXE
ROM of :mod:`tests.dhcp.pxeclient` for DHCP (a BIOS ROM, then iPXE), curl for the NBP over
TFTP and for the iPXE script, kernel and initrd over HTTP, and curl again for the booted OS's
call-back (``/boot/done``).  What ``pxetwist sessions --json`` prints is then checked: every
stage in boot order with its time, a machine that stops after its NBP shown stuck there with
the matching hint, and boot once: after one complete boot the machine's next DISCOVER gets an
offer with no boot file, also after a restart, until ``pxetwist machines reset-boot``; a boot
cut off after the NBP leaves it armed.

All traffic stays inside the namespaces these tests create.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp.options import OptionCode
from pxetwist.dhcp.packet import decode
from pxetwist.lab import NetLab, require_binary, require_lab

VENV_BIN = Path(sys.executable).parent
TWISTD = VENV_BIN / "twistd"
PXETWIST = VENV_BIN / "pxetwist"
PXECLIENT = Path(__file__).resolve().parents[1] / "dhcp" / "pxeclient.py"
HTTP_PORT = 8080
STUCK_AFTER = 6  # seconds: sessions.stuck_after of the lab's server
STEP_TIMEOUT = 60.0  # generous: the machine may be busy with other helpers' tests


class Machine:
    """One bare client namespace playing a network boot, step by step."""

    def __init__(self, lab: NetLab, role: str, server: str) -> None:
        self.lab = lab
        self.role = role
        self.server = server
        self.address: str | None = None
        self.mac = lab.run(role, ["cat", "/sys/class/net/eth0/address"], check=True).stdout.strip()

    def dhcp(self, kind: str = "bios") -> dict[str, Any]:
        """A DORA as ``kind``; the address is left configured on eth0 for the next steps."""
        self.forget_address()
        result = self.lab.run(
            self.role,
            [sys.executable, str(PXECLIENT), "--kind", kind, "--dora", "--window", "1.5"],
            timeout=STEP_TIMEOUT,
            check=True,
        )
        output: dict[str, Any] = json.loads(result.stdout)
        acked = [r for r in output["replies"] if r["step"] == "request"]
        if not acked:
            raise AssertionError(f"no ACK for {self.role} ({kind}): {output}")
        self.address = decode(bytes.fromhex(acked[0]["hex"])).yiaddr.exploded
        self.lab.run(
            self.role, ["ip", "addr", "add", f"{self.address}/16", "dev", "eth0"], check=True
        )
        return output

    def forget_address(self) -> None:
        if self.address is not None:
            self.lab.run(self.role, ["ip", "addr", "flush", "dev", "eth0"], check=True)
            self.address = None

    def fetch(self, url: str) -> bytes:
        out = Path(tempfile.mkdtemp(prefix="pxt-fetch-")) / "body"
        try:
            self.lab.run(
                self.role,
                ["curl", "-sS", "-f", "--max-time", "30", "-o", str(out), url],
                timeout=STEP_TIMEOUT,
                check=True,
            )
            return out.read_bytes()
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)

    def tftp(self, name: str) -> bytes:
        return self.fetch(f"tftp://{self.server}/{name}")

    def http(self, path: str) -> bytes:
        return self.fetch(f"http://{self.server}:{HTTP_PORT}/{path.lstrip('/')}")


def offered_boot_file(output: dict[str, Any]) -> bytes | None:
    """The boot file of the first OFFER a pxeclient run received (None: no boot file)."""
    offers = [r for r in output["replies"] if r["step"] == "discover"]
    assert offers, output
    packet = decode(bytes.fromhex(offers[0]["hex"]))
    option = packet.get(OptionCode.BOOTFILE)
    name = bytes(option).rstrip(b"\0") if option else packet.file.rstrip(b"\0")
    return name or None


class SessionsLabTests(SynchronousTestCase):
    def setUp(self) -> None:
        require_lab(self)
        require_binary("curl", self)
        self.work = Path(tempfile.mkdtemp(prefix="pxt-sessions-lab-"))
        os.chmod(self.work, 0o755)
        self.addCleanup(shutil.rmtree, self.work, True)
        self.tftp_root = self.work / "tftp"
        self.http_root = self.work / "http"
        (self.http_root / "debian").mkdir(parents=True)
        self.tftp_root.mkdir()
        (self.tftp_root / "undionly.kpxe").write_bytes(os.urandom(70_000))
        (self.http_root / "debian" / "linux").write_bytes(os.urandom(400_000))
        (self.http_root / "debian" / "initrd.gz").write_bytes(os.urandom(900_000))
        self.lab = NetLab(clients=3)
        self.lab.up()
        self.addCleanup(self.lab.down)
        self.machines = [Machine(self.lab, f"c{i}", self.lab.srv_ip) for i in (1, 2, 3)]
        self.config = self.work / "pxe.yaml"
        self.write_config()
        self.server: subprocess.Popen[Any] | None = None
        self.start_server()

    def write_config(self) -> None:
        lines = [
            "interfaces: [srv0]",
            f"data_dir: {self.work / 'data'}",
            "dhcp:",
            "  mode: authoritative",
            "  subnets: [{network: 10.77.0.0/16, range: [10.77.1.10, 10.77.1.200]}]",
            f"tftp: {{root: {self.tftp_root}, workers: 0}}",
            f"http: {{root: {self.http_root}, port: {HTTP_PORT}}}",
            "boot: {bios: undionly.kpxe, ipxe: 'http://{server}:{http_port}/boot.ipxe?mac=${mac}'}",
            f"sessions: {{stuck_after: {STUCK_AFTER}, flush_interval: 0.2}}",
            "policy: {plugin_dirs: []}",
            "groups:",
            "  debian:",
            "    kernel: debian/linux",
            "    initrd: debian/initrd.gz",
            "    cmdline: 'console=ttyS0 pxetwist.done={done_url}'",
            "machines:",
        ]
        for index, machine in enumerate(self.machines):
            lines.append(
                f"  - {{mac: '{machine.mac}', name: m{index}, group: debian, boot_once: true}}"
            )
        self.config.write_text("\n".join(lines) + "\n")

    def start_server(self) -> None:
        log = (self.work / "server.log").open("a")
        self.addCleanup(log.close)
        self.server = self.lab.spawn(
            "srv",
            [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "pxe", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.lab.wait_port("srv", "tcp", HTTP_PORT, timeout=30, proc=self.server)
            self.lab.wait_port("srv", "udp", 67, timeout=30, proc=self.server)
        except Exception as error:
            log.flush()
            tail = (self.work / "server.log").read_text()[-3000:]
            raise AssertionError(f"{error}\n--- server log ---\n{tail}") from error

    def stop_server(self) -> None:
        assert self.server is not None
        NetLab.stop(self.server, grace=10)
        self.server = None

    def sessions(self, mac: str) -> list[dict[str, Any]]:
        result = subprocess.run(
            [str(PXETWIST), "sessions", "--config", str(self.config), "--mac", mac, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        found: list[dict[str, Any]] = json.loads(result.stdout)
        return found

    def wait_for(self, mac: str, what: str, test: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = self.sessions(mac)
            if found and test(found[0]):
                return found[0]
            time.sleep(0.3)
        log = (self.work / "server.log").read_text()[-3000:]
        raise AssertionError(f"{what}: sessions of {mac} are {json.dumps(found)[:3000]}\n{log}")

    def full_boot(self, machine: Machine) -> None:
        machine.dhcp("bios")
        machine.tftp("undionly.kpxe")
        machine.dhcp("ipxe")
        script = machine.http(f"/boot.ipxe?mac={machine.mac}").decode()
        self.assertIn("pxetwist.done=", script)
        machine.http("/debian/linux")
        machine.http("/debian/initrd.gz")

    def test_a_boot_is_one_timeline_with_every_stage_in_order(self) -> None:
        booted = self.machines[0]
        self.full_boot(booted)
        # the OS calls home with the URL its kernel command line got
        booted.http(f"/boot/done?mac={booted.mac}")
        session = self.wait_for(booted.mac, "booted", lambda s: s["state"] == "booted")
        stages = [item["stage"] for item in session["stages"]]
        self.assertEqual(
            stages,
            ["dhcp-offer", "dhcp-ack", "nbp", "ipxe-dhcp", "script", "kernel", "initrd", "os-up"],
        )
        times = [item["time"] for item in session["stages"]]
        self.assertEqual(times, sorted(times))
        self.assertTrue(all(item["seconds"] >= 0 for item in session["stages"]))
        self.assertEqual(session["stage"], "os-up")
        self.assertEqual(session["mac"], booted.mac)
        protocols = {event["protocol"] for event in session["events"]}
        self.assertEqual(protocols, {"dhcp", "tftp", "http", "os"})
        event_times = [event["time"] for event in session["events"]]
        self.assertEqual(event_times, sorted(event_times))

    def test_a_machine_that_stops_after_its_nbp_is_stuck_there_with_the_hint(self) -> None:
        booted, stalled = self.machines[0], self.machines[1]
        booted.dhcp("bios")
        booted.tftp("undionly.kpxe")
        booted.http(f"/boot.ipxe?mac={booted.mac}")  # it went on: not stuck at the NBP
        stalled.dhcp("bios")
        stalled.tftp("undionly.kpxe")
        stuck = self.wait_for(
            stalled.mac, "stuck", lambda s: s["state"] == "stuck", timeout=STUCK_AFTER + 30
        )
        self.assertEqual(stuck["stage"], "nbp")
        self.assertIn("undionly.kpxe was downloaded but nothing was asked for next", stuck["hint"])
        self.assertIn("Secure Boot", stuck["hint"])
        table = subprocess.run(
            [str(PXETWIST), "sessions", "--config", str(self.config), "--state", "stuck"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        self.assertIn(stalled.mac, table)
        # the machine that went on is stuck further on, with the hint for that stage
        other = self.wait_for(booted.mac, "stuck", lambda s: s["state"] == "stuck")
        self.assertEqual(other["stage"], "script")
        self.assertIn("the boot script was fetched but not the kernel", other["hint"])

    def test_boot_once(self) -> None:
        done, cut = self.machines[0], self.machines[2]
        first = done.dhcp("bios")
        self.assertEqual(offered_boot_file(first), b"undionly.kpxe")
        done.tftp("undionly.kpxe")
        done.dhcp("ipxe")
        done.http(f"/boot.ipxe?mac={done.mac}")
        done.http("/debian/linux")
        done.http("/debian/initrd.gz")
        # a boot cut off after the NBP does not use up the one boot
        cut.dhcp("bios")
        cut.tftp("undionly.kpxe")
        time.sleep(1.0)  # the used boot reaches sessions.sqlite within the flush interval
        again = done.dhcp("bios")
        self.assertIsNone(offered_boot_file(again), "a used-up machine gets no boot file")
        script = done.http(f"/boot.ipxe?mac={done.mac}").decode()
        self.assertIn("exit", script)  # iPXE is told to boot locally as well
        self.assertEqual(offered_boot_file(cut.dhcp("bios")), b"undionly.kpxe")
        # across a restart
        self.stop_server()
        self.start_server()
        self.assertIsNone(offered_boot_file(done.dhcp("bios")))
        self.assertEqual(offered_boot_file(cut.dhcp("bios")), b"undionly.kpxe")
        # until reset, which the running server picks up
        result = subprocess.run(
            [str(PXETWIST), "machines", "reset-boot", done.mac, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.assertIn("armed again", result.stdout)
        deadline = time.monotonic() + 20
        while offered_boot_file(done.dhcp("bios")) is None:
            self.assertLess(time.monotonic(), deadline, "reset-boot not seen by the server")
            time.sleep(0.5)

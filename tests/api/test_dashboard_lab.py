"""The dashboard watches a real (scripted) client boot live, in the lab.

``twistd -n pxe`` (DHCP, TFTP, HTTP, API) runs in a lab's server namespace; headless Chromium
runs there too (:mod:`tests.api.dashboard_watch`, where the API listens on loopback), signs in
and follows one machine.  The machine is scripted, step by step with pauses so each step lands
between two polls of the page: a BIOS PXE ROM's DORA (:mod:`tests.dhcp.pxeclient`), the NBP
over TFTP, iPXE's script, kernel and initrd over HTTP (curl), and the booted OS's call-back.
The page must show the stages appear one after another, in boot order, and end ``booted``; a
screenshot is saved under the test output ($PXETWIST_TEST_OUTPUT, default ``test-output/``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest

from pxetwist.lab import NetLab
from tests.api.labserver import VENV_BIN, ApiLabCase

HERE = Path(__file__).resolve().parent
PXECLIENT = HERE.parent / "dhcp" / "pxeclient.py"
WATCHER = HERE / "dashboard_watch.py"
OUTPUT = Path(os.environ.get("PXETWIST_TEST_OUTPUT", HERE.parents[1] / "test-output"))
MAC = "52:54:00:77:0a:02"
TOKEN = "lab-read-token-0123456789"
BOOT_ORDER = ["dhcp-offer", "dhcp-ack", "nbp", "script", "kernel", "initrd", "os-up"]
PAUSE = 1.6  # seconds between steps: the page polls the timeline every second


class DashboardLabTests(ApiLabCase):
    mac = MAC
    token = TOKEN
    files = {
        "tftp/undionly.kpxe": os.urandom(70_000),
        "http/vmlinuz": os.urandom(900_000),
        "http/initrd.img": os.urandom(1_500_000),
    }

    def server_config(self) -> dict[str, Any]:
        return {
            "http": {"enabled": True, "root": str(self.base / "http"), "port": 8080},
            "sessions": {"flush_interval": 0.5},
            "machines": [
                {
                    "mac": MAC,
                    "name": "lab2",
                    "kernel": "vmlinuz",
                    "initrd": "initrd.img",
                    "cmdline": "console=ttyS0",
                }
            ],
        }

    def setUp(self) -> None:
        if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
            if os.environ.get("CI"):
                self.fail("chromium and chromium-driver are missing: scripts/setup.sh --test")
            raise SkipTest("chromium and chromium-driver are not installed")
        super().setUp()
        (self.base / "token").write_text(TOKEN + "\n")

    def in_client(self, *argv: str) -> str:
        done = self.lab.run(self.client_ns, list(argv), timeout=60)
        self.assertEqual(done.returncode, 0, f"{argv}: {done.stderr}\n{self.log_text()}")
        return str(done.stdout)

    def test_dashboard_shows_a_boot_as_it_happens(self) -> None:
        ready = self.base / "watching"
        shot = OUTPUT / "dashboard-lab.png"
        OUTPUT.mkdir(parents=True, exist_ok=True)
        watcher = self.lab.spawn(
            self.lab.srv,
            [str(VENV_BIN / "python"), str(WATCHER), "--url", "http://127.0.0.1:8090/",
             "--token-file", str(self.base / "token"), "--mac", MAC, "--until", "os-up",
             "--ready", str(ready), "--screenshot", str(shot), "--timeout", "150"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(NetLab.stop, watcher)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if watcher.poll() is not None or time.monotonic() > deadline:
                _, err = watcher.communicate(timeout=30)
                self.fail(f"the browser did not start watching: {err.decode()[-3000:]}")
            time.sleep(0.3)

        server = self.lab.srv_ip
        http = f"http://{server}:8080"
        dora = json.loads(
            self.in_client(str(VENV_BIN / "python"), str(PXECLIENT), "--kind", "bios", "--dora",
                           "--window", "2", "--expect", "1")
        )  # fmt: skip
        address = dora["address"]
        self.assertIsNotNone(address, self.log_text())
        self.lab.run(
            self.client_ns, ["ip", "addr", "add", f"{address}/16", "dev", "eth0"], check=True
        )
        fetch = [self.curl, "-sS", "--fail", "--max-time", "30", "-o", "/dev/null"]
        for url in (
            f"tftp://{server}/undionly.kpxe",
            f"{http}/boot.ipxe?mac={MAC}",
            f"{http}/vmlinuz",
            f"{http}/initrd.img",
            f"{http}/boot/done?mac={MAC}",
        ):
            time.sleep(PAUSE)
            self.in_client(*fetch, url)

        out, err = watcher.communicate(timeout=180)
        self.assertEqual(watcher.returncode, 0, err.decode()[-3000:])
        seen = json.loads(out)
        observations = seen["observations"]
        final = observations[-1][1]
        # Every stage of the boot, in boot order (DHCP may show a retransmitted step twice).
        self.assertEqual([s for s in BOOT_ORDER if s in final], BOOT_ORDER, observations)
        positions = [final.index(stage) for stage in BOOT_ORDER]
        self.assertEqual(positions, sorted(positions), final)
        # Live: the page grew step by step while the machine booted, not all at once at the end.
        lengths = [len(stages) for _, stages in observations]
        self.assertEqual(lengths, sorted(lengths), observations)
        self.assertGreaterEqual(len({n for n in lengths if n}), 4, observations)
        self.assertEqual(seen["state"], "booted")
        self.assertGreater(shot.stat().st_size, 10_000)

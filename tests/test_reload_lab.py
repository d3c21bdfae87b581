"""Hot reload with real sockets: ``twistd -n pxe`` in a lab, SIGHUP while clients download.

* A 64 MiB HTTP download (curl, rate-limited so that it is still running) and a 64 MiB TFTP
  transfer with a window (atftp, blksize 1468, windowsize 8) run while the server gets SIGHUP
  several times with a changed config: both finish byte-identical (SHA-256) and the server
  lives on.
* A broken config is refused with its ``file:line`` and the old one stays in force (SIGHUP, and
  ``pxetwist reload`` over the control socket, which exits 1 with the server's reason).
* An interface added to ``interfaces`` is served after a reload (TFTP, HTTP and DHCP sockets on
  it), and closed again when it is taken out.

All traffic stays inside the namespaces these tests create.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import NetLab, require_binary, require_lab

VENV_BIN = Path(sys.executable).parent
TWISTD = VENV_BIN / "twistd"
PXETWIST = VENV_BIN / "pxetwist"
HTTP_PORT = 8080
SIZE = 64 * 1024 * 1024
EXTRA = "10.99.0.1"  # the address of the interface a reload adds


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ReloadLabTests(SynchronousTestCase):
    def setUp(self) -> None:
        require_lab(self)
        require_binary("curl", self)
        require_binary("atftp", self)
        self.work = Path(tempfile.mkdtemp(prefix="pxt-reload-lab-"))
        os.chmod(self.work, 0o755)
        self.addCleanup(shutil.rmtree, self.work, True)
        self.root = self.work / "root"
        self.out = self.work / "out"
        self.root.mkdir()
        self.out.mkdir()
        os.chmod(self.out, 0o777)
        with (self.root / "big.bin").open("wb") as handle:
            for _ in range(SIZE // (1 << 20)):
                handle.write(os.urandom(1 << 20))
        self.lab = NetLab(clients=0)
        self.lab.up()
        self.addCleanup(self.lab.down)
        self.config = self.work / "pxe.yaml"
        self.log = self.work / "server.log"
        self.write_config(kernel="one/linux")
        self.server = self.start()

    def write_config(self, *, kernel: str, interfaces: str = "[srv0]", extra: str = "") -> None:
        self.config.write_text(
            f"interfaces: {interfaces}\n"
            f"data_dir: {self.work / 'data'}\n"
            "dhcp: {mode: proxy}\n"
            f"tftp: {{root: {self.root}}}\n"
            f"http: {{root: {self.root}, port: {HTTP_PORT}}}\n"
            "policy: {plugin_dirs: []}\n"
            f"defaults: {{kernel: {kernel}}}\n" + extra
        )

    def start(self) -> subprocess.Popen[Any]:
        output = self.log.open("a")
        self.addCleanup(output.close)
        server = self.lab.spawn(
            "srv",
            [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "pxe", "--config", str(self.config)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            self.lab.wait_port("srv", "tcp", HTTP_PORT, timeout=30, proc=server)
            self.lab.wait_port("srv", "udp", 69, timeout=30, proc=server)
        except Exception as error:
            raise AssertionError(f"{error}\n{self.log.read_text()[-3000:]}") from error
        return server

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_logged(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} not logged {count} times:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.1)

    def hup(self) -> None:
        self.server.send_signal(signal.SIGHUP)

    def listening(self, proto: str) -> str:
        flags = {"udp": "-Hlnu", "tcp": "-Hlnt"}[proto]
        listed: str = self.lab.run("srv", ["ss", flags], check=True).stdout
        return listed

    def test_sighup_during_64mib_http_and_windowed_tftp_downloads(self) -> None:
        ip = self.lab.srv_ip
        http_out = self.out / "http.bin"
        tftp_out = self.out / "tftp.bin"
        http = self.lab.spawn(
            "cli",
            ["curl", "-sS", "--limit-rate", "12M", "--max-time", "120", "-o", str(http_out),
             f"http://{ip}:{HTTP_PORT}/big.bin"],
        )  # fmt: skip
        tftp = self.lab.spawn(
            "cli",
            ["atftp", "--get", "-r", "big.bin", "-l", str(tftp_out),
             "--option", "blksize 1468", "--option", "windowsize 8", ip],
        )  # fmt: skip
        # wait until both are under way, then reload again and again while they run
        deadline = time.monotonic() + 30
        while not (http_out.exists() and tftp_out.exists()):
            self.assertLess(time.monotonic(), deadline, "downloads did not start")
            time.sleep(0.05)
        reloads = both_running = 0
        while http.poll() is None or tftp.poll() is None:
            reloads += 1
            both_running += http.poll() is None and tftp.poll() is None
            self.write_config(kernel=f"k{reloads}/linux")
            self.hup()
            self.wait_logged("reloaded", reloads)
            if reloads >= 20:
                break
            time.sleep(0.3)
        self.assertGreaterEqual(both_running, 1, "no reload while both downloads ran")
        self.assertGreaterEqual(reloads, 2, "the downloads ended before two reloads")
        self.assertEqual(http.wait(120), 0)
        self.assertEqual(tftp.wait(120), 0)
        self.assertEqual(sha256(http_out), sha256(self.root / "big.bin"))
        self.assertEqual(sha256(tftp_out), sha256(self.root / "big.bin"))
        self.assertIsNone(self.server.poll())
        self.assertEqual(self.log_text().count("reload refused"), 0)

    def test_broken_config_is_refused_and_the_old_one_stays(self) -> None:
        good = self.config.read_text()
        self.config.write_text(good + "tftp_typo: 1\n")
        self.hup()
        self.wait_logged("reload refused")
        self.assertIn(f"{self.config}:8: tftp_typo: unknown key", self.log_text())
        self.assertIsNone(self.server.poll())
        # a config the server cannot run (its TFTP root is gone): refused by the server itself
        self.config.write_text(good.replace(str(self.root), str(self.work / "nowhere")))
        result = subprocess.run(
            [str(PXETWIST), "reload", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn("reload refused, the running config stays", result.stderr)
        self.assertIn("tftp.root", result.stderr)
        self.assertIn("is not a directory", result.stderr)
        # the old config still serves
        out = self.out / "small"
        (self.root / "small.bin").write_bytes(b"x" * 5000)
        self.lab.run(
            "cli",
            ["curl", "-sS", "-o", str(out), f"tftp://{self.lab.srv_ip}/small.bin"],
            check=True,
            timeout=60,
        )
        self.assertEqual(out.read_bytes(), b"x" * 5000)

    def test_interfaces_added_and_removed_are_bound_and_closed(self) -> None:
        link = ["ip", "link", "add", "extra0", "type", "veth", "peer", "name", "extra1"]
        self.lab.run("srv", link, check=True)
        self.lab.run("srv", ["ip", "addr", "add", f"{EXTRA}/24", "dev", "extra0"], check=True)
        for name in ("extra0", "extra1"):
            self.lab.run("srv", ["ip", "link", "set", name, "up"], check=True)
        self.assertNotIn(f"{EXTRA}:{HTTP_PORT}", self.listening("tcp"))
        self.write_config(kernel="one/linux", interfaces="[srv0, extra0]")
        result = subprocess.run(
            [str(PXETWIST), "reload", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("interfaces added: extra0", result.stdout)
        self.assertIn(f"{EXTRA}:{HTTP_PORT}", self.listening("tcp"))
        self.assertIn(f"{EXTRA}:69", self.listening("udp"))
        self.assertIn("dhcp (proxy) listening on extra0", self.log_text())
        self.write_config(kernel="one/linux", interfaces="[srv0]")
        self.hup()
        self.wait_logged("reloaded", 2)
        self.assertNotIn(f"{EXTRA}:{HTTP_PORT}", self.listening("tcp"))
        self.assertNotIn(f"{EXTRA}:69", self.listening("udp"))
        self.assertIn(f"{self.lab.srv_ip}:{HTTP_PORT}", self.listening("tcp"))

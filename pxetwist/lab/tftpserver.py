"""``twistd -n pxe`` serving a TFTP root in a throw-away network lab: what the TFTP lab tests and
the TFTP fuzz benchmark start.

The server runs in the lab's server namespace (DHCP off, HTTP off) with its log in a file;
clients run in the client namespace (``cli``).  :meth:`ServerLab.down` stops every process the
lab started (by PID) and removes its namespaces and files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pxetwist.lab.netlab import LabError, NetLab

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
MACHINE = "52:54:00:77:00:10"
CLIENT_TIMEOUT = 60.0


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as file:
        left = size
        while left:
            chunk = min(left, 1 << 20)
            file.write(os.urandom(chunk))
            left -= chunk


class ServerLab:
    """A NetLab with ``twistd -n pxe`` serving a TFTP root in the server namespace."""

    def __init__(self, files: dict[str, int], *, tftp: str = "") -> None:
        """``files``: names and sizes of random files in the root; ``tftp``: more keys of the
        ``tftp`` section, each with a leading ``, `` (default ``, timeout: 0.2``)."""
        self.work = Path(tempfile.mkdtemp(prefix="pxetwist-tftp-lab-"))
        os.chmod(self.work, 0o755)
        self.root = self.work / "root"
        self.out = self.work / "out"
        self.root.mkdir()
        self.out.mkdir()
        os.chmod(self.out, 0o777)
        for name, size in files.items():
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_random(path, size)
        self.config = self.work / "pxe.yaml"
        self.config.write_text(
            f"interfaces: [srv0]\n"
            f"data_dir: {self.work / 'data'}\n"
            f'dhcp: {{mode: "off"}}\n'
            f"http: {{enabled: false}}\n"
            f"tftp: {{root: {self.root}{tftp or ', timeout: 0.2'}}}\n"
            f"policy: {{plugin_dirs: []}}\n"
            f"groups:\n"
            f"  compute: {{kernel: compute/vmlinuz, initrd: compute/initrd.img, "
            f'cmdline: "console=ttyS0"}}\n'
            f"machines:\n"
            f"  - {{mac: '{MACHINE}', name: node1, group: compute}}\n"
        )
        self.lab = NetLab(clients=0)
        self.server: subprocess.Popen[Any] | None = None
        self.log = self.work / "server.log"
        self.workers: list[int] = []

    @property
    def ip(self) -> str:
        return self.lab.srv_ip

    def up(self) -> ServerLab:
        try:
            self.lab.up()
            with self.log.open("w") as log:
                self.server = self.lab.spawn(
                    "srv",
                    [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "pxe", "--config",
                     str(self.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(REPO),
                )  # fmt: skip
            self.lab.wait_port("srv", "udp", 69, timeout=20, proc=self.server)
            self.workers = self.wait_for_workers()
        except LabError as error:
            tail = self.log_tail()
            self.down()
            raise LabError(f"{error}\n--- server log ---\n{tail}") from error
        except BaseException:
            self.down()
            raise
        return self

    def wait_for_workers(self, at_least: int = 0, timeout: float = 20.0) -> list[int]:
        """PIDs of the transfer workers that said they are ready (after start-up, or after a
        respawn when ``at_least`` more than the first ones), in order."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            started = re.search(r"tftp: (\d+) transfer worker processes", text)
            pids = [int(pid) for pid in re.findall(r"tftp: transfer worker (\d+) ready", text)]
            if started is not None and len(pids) >= max(int(started.group(1)), at_least):
                return pids
            if time.monotonic() > deadline:
                raise LabError(f"transfer workers did not start\n{text[-2000:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def down(self) -> None:
        try:
            self.lab.down()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def run(
        self, argv: list[str], timeout: float = CLIENT_TIMEOUT
    ) -> subprocess.CompletedProcess[Any]:
        return self.lab.run("cli", argv, timeout=timeout)

    def fresh(self, name: str) -> Path:
        path = self.out / name
        if path.exists():
            path.unlink()
        return path


__all__ = ["CLIENT_TIMEOUT", "MACHINE", "REPO", "TWISTD", "ServerLab", "sha256", "write_random"]

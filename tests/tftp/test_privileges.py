"""``twistd --uid nobody --gid nogroup pxe``: authoritative DHCP and TFTP with transfer workers
after the privilege drop (issue 18, defect 4), in a network-namespace lab.

Before the fix the server exited at start (``data_dir`` made by root before the drop, the lease
database opened after it: "unable to open database file"), and transfer workers started after
the drop failed wherever the interpreter is not readable by ``nobody`` (this project's
virtualenv points at an interpreter under ``/root``, mode 0700).  Here a DHCP client gets a
lease and a boot file name, fetches that file over TFTP byte-identical, and the server and its
workers run as ``nobody``.
"""

from __future__ import annotations

import grp
import hashlib
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import CLIENT_IF, LabError, NetLab, require_binary, require_lab

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")

SCRIPT = """#!/bin/sh
if [ "$1" = bound ]; then
    ip addr replace "$ip/{prefixlen}" dev "$interface"
    echo "$ip $siaddr $boot_file" >> {out}
fi
exit 0
"""


def ids(path: Path) -> tuple[int, int]:
    for line in path.read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        if line.startswith("Gid:"):
            gid = int(line.split()[1])
    return uid, gid


class PrivilegeDropTests(SynchronousTestCase):
    def setUp(self) -> None:
        require_lab(self)
        for tool in ("busybox", "curl", "ss"):
            require_binary(tool, self)
        self.nobody = pwd.getpwnam("nobody").pw_uid
        self.nogroup = grp.getgrnam("nogroup").gr_gid
        self.work = Path(tempfile.mkdtemp(prefix="pxetwist-uid-lab-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        os.chmod(self.work, 0o755)
        self.root = self.work / "root"
        self.root.mkdir()
        self.content = os.urandom(150_000)
        (self.root / "pxelinux.0").write_bytes(self.content)
        self.lab = NetLab(clients=1)
        self.addCleanup(self.lab.down)
        self.lab.up()

    def test_authoritative_dhcp_and_tftp_workers_as_nobody(self) -> None:
        hosts = list(ipaddress.ip_network(str(self.lab.subnet)).hosts())
        config = self.work / "pxe.yaml"
        config.write_text(
            f"interfaces: [srv0]\n"
            f"data_dir: {self.work / 'data'}\n"
            f"dhcp:\n"
            f"  mode: authoritative\n"
            f"  subnets:\n"
            f"    - network: {self.lab.subnet}\n"
            f"      range: [{hosts[99]}, {hosts[149]}]\n"
            f"tftp: {{root: {self.root}, workers: 2, timeout: 0.2}}\n"
            f"http: {{enabled: false}}\n"
            f"policy: {{plugin_dirs: []}}\n"
            f"boot: {{bios: pxelinux.0}}\n"
        )
        log = self.work / "server.log"
        with log.open("w") as out:
            server = self.lab.spawn(
                "srv",
                [str(TWISTD), "-n", "--pidfile=", "--logfile=-", "--uid", "nobody",
                 "--gid", "nogroup", "pxe", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
            )  # fmt: skip
        try:
            self.lab.wait_port("srv", "udp", 69, timeout=30, proc=server)
            workers = self.wait_for(log, r"tftp: transfer worker (\d+) ready", 2, server)
        except LabError as error:
            self.fail(f"{error}\n{log.read_text()[-3000:]}")
        # The server and its workers run as nobody:nogroup.
        self.assertEqual(ids(Path(f"/proc/{server.pid}/status")), (self.nobody, self.nogroup))
        for pid in workers:
            self.assertEqual(ids(Path(f"/proc/{pid}/status")), (self.nobody, self.nogroup))
        # A PXE client's DHCP: a lease and the boot file, from the server's own address.
        events = self.work / "events"
        script = self.work / "udhcpc.sh"
        script.write_text(SCRIPT.format(out=events, prefixlen=self.lab.prefixlen))
        script.chmod(0o755)
        client = self.lab.clients[0]
        done = self.lab.run(
            client,
            ["busybox", "udhcpc", "-i", CLIENT_IF, "-f", "-q", "-n", "-t", "5", "-T", "1",
             "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000", "-s", str(script)],
            timeout=60,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr + log.read_text()[-3000:])
        address, siaddr, boot_file = events.read_text().split()
        self.assertIn(ipaddress.ip_address(address), hosts[99:150])
        self.assertEqual((siaddr, boot_file), (self.lab.srv_ip, "pxelinux.0"))
        # The boot file over TFTP, byte-identical, run by a worker.
        got = self.work / "got"
        fetched = self.lab.run(
            client,
            ["curl", "-sS", "--max-time", "60", "-o", str(got), f"tftp://{siaddr}/{boot_file}"],
            timeout=90,
        )
        self.assertEqual(fetched.returncode, 0, fetched.stderr + log.read_text()[-3000:])
        self.assertEqual(hashlib.sha256(got.read_bytes()).digest(),
                         hashlib.sha256(self.content).digest())  # fmt: skip
        self.wait_for(log, r"tftp completed: pxelinux.0 to \S+ \(mac [0-9a-f:]+\)()", 1, server)
        text = log.read_text()
        self.assertNotIn("unable to open database file", text)
        self.assertNotIn("Traceback", text)
        self.assertIsNone(server.poll(), text[-3000:])
        # State in data_dir belongs to the service user.
        for path in [self.work / "data", *(self.work / "data").iterdir()]:
            self.assertEqual(path.lstat().st_uid, self.nobody, path)
        # A worker killed after the drop is replaced (forked by the spawner, not exec'd).
        os.kill(workers[0], 9)
        again = self.wait_for(log, r"tftp: transfer worker (\d+) ready", 3, server)
        self.assertEqual(ids(Path(f"/proc/{again[-1]}/status")), (self.nobody, self.nogroup))
        self.lab.stop(server)

    def wait_for(
        self, log: Path, pattern: str, count: int, server: subprocess.Popen[Any]
    ) -> list[int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [int(pid or 0) for pid in re.findall(pattern, log.read_text())]
            if len(found) >= count:
                return found
            if server.poll() is not None:
                break
            time.sleep(0.1)
        self.fail(f"no {count} x {pattern!r}:\n{log.read_text()[-3000:]}")

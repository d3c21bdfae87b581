#!/usr/bin/env python3
"""A long TFTP fuzz run against ``twistd pxe`` with transfer workers, in a throw-away lab.

Sends ``--count`` mutated and malformed datagrams (default 1,000,000; see
:mod:`pxetwist.lab.tftpfuzz`: bit flips, cuts, junk tails, giant option lists, traversal names,
6 KB requests, noise; to port 69 and to the transfer ports that answer) from the lab's client
namespace at ``--rate`` a second, with every ``--check-every`` datagrams a real download
(tftp-hpa, then curl) compared by SHA-256.  At the end: the counts, the rate, what the server's
kernel counters saw, the log's size, the server's memory, and the result (PASS when every
check was byte-identical and the server still runs).  Bounded in count and in time
(``--max-seconds``); it cleans up its namespaces and processes (by PID).

    sudo .venv/bin/python bench/fuzz/tftp.py                      # the long run (1 M datagrams)
    sudo .venv/bin/python bench/fuzz/tftp.py --count 20000        # a smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxetwist.lab import NetLab, require_binary  # noqa: E402
from pxetwist.lab.tftpfuzz import udp_counters  # noqa: E402


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FuzzBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="pxetwist-tftp-fuzz-"))
        os.chmod(self.work, 0o755)
        self.root = self.work / "root"
        self.root.mkdir()
        self.out = self.work / "out"
        self.out.mkdir()
        os.chmod(self.out, 0o777)
        self.files = {"big.bin": os.urandom(1 << 20), "f.bin": os.urandom(3000)}
        for name, content in self.files.items():
            (self.root / name).write_bytes(content)
        self.log = self.work / "server.log"
        self.lab = NetLab(clients=0)
        self.server: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        lab = self.lab.up()
        config = self.work / "pxe.yaml"
        config.write_text(
            "interfaces: [srv0]\n"
            f"data_dir: {self.work / 'data'}\n"
            'dhcp: {mode: "off"}\n'
            "http: {enabled: false}\n"
            f"tftp: {{root: {self.root}, workers: {self.args.workers}, timeout: 0.2}}\n"
            "policy: {plugin_dirs: []}\n"
        )
        twistd = Path(sys.executable).with_name("twistd")
        with self.log.open("w") as log:
            self.server = lab.spawn(
                "srv",
                [str(twistd), "-n", "--pidfile=", "--logfile=-", "pxe", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
            )
        lab.wait_port("srv", "udp", 69, timeout=20, proc=self.server)
        time.sleep(2)  # the transfer workers

    def stop(self) -> None:
        try:
            if self.server is not None:
                self.lab.stop(self.server)
            self.lab.down()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def check(self, index: int) -> bool:
        """A real download with tftp-hpa or curl, byte-identical, within 60 s."""
        name = "big.bin" if index % 2 == 0 else "f.bin"
        out = self.out / f"check-{index}"
        ip = self.lab.srv_ip
        if index % 4 < 2:
            argv = ["tftp", "-m", "binary", ip, "-c", "get", name, str(out)]
        else:
            argv = ["curl", "-sS", "--max-time", "60", "--tftp-blksize", "1468", "-o", str(out),
                    f"tftp://{ip}/{name}"]  # fmt: skip
        try:
            result = self.lab.run("cli", argv, timeout=70)
        except subprocess.TimeoutExpired:
            return False
        good = (
            result.returncode == 0
            and out.exists()
            and sha256(out) == hashlib.sha256(self.files[name]).hexdigest()
        )
        out.unlink(missing_ok=True)
        return good

    def udp(self) -> dict[str, int]:
        return udp_counters(self.lab.run("srv", ["cat", "/proc/net/snmp"]).stdout)

    def rss_kib(self) -> int:
        if self.server is None:
            return 0
        try:
            for line in Path(f"/proc/{self.server.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def run(self) -> bool:
        args = self.args
        deadline = time.monotonic() + args.max_seconds
        before = self.udp()
        rss_before = self.rss_kib()
        sent = answers = checks = failed = 0
        began = time.monotonic()
        seed = args.seed
        while sent < args.count and time.monotonic() < deadline:
            batch = min(args.check_every, args.count - sent)
            left = max(1.0, deadline - time.monotonic())
            result = self.lab.run(
                "cli",
                [sys.executable, "-m", "pxetwist.lab.tftpfuzz", "flood", self.lab.srv_ip,
                 "f.bin", str(batch), str(seed), "--rate", str(args.rate),
                 "--max-seconds", str(left)],
                timeout=left + 30,
                cwd=str(REPO),
            )  # fmt: skip
            counts = dict(line.split(" ", 1) for line in result.stdout.splitlines())
            sent += int(counts.get("sent", 0))
            answers += int(counts.get("answers", 0))
            seed += 1
            checks += 1
            if not self.check(checks):
                failed += 1
                print(f"check {checks} after {sent} datagrams FAILED", flush=True)
            if args.verbose:
                print(f"{sent} sent, {checks} checks, {failed} failed", flush=True)
        seconds = time.monotonic() - began
        after = self.udp()
        alive = self.server is not None and self.server.poll() is None
        log = self.log.read_text(errors="replace")
        crashes = sum(log.count(word) for word in ("Traceback", "Unhandled", "released twice"))
        passed = alive and failed == 0 and crashes == 0 and sent == args.count
        print(f"datagrams sent       {sent} of {args.count}")
        print(f"seconds              {seconds:.1f}")
        print(
            f"rate                 {sent / max(seconds, 1e-9):.0f} datagrams/s (asked {args.rate})"
        )
        print(f"answers received     {answers}")
        for name in ("InDatagrams", "NoPorts", "RcvbufErrors"):
            print(f"server udp {name:<13} {after.get(name, 0) - before.get(name, 0)}")
        print(f"real downloads       {checks} ({failed} failed)")
        print(f"server log           {len(log.splitlines())} lines, {len(log.encode())} bytes")
        print(f"server rss           {rss_before} KiB -> {self.rss_kib()} KiB")
        print(f"crash lines in log   {crashes}")
        print(f"server alive         {alive}")
        print(f"result               {'PASS' if passed else 'FAIL'}")
        return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=5_000, help="datagrams a second")
    parser.add_argument("--check-every", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the lab needs network namespaces")
    for tool in ("tftp", "curl", "ip"):
        require_binary(tool)
    bench = FuzzBench(args)
    try:
        bench.start()
        passed = bench.run()
    finally:
        bench.stop()
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()

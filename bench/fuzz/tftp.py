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
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxetwist.lab import require_binary  # noqa: E402
from pxetwist.lab.tftpfuzz import udp_counters  # noqa: E402
from pxetwist.lab.tftpserver import ServerLab, sha256  # noqa: E402


class FuzzBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.files = {"big.bin": 1 << 20, "f.bin": 3000}
        self.server = ServerLab(self.files, tftp=f", workers: {args.workers}, timeout: 0.2")
        self.lab = self.server.lab

    def start(self) -> None:
        self.server.up()

    def stop(self) -> None:
        self.server.down()

    def check(self, index: int) -> bool:
        """A real download with tftp-hpa or curl, byte-identical, within 60 s."""
        name = "big.bin" if index % 2 == 0 else "f.bin"
        out = self.server.fresh(f"check-{index}")
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
            and sha256(out) == sha256(self.server.root / name)
        )
        out.unlink(missing_ok=True)
        return good

    def udp(self) -> dict[str, int]:
        return udp_counters(self.lab.run("srv", ["cat", "/proc/net/snmp"]).stdout)

    def rss_kib(self) -> int:
        process = self.server.server
        if process is None:
            return 0
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
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
        alive = self.server.server is not None and self.server.server.poll() is None
        log = self.server.log_text()
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

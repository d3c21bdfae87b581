#!/usr/bin/env python3
"""A long DHCP fuzz run against ``twistd pxe`` (authoritative, SQLite leases), in a throw-away lab.

Sends ``--count`` mutated datagrams (default 1,000,000; see :mod:`pxetwist.lab.dhcpfuzz`: every
kind of request mutated by bit flips, cuts, junk, lying option lengths, random and wrong-length
options, odd headers, plus noise and malformed packets; to ports 67 and 4011) from the lab's
relay namespace at ``--rate`` a second, and every ``--check-every`` datagrams a real client
(busybox udhcpc, from a namespace of its own) must complete DORA.  ``--malformed`` sends only
undecodable datagrams (issue 18 defect 6: the log must stay bounded; ``--count 100000`` is the
issue's figure).  At the end: counts, rate, the server's kernel counters, the log's lines and
bytes, the server's memory, the DORA checks and PASS/FAIL (every check passed, the server
still runs, no traceback in its log).  Bounded in count and time (``--max-seconds``); the lab
and its processes are removed (by PID) on every exit.

    sudo .venv/bin/python bench/fuzz/dhcp.py                               # 1 M mutated
    sudo .venv/bin/python bench/fuzz/dhcp.py --malformed --count 100000    # the log budget
    sudo .venv/bin/python bench/fuzz/dhcp.py --count 20000                 # a smoke test
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxetwist.lab import CLIENT_IF, SRV_IF, NetLab, exit_on_sigterm, require_binary  # noqa: E402
from pxetwist.lab.tftpfuzz import udp_counters  # noqa: E402


class FuzzBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="pxetwist-dhcp-fuzz-"))
        os.chmod(self.work, 0o755)
        self.log = self.work / "server.log"
        self.lab = NetLab(clients=1)
        self.server: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        lab = self.lab.up()
        config = self.work / "pxe.yaml"
        config.write_text(
            f"interfaces: [{SRV_IF}]\n"
            f"data_dir: {self.work / 'data'}\n"
            "dhcp:\n"
            "  mode: authoritative\n"
            "  subnets:\n"
            f"    - network: {lab.subnet}\n"
            "      range: [10.77.1.10, 10.77.1.250]\n"
            "      lease_time: 10m\n"
            "tftp: {enabled: false}\n"
            "http: {enabled: false}\n"
            "policy: {plugin_dirs: []}\n"
        )
        twistd = Path(sys.executable).with_name("twistd")
        argv = [
            str(twistd),
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log),
            "pxe",
            "-c",
            str(config),
        ]
        self.server = lab.spawn(
            lab.srv, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(REPO)
        )
        lab.wait_port(lab.srv, "udp", 67, timeout=20, proc=self.server)
        time.sleep(1)

    def stop(self) -> None:
        try:
            if self.server is not None:
                self.lab.stop(self.server)
            self.lab.down()
        finally:
            if self.args.keep:
                print(f"kept {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)

    def dora(self, index: int) -> bool:
        """busybox udhcpc completes DORA (and releases, so the pool does not fill up)."""
        ns = self.lab.clients[0]
        argv = ["busybox", "udhcpc", "-i", CLIENT_IF, "-f", "-q", "-n", "-R", "-t", "5",
                "-T", "2", "-s", "/bin/true"]  # fmt: skip
        try:
            done = self.lab.run(ns, argv, timeout=60)
        except subprocess.TimeoutExpired:
            return False
        return re.search(r"lease of \S+ obtained", done.stdout + done.stderr) is not None

    def udp(self) -> dict[str, int]:
        return udp_counters(self.lab.run(self.lab.srv, ["cat", "/proc/net/snmp"]).stdout)

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
        log_before = self.log.stat().st_size if self.log.exists() else 0
        sent = checks = failed = 0
        flooding = 0.0  # seconds spent sending, without the checks
        began = time.monotonic()
        seed = args.seed
        while sent < args.count and time.monotonic() < deadline:
            batch = min(args.check_every, args.count - sent)
            left = max(1.0, deadline - time.monotonic())
            argv = [
                sys.executable,
                "-m",
                "pxetwist.lab.dhcpfuzz",
                "flood",
                self.lab.srv_ip,
                str(batch),
                str(seed),
                "--rate",
                str(args.rate),
                "--max-seconds",
                str(left),
            ]
            if args.malformed:
                argv.append("--malformed")  # fmt: skip
            result = self.lab.run(self.lab.cli, argv, timeout=left + 30, cwd=str(REPO))
            counts = dict(line.split(" ", 1) for line in result.stdout.splitlines())
            sent += int(counts.get("sent", 0))
            flooding += float(counts.get("seconds", 0))
            seed += 1
            checks += 1
            if not self.dora(checks):
                failed += 1
                print(f"DORA check {checks} after {sent} datagrams FAILED", flush=True)
            if args.verbose:
                print(f"{sent} sent, {checks} checks, {failed} failed", flush=True)
        seconds = time.monotonic() - began
        time.sleep(1.5)  # the last interval's summary line
        after = self.udp()
        alive = self.server is not None and self.server.poll() is None
        raw = self.log.read_bytes()[log_before:]
        log = raw.decode(errors="replace")
        dhcp_lines = sum(1 for line in log.splitlines() if "[pxetwist.dhcp" in line)
        crashes = sum(log.count(word) for word in ("Traceback", "Unhandled", "unexpected error"))
        passed = alive and failed == 0 and crashes == 0 and sent == args.count
        kind = "malformed" if args.malformed else "mutated"
        print(f"datagrams sent       {sent} of {args.count} ({kind})")
        print(f"seconds              {seconds:.1f}")
        print(
            f"rate                 {sent / max(flooding, 1e-9):.0f} datagrams/s while sending "
            f"(asked {args.rate})"
        )
        for name in ("InDatagrams", "RcvbufErrors"):
            print(f"server udp {name:<13} {after.get(name, 0) - before.get(name, 0)}")
        print(f"real DORAs           {checks} ({failed} failed)")
        print(f"server log           {len(log.splitlines())} lines ({dhcp_lines} DHCP), "
              f"{len(raw)} bytes")  # fmt: skip
        print(f"server rss           {rss_before} KiB -> {self.rss_kib()} KiB")
        print(f"crash lines in log   {crashes}")
        print(f"server alive         {alive}")
        print(f"result               {'PASS' if passed else 'FAIL'}")
        return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=10_000, help="datagrams a second (0: no cap)")
    parser.add_argument("--check-every", type=int, default=50_000)
    parser.add_argument("--malformed", action="store_true", help="only undecodable datagrams")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (log)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()  # a kill PID still removes the lab and its servers
    if os.geteuid() != 0:
        raise SystemExit("run as root: the lab needs network namespaces")
    for tool in ("busybox", "ip"):
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

#!/usr/bin/env python3
"""pxetwist's memory in a storm: sessions in flight, TFTP transfers held open, 100,000 leases.

Run as root from the repository root::

    sudo .venv/bin/python bench/storm/memory.py [--sessions 2000] [--transfers 1000] \
        [--leases 100000]

One ``twistd -n pxe`` on its defaults (as in ``run.py``: SQLite leases, sessions, TFTP workers
``auto``) in the lab, the machines on the routed network behind ``--procs`` relays.  Phases, the
server's RSS (the process and its TFTP workers, summed) printed after each:

1. started, nothing served;
2. ``--sessions`` PXE machines complete DHCP (each a boot session in progress: they never
   fetch their NBP, so the sessions stay open until ``stuck_after``, 5 minutes);
3. ``--transfers`` more machines complete DHCP and start their NBP download over TFTP, and stop
   acknowledging at block 1: that many transfers in flight (measured while they are held);
4. machines complete DHCP until ``--leases`` leases are bound in all (the registry follows at
   most ``sessions.max_machines``, 20,000 by default).

Every client process is bounded (``--deadline``), the server is stopped by PID, the lab removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as storm

from pxetwist.lab import NetLab, exit_on_sigterm
from pxetwist.lab.pinning import NOT_PINNED


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def server_rss(servers: storm.Servers) -> tuple[float, int]:
    pids = list(servers.cpu())
    return rss_mib(pids), len(pids)


def finish(lab: NetLab, started: list[tuple[subprocess.Popen[Any], Path]], limit: float) -> str:
    for proc, _ in started:
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            lab.stop(proc)
    done = failed = 0
    reasons: dict[str, int] = {}
    for _, out in started:
        if out.exists():
            for r in json.loads(out.read_text())["records"]:
                if "failed" in r:
                    failed += 1
                    key = ": ".join(r["failed"])
                    reasons[key] = reasons.get(key, 0) + 1
                else:
                    done += 1
    return f"{done} done, {failed} failed {reasons or ''}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--transfers", type=int, default=1000)
    parser.add_argument("--leases", type=int, default=100_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000, help="new machines a second")
    parser.add_argument("--deadline", type=float, default=300)
    args = parser.parse_args()
    exit_on_sigterm()  # a kill PID still removes the lab and its servers
    if os.geteuid() != 0:
        parser.error("run as root: the lab builds network namespaces")
    if not 1 <= args.procs <= 20 or args.leases > 60000 * 4:
        parser.error("--procs 1..20, --leases at most 240,000")
    args.pinning = NOT_PINNED
    args.profile = None
    args.uefi_share, args.sample, args.keepalive = 0.5, 0, False
    args.client_window = storm.IPXE_WINDOW_KIB
    root = Path(tempfile.mkdtemp(prefix="storm-mem-root-"))
    root.chmod(0o755)
    sizes = {"bios.nbp": 1 << 20, "uefi.nbp": (1 << 20) + 4321, "vmlinuz": 1, "initrd.img": 1}
    files = {name: (size, storm.write_file(root / name, size)) for name, size in sizes.items()}
    wd = Path(tempfile.mkdtemp(prefix="storm-mem-"))
    wd.chmod(0o755)
    lines = []
    try:
        with NetLab(clients=0) as lab:
            net = storm.RELAY_NET
            args.giaddrs = [str(net.network_address + 1 + k) for k in range(args.procs)]
            lab.run(lab.cli, ["ip", "route", "add", "local", str(net), "dev", "lo"], check=True)
            lab.run(lab.srv, ["ip", "route", "add", str(net), "via", lab.cli_ip], check=True)
            servers = storm.Servers("pxetwist", lab, wd, root, args)
            try:

                def report(what: str) -> None:
                    rss, n = server_rss(servers)
                    line = f"{what}: RSS {rss:.1f} MiB ({n} processes)"
                    lines.append(line)
                    print(line, file=sys.stderr, flush=True)

                report("started")
                n = args.sessions
                _, started = storm.start_clients(lab, wd, args, files, 0, n, n / args.rate, "dhcp")
                result = finish(lab, started, args.deadline + n / args.rate + 30)
                report(f"{n} machines through DHCP, sessions in flight ({result})")
                first = n
                n = args.transfers
                hold = 15.0 + n / args.rate
                _, started = storm.start_clients(
                    lab, wd, args, files, first, n, n / args.rate, "tftp-hold", hold
                )
                # measured while the transfers are held open, a few seconds after the last started
                timer = threading.Timer(
                    2.0 + 0.2 * args.procs + n / args.rate + 5.0,
                    lambda: report(f"{n} TFTP transfers held open"),
                )
                timer.start()
                result = finish(lab, started, args.deadline + hold + 30)
                timer.join()
                lines[-1] += f" ({result})"
                first += n
                n = args.leases - first
                _, started = storm.start_clients(
                    lab, wd, args, files, first, n, n / args.rate, "dhcp"
                )
                result = finish(lab, started, args.deadline + n / args.rate + 30)
                report(f"{args.leases} leases bound ({result})")
            finally:
                servers.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(wd, ignore_errors=True)
    print("\n".join([" ".join(sys.argv), *lines]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

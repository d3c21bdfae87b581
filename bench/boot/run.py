#!/usr/bin/env python3
"""Firmware boot time: the e2e scenarios against dnsmasq+nginx and against pxetwist, one run.

Run as root from the repository root::

    sudo .venv/bin/python bench/boot/run.py [--repeats 3] [--scenarios a,b,...]

For every scenario (``pxetwist.lab.e2e.SCENARIOS``; the letters of their titles, a-e and h-l,
or full names) and every repeat,
the two servers boot the same firmware chain back to back (the order alternates repeat by
repeat, so the noise of this 2-core TCG machine falls evenly on both): a fresh NetLab, the
server in its server namespace, IPv6 router advertisements from a helper (as in the e2e
suite), one QEMU guest with a fresh MAC and token. The time is seconds from QEMU's start to
the initrd's marker line carrying the token on serial; a boot without the token is a failure.
For (l), where Secure Boot must refuse the unsigned NBP, it is the time to the refusal.
The table gives the median per server and the ratio pxetwist / reference; the target is
<= 1.2. Every VM is bounded by the scenario's time limit and stopped by PID, every lab is
removed afterwards; nothing leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxetwist.lab import NetLab, exit_on_sigterm, remove_stale_labs  # noqa: E402
from pxetwist.lab.e2e import (  # noqa: E402
    SCENARIOS,
    TAP,
    BootRun,
    BootServer,
    Scenario,
    scenario_vm,
)
from pxetwist.lab.e2e.boottree import MARKER_RE, build_tree  # noqa: E402
from pxetwist.lab.e2e.pxetwist_server import PxetwistServer  # noqa: E402
from pxetwist.lab.e2e.reference import DnsmasqNginx  # noqa: E402
from pxetwist.lab.e2e.vm import RouterAdvertiser, Vm, random_mac  # noqa: E402

SERVERS: dict[str, Callable[[], BootServer]] = {
    "dnsmasq+nginx": DnsmasqNginx,
    "pxetwist": PxetwistServer,
}
LETTERS = {
    m.group(1): name
    for name, scenario in SCENARIOS.items()
    if (m := re.match(r"\((\w)\)", scenario.title)) is not None
}
TARGET = 1.2


def boot_once(scenario: Scenario, make_server: Callable[[], BootServer], keep: bool) -> float:
    """Boot ``scenario`` once; seconds from VM start to the marker with the run's token."""
    workdir = Path(tempfile.mkdtemp(prefix=f"pxetwist-bench-{scenario.name}-"))
    workdir.chmod(0o755)
    remove_stale_labs()
    lab = NetLab(clients=0, taps=[TAP])
    server = make_server()
    ra: RouterAdvertiser | None = None
    vm: Vm | None = None
    try:
        tree = build_tree(workdir / "root", scenario.platform)
        lab.up()
        run = BootRun(scenario, random_mac(), secrets.token_hex(8), lab.srv_ip, server.http_port)
        server.start(lab, tree, run, workdir / "server")
        ra = RouterAdvertiser(lab, duration=scenario.timeout + 30).start()
        vm = scenario_vm(scenario, workdir / "vm", lab, run.mac).start()
        try:
            match = vm.wait_for(scenario.refused or MARKER_RE)
        except AssertionError as e:
            raise RuntimeError(
                f"{scenario.name} [{server.name}]: {e}\n{server.diagnostics()}"
            ) from None
        elapsed = vm.elapsed
        if scenario.refused is not None:
            if MARKER_RE.search(vm.serial()):
                raise RuntimeError(f"{scenario.name} [{server.name}]: refused NBP booted")
        elif f"pxetwist.token={run.token}" not in match.group("cmdline").split():
            raise RuntimeError(f"{scenario.name} [{server.name}]: marker without the token")
        return elapsed
    finally:
        if vm is not None:
            vm.stop()
        if ra is not None:
            ra.stop()
        server.stop()
        lab.down()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def parse_scenarios(text: str) -> list[str]:
    names = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name = LETTERS.get(item, item)
        if name not in SCENARIOS:
            raise SystemExit(
                f"unknown scenario {item!r}: use {','.join(LETTERS)} or {', '.join(SCENARIOS)}"
            )
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="boots per scenario and server")
    ap.add_argument("--scenarios", default=",".join(LETTERS), help="e.g. a,c or bios-ipxe-http")
    ap.add_argument("--json", type=Path, help="also write the raw times here")
    ap.add_argument("--keep", action="store_true", help="keep work dirs (logs, serial) in /tmp")
    args = ap.parse_args(argv)
    exit_on_sigterm()  # a kill PID still removes the lab and its servers
    names = parse_scenarios(args.scenarios)
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in SERVERS} for n in names}
    t0 = time.monotonic()
    for name in names:
        for i in range(args.repeats):
            order = list(SERVERS) if i % 2 == 0 else list(reversed(SERVERS))
            for server in order:
                s = boot_once(SCENARIOS[name], SERVERS[server], args.keep)
                times[name][server].append(round(s, 2))
                print(f"  {name:20} {server:14} run {i + 1}: {s:6.2f} s", flush=True)
    print(f"\n{args.repeats} boot(s) per scenario and server, {time.monotonic() - t0:.0f} s in all")
    print(f"\n| scenario | dnsmasq+nginx (s) | pxetwist (s) | ratio | <= {TARGET} |")
    print("|---|---:|---:|---:|:-:|")
    worst = 0.0
    for name in names:
        ref = statistics.median(times[name]["dnsmasq+nginx"])
        pxt = statistics.median(times[name]["pxetwist"])
        ratio = pxt / ref
        worst = max(worst, ratio)
        ok = "yes" if ratio <= TARGET else "NO"
        print(f"| {name} | {ref:.2f} | {pxt:.2f} | {ratio:.2f} | {ok} |")
    if args.json:
        args.json.write_text(json.dumps(times, indent=1) + "\n")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

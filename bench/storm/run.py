#!/usr/bin/env python3
"""Boot storm: N simulated PXE machines at once against pxetwist and dnsmasq + nginx, one run.

Run as root from the repository root::

    sudo .venv/bin/python bench/storm/run.py --clients 500 --repeats 3 --pin 0:1

Each run starts one server fresh in the lab's server namespace, lets ``--procs`` client
processes (``bench/storm/client.py``, asyncio) in the client namespace boot ``--clients``
machines, and stops the server by PID.  Servers alternate run by run (the order flips every
repeat) so the machine's noise falls on both.  Every machine does a relayed DHCP exchange
with PXE options (BIOS or x86-64 UEFI, ``--uefi-share``), downloads its NBP over TFTP
(blksize 1468, lockstep) and then a kernel and an initrd over HTTP, each connection with
iPXE's 256 KiB receive window (``--client-window``; 0 gives Linux's autotuning, which in one
shared kernel fills TCP's memory as no rack of machines would); every ``--sample``-th machine
checks SHA-256.  ``--ramps`` lists the start spreads to run (0 = all at once, 5 = the
machines start evenly over 5 s, ...).

Servers:

* ``pxetwist``: ``twistd -n pxe`` on its defaults (SQLite leases, sessions, TFTP workers
  ``auto``, log budget, log to a file); the config only names the interface, the pool, the
  roots and the two boot files.
* ``pxetwist-nosessions``: the same with ``sessions: {enabled: false}`` (what a boot's
  session costs: ``--servers pxetwist,pxetwist-nosessions``).
* ``dnsmasq+nginx``: dnsmasq for DHCP and TFTP with every limit raised (``tftp-max=10000``,
  ``dhcp-lease-max``, ``no-ping``, ``quiet-dhcp``, leases in memory, 65,536 descriptors),
  nginx (2 workers, 16,384 connections each, ``sendfile``, no access log) for HTTP.

Reported per server (median over the repeats): machines booted and failures by stage and
reason, the storm's total time (first start to last initrd byte), p50/p95/max boot time per
machine, per-stage medians, retransmissions, the server's CPU seconds (the process and all its
descendants: TFTP workers, nginx workers) and CPU per boot, the clients' own CPU (to show
they are not the bottleneck), and what the lab's kernel dropped or resent: UDP datagrams
dropped by either side's sockets, TCP segments the server resent, its retransmission timeouts
(a machine that waits seconds for its download waits for these) and the segments the clients'
sockets dropped for want of receive memory.  Ratios are pxetwist / reference.

``--spy DIR`` profiles each pxetwist run with py-spy (its transfer workers too, samples that
hold the GIL, collapsed stacks in ``DIR``); with ``--pin`` py-spy runs on the clients' CPUs.

Only the lab's namespaces are targets; every client process is bounded by ``--deadline``;
everything is stopped by PID and the lab removed.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxetwist.lab import SRV_IF, SRV_PEER_IF, NetLab, exit_on_sigterm  # noqa: E402
from pxetwist.lab.interpreter import describe_interpreter  # noqa: E402
from pxetwist.lab.netlab import cpu_mask  # noqa: E402
from pxetwist.lab.pinning import Pinning, parse_pin  # noqa: E402

SERVERS = ("pxetwist", "dnsmasq+nginx", "pxetwist-nosessions")
IPXE_WINDOW_KIB = 256  # iPXE's TCP_MAX_WINDOW_SIZE: what a booting machine advertises
REFERENCE = "dnsmasq+nginx"
#: The machines' network, behind a relay: the server reaches it through the client namespace
#: (a route via its address), where the whole network is local (``ip route add local``), so
#: every machine's TFTP and HTTP come from its own leased address and the server's neighbour
#: table holds one entry, the relay's, as in a routed data centre.
RELAY_NET = ipaddress.IPv4Network("10.80.0.0/14")  # room for 100,000 leases (memory.py)
POOL = ("10.80.1.0", "10.83.254.254")
HTTP_PORT = 8080
TWISTD = REPO / ".venv" / "bin" / "twistd"
CLIENT = Path(__file__).resolve().with_name("client.py")
FILES = {"bios.nbp": "nbp", "uefi.nbp": "nbp", "vmlinuz": "kernel", "initrd.img": "initrd"}


# -- CPU of a process tree -------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # fields[1] = ppid; [11], [12] = utime, stime; [13], [14] = reaped children's
    return int(fields[1]), (
        int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    ) / tick


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every live descendant (reaped children included)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                parents[int(name)], cpu[int(name)] = st
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return {pid: cpu[pid] for pid in tree if pid in cpu}


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


# -- servers ---------------------------------------------------------------------------------


def raise_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))


def pxetwist_argv(
    lab: NetLab, wd: Path, root: Path, profile: Path | None, *, sessions: bool = True
) -> list[str]:
    (wd / "data").mkdir()
    config = wd / "pxe.yaml"
    config.write_text(
        f"""\
interfaces: [{SRV_IF}]
data_dir: {wd}/data
dhcp:
  mode: authoritative
  subnets:
    - network: {RELAY_NET}
      range: [{POOL[0]}, {POOL[1]}]
      lease_time: 1h
tftp: {{root: {root}}}
http: {{root: {root}, port: {HTTP_PORT}}}
boot: {{bios: bios.nbp, efi-x86_64: uefi.nbp}}
policy: {{plugin_dirs: []}}
"""
        + ("" if sessions else "sessions: {enabled: false}\n")
    )
    argv = [str(TWISTD), "-n", "--pidfile=", "-l", str(wd / "pxetwist.log")]
    if profile is not None:
        argv += ["--profile", str(profile), "--profiler", "cprofile", "--savestats"]
    return [*argv, "pxe", "-c", str(config)]


def reference_argv(lab: NetLab, wd: Path, root: Path) -> tuple[list[str], list[str]]:
    (wd / "tmp").mkdir()
    nginx = wd / "nginx.conf"
    nginx.write_text(
        f"""worker_processes 2;
worker_rlimit_nofile 65536;
pid {wd}/nginx.pid;
error_log {wd}/nginx-error.log;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 100000;
  default_type application/octet-stream;
  access_log off;
  client_body_temp_path {wd}/tmp; proxy_temp_path {wd}/tmp;
  fastcgi_temp_path {wd}/tmp; uwsgi_temp_path {wd}/tmp; scgi_temp_path {wd}/tmp;
  server {{ listen {lab.srv_ip}:{HTTP_PORT} backlog=65535 reuseport; root {root}; }}
}}
"""
    )
    dnsmasq = wd / "dnsmasq.conf"
    dnsmasq.write_text(
        "\n".join(
            [
                "port=0",
                f"interface={SRV_IF}",
                "bind-interfaces",
                "dhcp-authoritative",
                "no-ping",
                "quiet-dhcp",
                "leasefile-ro",
                "dhcp-lease-max=1000000",
                f"dhcp-range={POOL[0]},{POOL[1]},{RELAY_NET.netmask},1h",
                f"log-facility={wd / 'dnsmasq.log'}",
                "enable-tftp",
                f"tftp-root={root}",
                "tftp-max=10000",
                "dhcp-match=set:efi64,option:client-arch,7",
                "dhcp-boot=tag:efi64,uefi.nbp",
                "dhcp-boot=tag:!efi64,bios.nbp",
            ]
        )
        + "\n"
    )
    return (
        ["nginx", "-p", str(wd), "-e", str(wd / "nginx-error.log"), "-c", str(nginx),
         "-g", "daemon off;"],
        ["dnsmasq", "--keep-in-foreground", f"--conf-file={dnsmasq}", "--user=root", "--pid-file="],
    )  # fmt: skip


class Servers:
    """One server (pxetwist, or dnsmasq and nginx) for one run."""

    def __init__(self, kind: str, lab: NetLab, wd: Path, root: Path, args: argparse.Namespace):
        self.kind = kind
        self.lab = lab
        self.procs: list[subprocess.Popen[Any]] = []
        pin = args.pinning.server_prefix
        err = open(wd / "server.err", "w")  # noqa: SIM115 - the lab closes it with the process
        if kind.startswith("pxetwist"):
            profile = Path(args.profile) / f"pxetwist-{wd.name}.prof" if args.profile else None
            sessions = kind != "pxetwist-nosessions"
            argvs = [pxetwist_argv(lab, wd, root, profile, sessions=sessions)]
            kwargs: dict[str, Any] = {"cwd": str(REPO)}
        else:
            argvs = list(reference_argv(lab, wd, root))
            kwargs = {"preexec_fn": raise_nofile}
        for argv in argvs:
            self.procs.append(
                lab.spawn(lab.srv, [*pin, *argv], stdout=err, stderr=subprocess.STDOUT, **kwargs)
            )
        for proto, port in (("tcp", HTTP_PORT), ("udp", 69), ("udp", 67)):
            lab.wait_port(lab.srv, proto, port, timeout=30)  # type: ignore[arg-type]
        if kind.startswith("pxetwist"):
            wait_workers(wd / "pxetwist.log", timeout=30)
        time.sleep(0.5)
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{kind} exited early: {(wd / 'server.err').read_text()}")

    def cpu(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in self.procs:
            out.update(tree_cpu(proc.pid))
        return out

    def stop(self) -> None:
        for proc in self.procs:
            self.lab.stop(proc, grace=20)


def wait_workers(log: Path, timeout: float) -> None:
    """Transfer workers start after the port is bound and say when they are ready; wait for
    them (bounded).  With one CPU (``--pin`` to one), ``workers: auto`` starts none."""
    started_at = time.monotonic()
    while time.monotonic() - started_at < timeout:
        text = log.read_text(errors="replace") if log.exists() else ""
        started = re.search(r"tftp: (\d+) transfer worker processes", text)
        if started is not None:
            if len(re.findall(r"tftp: transfer worker \d+ ready", text)) >= int(started[1]):
                return
        elif time.monotonic() - started_at > 5:
            return
        time.sleep(0.1)
    raise SystemExit("pxetwist's transfer workers did not start; see its log")


def start_clients(
    lab: NetLab, wd: Path, args: argparse.Namespace, files: dict[str, Any], first: int,
    count: int, ramp: float, stages: str = "all", hold: float = 0.0,
) -> tuple[float, list[tuple[subprocess.Popen[Any], Path]]]:  # fmt: skip
    """Start ``args.procs`` client processes playing machines ``first .. first+count-1``
    (one relay address each); return the shared start time and (process, result file)s."""
    start_at = time.time() + 1.0 + 0.2 * args.procs
    per, extra = divmod(count, args.procs)
    pin = args.pinning.client_prefix
    clients = []
    base = first
    for k in range(args.procs):
        n = per + (1 if k < extra else 0)
        spec = {
            "first": first, "count": n, "total": count, "base": base,
            "giaddr": args.giaddrs[k], "server": lab.srv_ip, "tftp_port": 69,
            "http_port": HTTP_PORT, "start_at": start_at, "ramp": ramp,
            "deadline": args.deadline + hold, "uefi_share": args.uefi_share,
            "sample": args.sample, "files": files, "kernel": "vmlinuz",
            "initrd": "initrd.img", "keepalive": args.keepalive,
            "window": args.client_window * 1024,
            "tftp_timeout": 2.0, "tftp_retries": 5, "stages": stages, "hold": hold,
        }  # fmt: skip
        first += n
        name = f"{stages}-{base}-{k}"
        (wd / f"spec-{name}.json").write_text(json.dumps(spec))
        out = wd / f"out-{name}.json"
        argv = [*pin, sys.executable, str(CLIENT), "--spec", str(wd / f"spec-{name}.json"),
                "--out", str(out)]  # fmt: skip
        with (wd / f"client-{name}.err").open("w") as err:
            clients.append((lab.spawn(lab.cli, argv, stderr=err), out))
    return start_at, clients


def start_spy(
    servers: Servers, args: argparse.Namespace, wd: Path, limit: float, index: int
) -> subprocess.Popen[Any] | None:
    """``--spy DIR``: py-spy samples pxetwist (and its transfer workers) through the storm,
    into ``DIR/pxetwist-<ramp>-<run>.txt`` (collapsed stacks, with idle and GIL-less samples
    left out, as bench/dhcp's ``--profile`` writes them)."""
    if not args.spy or not servers.kind.startswith("pxetwist"):
        return None
    py_spy = shutil.which("py-spy") or str(REPO / ".venv" / "bin" / "py-spy")
    out = Path(args.spy) / f"{servers.kind}-{wd.name}-{index}.txt"
    pin = args.pinning.client_prefix  # off the server's CPU
    return subprocess.Popen(
        [*pin, py_spy, "record", "-p", str(servers.procs[0].pid), "--subprocesses", "--gil",
         "-r", "250", "-f", "raw", "-o", str(out), "-d", str(int(limit) + 5), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_spy(spy: subprocess.Popen[Any]) -> None:
    """Interrupt py-spy (it writes what it has) and wait for it, bounded."""
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


# -- one storm -------------------------------------------------------------------------------


def storm(kind: str, ramp: float, lab: NetLab, files: dict[str, Any], root: Path,
          args: argparse.Namespace, index: int) -> dict[str, Any]:  # fmt: skip
    wd = Path(tempfile.mkdtemp(prefix=f"storm-{kind.replace('+', '-')}-"))
    wd.chmod(0o755)
    servers = Servers(kind, lab, wd, root, args)
    clients: list[tuple[subprocess.Popen[Any], Path]] = []
    spy: subprocess.Popen[Any] | None = None
    finished = False
    try:
        counters_before = kernel_counters(lab)
        limit = args.deadline + ramp + 60
        spy = start_spy(servers, args, wd, limit, index)
        before = servers.cpu()
        start_at, clients = start_clients(lab, wd, args, files, 0, args.clients, ramp)
        for proc, _ in clients:
            try:
                proc.wait(max(1.0, start_at + limit - time.time()))
            except subprocess.TimeoutExpired:
                lab.stop(proc)
        after = servers.cpu()
        counters_after = kernel_counters(lab)
        finished = True
    finally:
        for proc, _ in clients:
            lab.stop(proc)
        if spy is not None:
            stop_spy(spy)
        servers.stop()
        if not finished and not args.keep:  # interrupted (SIGTERM, Ctrl-C) or failed
            shutil.rmtree(wd, ignore_errors=True)
    records: list[dict[str, Any]] = []
    client_cpu = 0.0
    for k, (_, out) in enumerate(clients):
        if out.exists():
            data = json.loads(out.read_text())
            records += data["records"]
            client_cpu += data["cpu"]
        else:
            err = (wd / f"client-all-0-{k}.err").read_text(errors="replace")[-2000:]
            print(f"client process {k} left no results:\n{err}", file=sys.stderr)
    result = summarise(kind, ramp, records, cpu_since(before, after), client_cpu, args.clients)
    result["clients_busy"] = clients_busy(client_cpu, result["total"], args.pinning)
    result["run"] = index
    counted = {key: counters_after[key] - counters_before[key] for key in counters_after}
    result["udp_drops"] = {"server": counted["udp_server"], "clients": counted["udp_clients"]}
    result["tcp"] = {
        "retransmitted": counted["tcp_retransmitted"],
        "timeouts": counted["tcp_timeouts"],
        "client_drops": counted["tcp_client_drops"],
    }
    if args.keep:
        print(f"  kept {wd}", file=sys.stderr)
    else:
        shutil.rmtree(wd, ignore_errors=True)
    return result


def _mib(lab: NetLab, ns: str, path: str, prefix: str) -> dict[str, int]:
    """One table (``Udp:``, ``Tcp:``, ``TcpExt:``) of ``path`` in namespace ``ns``."""
    lines = [
        line.split()
        for line in lab.run(ns, ["cat", path], check=True).stdout.splitlines()
        if line.startswith(prefix)
    ]
    return {name: int(value) for name, value in zip(lines[0][1:], lines[1][1:], strict=True)}


def kernel_counters(lab: NetLab) -> dict[str, int]:
    """What each side's kernel dropped or resent, per namespace (counters only grow):

    * ``udp_server`` / ``udp_clients``: UDP datagrams dropped for want of socket buffer
      (``RcvbufErrors``): on the server's side the server was too slow to read them, on the
      clients' side the simulated machines were;
    * ``tcp_retransmitted`` and ``tcp_timeouts``: segments the server resent, and how many
      times a retransmission timer expired (each doubles the next wait: the straggler's delay);
    * ``tcp_client_drops``: segments the clients' sockets dropped for want of receive memory
      (``TCPRcvQDrop``), what those retransmissions repair.
    """
    server_tcp = _mib(lab, lab.srv, "/proc/net/snmp", "Tcp:")
    server_ext = _mib(lab, lab.srv, "/proc/net/netstat", "TcpExt:")
    client_ext = _mib(lab, lab.cli, "/proc/net/netstat", "TcpExt:")
    return {
        "udp_server": _mib(lab, lab.srv, "/proc/net/snmp", "Udp:")["RcvbufErrors"],
        "udp_clients": _mib(lab, lab.cli, "/proc/net/snmp", "Udp:")["RcvbufErrors"],
        "tcp_retransmitted": server_tcp["RetransSegs"],
        "tcp_timeouts": server_ext.get("TCPTimeouts", 0),
        "tcp_client_drops": client_ext.get("TCPRcvQDrop", 0),
    }


def slowest_text(result: dict[str, Any]) -> str:
    """The slowest machine's stages, when it took much longer than the 95th percentile."""
    slow = result.get("slowest")
    if not slow or result["max"] < result["p95"] + 5:
        return ""
    return (
        f" slowest #{slow['index']}: DHCP {slow['dhcp']:.1f}s TFTP {slow['tftp']:.1f}s "
        f"HTTP {slow['http']:.1f}s, {slow['retransmits']} retransmissions"
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(kind: str, ramp: float, records: list[dict[str, Any]], server_cpu: float,
              client_cpu: float, wanted: int) -> dict[str, Any]:  # fmt: skip
    ok = [r for r in records if "end" in r]
    failures = Counter(f"{r['failed'][0]}: {r['failed'][1]}" for r in records if "failed" in r)
    missing = wanted - len(records)
    if missing:
        failures["client: no record"] += missing
    boot = [r["end"] - r["start"] for r in ok]
    stages = {
        "dhcp": [r["ack"] - r["start"] for r in ok],
        "tftp": [r["nbp"] - r["ack"] for r in ok],
        "http": [r["end"] - r["nbp"] for r in ok],
    }
    starts = [r["start"] for r in records if "start" in r]
    slowest = max(ok, key=lambda r: r["end"] - r["start"], default=None)
    return {
        "server": kind,
        "ramp": ramp,
        "booted": len(ok),
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "total": (max(r["end"] for r in ok) - min(starts)) if ok and starts else float("nan"),
        "p50": percentile(boot, 0.5),
        "p95": percentile(boot, 0.95),
        "max": max(boot) if boot else float("nan"),
        "stages": {k: statistics.median(v) if v else float("nan") for k, v in stages.items()},
        # where the last machine's time went: a straggler's stage, beside the medians
        "slowest": None
        if slowest is None
        else {
            "index": slowest["index"],
            "dhcp": slowest["ack"] - slowest["start"],
            "tftp": slowest["nbp"] - slowest["ack"],
            "http": slowest["end"] - slowest["nbp"],
            "retransmits": slowest.get("dhcp_retransmits", 0) + slowest.get("tftp_retransmits", 0),
        },
        "dhcp_retransmits": sum(r.get("dhcp_retransmits", 0) for r in records),
        "tftp_retransmits": sum(r.get("tftp_retransmits", 0) for r in records),
        "sampled": sum(1 for r in ok if r.get("sampled")),
        "server_cpu": server_cpu,
        "cpu_per_boot_ms": 1000 * server_cpu / max(1, len(ok)),
        "client_cpu": client_cpu,
    }


# -- report ----------------------------------------------------------------------------------

#: Above this share of their CPUs, the machines themselves set the pace of the storm.
CLIENTS_BOUND = 0.9


def client_cpu_count(pinning: Pinning) -> int:
    """How many CPUs the simulated machines may use: their ``--pin`` list, or all of ours."""
    if pinning.client_cpus:
        return cpu_mask(pinning.client_cpus).bit_count()
    return len(os.sched_getaffinity(0))


def clients_busy(client_cpu: float, total: float, pinning: Pinning) -> float:
    """The share of their CPUs the machines used over the storm (1.0: all of it)."""
    return client_cpu / (total * client_cpu_count(pinning))


def pair_ratios(runs: list[dict[str, Any]], ref: list[dict[str, Any]], key: str) -> list[float]:
    """``key`` of each run over the reference's run of the same repeat, in repeat order.

    The two runs of a repeat follow each other, so a host whose speed drifts over a set (a
    virtual machine's neighbours) moves both alike; the medians of each server's runs can pair
    one server's fast minutes with the other's slow ones.
    """
    theirs = {r["run"]: r[key] for r in ref if "run" in r}
    return [
        r[key] / theirs[r["run"]]
        for r in sorted(runs, key=lambda r: r.get("run", -1))
        if theirs.get(r.get("run"))
    ]


def pair_text(runs: list[dict[str, Any]], ref: list[dict[str, Any]] | None, key: str) -> str:
    """The median of :func:`pair_ratios` and every pair, or ``-`` without a reference."""
    ratios = pair_ratios(runs, ref, key) if ref is not None else []
    if not ratios:
        return "-"
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return f"{statistics.median(ratios):.2f} ({each})"


def clients_bound_note(results: dict[tuple[str, float], list[dict[str, Any]]]) -> str:
    """A warning under the table when the machines' CPUs, not the servers, set the total.

    All the simulated machines share the CPUs the lab gives them (one, with ``--pin 0:1``),
    where a real room has a CPU per machine. When they are busy nearly all the storm, every
    server's total is their CPU time, and "total vs ref" compares the machines' work rather
    than the servers'; "CPU/boot vs ref" still compares the servers.
    """
    bound = [
        f"{kind} (ramp {ramp:g}): {med(runs, 'clients_busy'):.0%}"
        for (kind, ramp), runs in results.items()
        if all("clients_busy" in r for r in runs) and med(runs, "clients_busy") >= CLIENTS_BOUND
    ]
    if not bound:
        return ""
    return (
        f"\nThe machines' CPUs were busy for {CLIENTS_BOUND:.0%} or more of the storm "
        f"({'; '.join(bound)}, median of the runs): the total time is set by the simulated "
        "machines sharing their CPUs, so 'total vs ref' measures them more than the servers."
    )


def med(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def table(results: dict[tuple[str, float], list[dict[str, Any]]], kinds: list[str]) -> str:
    lines = [
        "| ramp | server | booted | failures | total s | p50 s | p95 s | max s | DHCP / TFTP / "
        "HTTP s (p50) | retrans. DHCP / TFTP | UDP drops server / clients | TCP resent / "
        "timeouts / client drops | server CPU s | CPU ms/boot | client CPU s | clients busy "
        "| total vs ref | CPU/boot vs ref | CPU/boot vs ref, by pair |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (kind, ramp), runs in results.items():
        ref = results.get((REFERENCE, ramp))
        stages = " / ".join(
            f"{statistics.median(r['stages'][s] for r in runs):.2f}"
            for s in ("dhcp", "tftp", "http")
        )
        fails: Counter[str] = Counter()
        for r in runs:
            fails.update(r["failures"])
        fail_text = "; ".join(f"{k} x{v}" for k, v in fails.most_common()) or "0"

        def drops(side: str, runs: list[dict[str, Any]] = runs) -> str:
            counts = [r["udp_drops"][side] for r in runs if "udp_drops" in r]
            return f"{statistics.median(counts):.0f}" if counts else "-"

        def tcp(runs: list[dict[str, Any]] = runs) -> str:
            if not all("tcp" in r for r in runs):
                return "-"
            return " / ".join(
                f"{statistics.median(r['tcp'][key] for r in runs):.0f}"
                for key in ("retransmitted", "timeouts", "client_drops")
            )

        def busy(runs: list[dict[str, Any]] = runs) -> str:
            if not all("clients_busy" in r for r in runs):
                return "-"
            return f"{med(runs, 'clients_busy'):.0%}"

        def ratio(
            key: str,
            runs: list[dict[str, Any]] = runs,
            ref: list[dict[str, Any]] | None = ref,
            kind: str = kind,
        ) -> str:
            if ref is None or kind == REFERENCE or not med(ref, key):
                return "-"
            return f"{med(runs, key) / med(ref, key):.2f}"

        lines.append(
            f"| {ramp:g} | {kind} | {'/'.join(str(r['booted']) for r in runs)} | {fail_text} "
            f"| {med(runs, 'total'):.2f} | {med(runs, 'p50'):.2f} | {med(runs, 'p95'):.2f} "
            f"| {med(runs, 'max'):.2f} | {stages} | {med(runs, 'dhcp_retransmits'):.0f} / "
            f"{med(runs, 'tftp_retransmits'):.0f} | {drops('server')} / {drops('clients')} "
            f"| {tcp()} | {med(runs, 'server_cpu'):.2f} "
            f"| {med(runs, 'cpu_per_boot_ms'):.2f} | {med(runs, 'client_cpu'):.2f} "
            f"| {busy()} | {ratio('total')} | {ratio('cpu_per_boot_ms')} "
            f"| {pair_text(runs, None if kind == REFERENCE else ref, 'cpu_per_boot_ms')} |"
        )
    return "\n".join(lines)


def write_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500, help="machines per storm")
    parser.add_argument("--repeats", type=int, default=3, help="runs per server and ramp")
    parser.add_argument("--ramps", default="0", help="start spreads in s, e.g. 0,5,30")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--procs", type=int, default=2, help="client processes (1-20)")
    parser.add_argument("--pin", help="servers:clients CPU lists for taskset, e.g. 0:1")
    parser.add_argument(
        "--steer-receive",
        action="store_true",
        help="with --pin, each side also receives its packets on its own CPUs (RPS on the "
        "lab's veth pair); by default veth delivers on the sender's CPU",
    )
    parser.add_argument("--uefi-share", type=float, default=0.5, help="share of UEFI machines")
    parser.add_argument("--sample", type=int, default=10, help="every n-th machine: SHA-256")
    parser.add_argument("--nbp-kib", type=int, default=1024)
    parser.add_argument("--kernel-mib", type=int, default=32)
    parser.add_argument("--initrd-mib", type=int, default=8)
    parser.add_argument(
        "--keepalive", action="store_true", help="both HTTP files on one connection"
    )
    parser.add_argument(
        "--client-window",
        type=int,
        default=IPXE_WINDOW_KIB,
        metavar="KIB",
        help=f"largest TCP window a machine advertises (default {IPXE_WINDOW_KIB}, iPXE's); "
        "0: Linux's receive autotuning, up to tcp_rmem's 6 MiB a socket",
    )
    parser.add_argument("--deadline", type=float, default=300, help="s per storm after the ramp")
    parser.add_argument("--profile", help="cProfile each pxetwist run (twistd --profile) into DIR")
    parser.add_argument(
        "--spy", metavar="DIR", help="py-spy each pxetwist run (collapsed stacks) into DIR"
    )
    parser.add_argument("--json", help="write every run's summary here")
    parser.add_argument("--keep", action="store_true", help="keep each run's work directory")
    args = parser.parse_args()
    exit_on_sigterm()  # a kill PID still removes the lab and its servers
    kinds = [k for k in args.servers.split(",") if k]
    for kind in kinds:
        if kind not in SERVERS:
            parser.error(f"unknown server {kind}; known: {', '.join(SERVERS)}")
    if not 1 <= args.procs <= 20 or not 1 <= args.clients <= 60000:
        parser.error("--procs 1..20, --clients 1..60000")
    if not 0 < args.deadline <= 3600:
        parser.error("--deadline 1..3600")
    if not 0 <= args.client_window <= 65536:
        parser.error("--client-window 0..65536 KiB")
    ramps = [float(x) for x in args.ramps.split(",") if x]
    if any(not 0 <= r <= 600 for r in ramps):
        parser.error("ramps 0..600 s")
    if os.geteuid() != 0:
        parser.error("run as root: the lab builds network namespaces")
    try:
        args.pinning = pinning = parse_pin(args.pin)
    except ValueError as error:
        parser.error(str(error))
    for directory in (args.profile, args.spy):
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)

    ram = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="storm-root-", dir=ram if ram.is_dir() else None))
    root.chmod(0o755)
    sizes = {
        "bios.nbp": args.nbp_kib << 10,
        "uefi.nbp": (args.nbp_kib << 10) + 4321,
        "vmlinuz": args.kernel_mib << 20,
        "initrd.img": args.initrd_mib << 20,
    }
    files = {name: (size, write_file(root / name, size)) for name, size in sizes.items()}
    results: dict[tuple[str, float], list[dict[str, Any]]] = {}
    all_runs: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with NetLab(clients=0) as lab:
            # one relay address (giaddr) per client process, on the machines' network
            args.giaddrs = [str(RELAY_NET.network_address + 1 + k) for k in range(args.procs)]
            lab.run(lab.cli, ["ip", "route", "add", "local", str(RELAY_NET), "dev", "lo"],
                    check=True)  # fmt: skip
            lab.run(lab.srv, ["ip", "route", "add", str(RELAY_NET), "via", lab.cli_ip],
                    check=True)  # fmt: skip
            if args.pin and args.steer_receive:
                # Each side's network stack on its own CPUs, as on two machines.
                lab.steer_receive(lab.srv, SRV_IF, pinning.server_cpus)
                lab.steer_receive(lab.cli, SRV_PEER_IF, pinning.client_cpus)
            for ramp in ramps:
                for i in range(args.repeats):
                    order = kinds if i % 2 == 0 else kinds[::-1]
                    for kind in order:
                        r = storm(kind, ramp, lab, files, root, args, i)
                        results.setdefault((kind, ramp), []).append(r)
                        all_runs.append(r)
                        print(
                            f"{kind:14s} ramp={ramp:g} run={i}: booted {r['booted']}/"
                            f"{args.clients} total {r['total']:.2f}s p50 {r['p50']:.2f}s p95 "
                            f"{r['p95']:.2f}s server CPU {r['server_cpu']:.2f}s "
                            f"({r['cpu_per_boot_ms']:.2f} ms/boot) client CPU "
                            f"{r['client_cpu']:.2f}s ({r['clients_busy']:.0%} busy) failures "
                            f"{r['failures'] or 0} TCP "
                            f"resent {r['tcp']['retransmitted']} ({r['tcp']['timeouts']} "
                            f"timeouts, {r['tcp']['client_drops']} client drops)" + slowest_text(r),
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ordered = {k: results[k] for k in sorted(results, key=lambda k: (k[1], kinds.index(k[0])))}
    print(
        f"\n{' '.join(sys.argv)}  ({time.monotonic() - started:.0f} s, {args.clients} machines, "
        f"NBP {args.nbp_kib} KiB, kernel {args.kernel_mib} MiB, initrd {args.initrd_mib} MiB, "
        f"TCP window {f'{args.client_window} KiB' if args.client_window else 'autotuned'}, "
        f"{pinning.describe()}"
        f"{', receive steered' if args.pin and args.steer_receive else ''}"
        f", median of {args.repeats}; {describe_interpreter()})\n"
    )
    print(table(ordered, kinds))
    note = clients_bound_note(ordered)
    if note:
        print(note)
    if args.json:
        Path(args.json).write_text(json.dumps(all_runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

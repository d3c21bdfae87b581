#!/usr/bin/env python3
"""HTTP download throughput: pxetwist against nginx and ``twistd web``, in one NetLab run.

Run as root from the repository root::

    sudo .venv/bin/python bench/http/run.py

Servers, all in the lab's server namespace on its address (10.77.0.1), each on its own port and
all running at once, so that every round measures the three back to back under the same
machine load (this host is noisy; see ../shared/lab/README.md):

  pxetwist     ``twistd -n pxe`` (the venv's), HTTP only: DHCP off, TFTP disabled, port 8081
  nginx        nginx, ``sendfile on; tcp_nopush on``, one worker, access log on, port 8082
  twistd-web   ``twistd -n web --path ROOT`` (the venv's), port 8083

Client: curl in the lab's client namespace. Per server and round: one GET of the big file
(default 64 MiB of random bytes) to /dev/null, timed by curl's ``time_total``; MB/s = 10^6
bytes/s; the median of ``--repeats`` rounds. Then ``--conc`` parallel GETs of the small file
(default 4 MiB), wall time from the first start to the last exit, median of ``--conc-rounds``.
Integrity: one download of the big file per server is checked by SHA-256 before any timing, and
every concurrent download is written to tmpfs and checked after its round. "server CPU" is the
server process's (and nginx's worker's) time on a CPU during one big GET, from schedstat; over
veth it includes the kernel's TCP work done in the sender's context, receive side included.
``--pin 0:1`` runs the servers on CPU 0 and curl on CPU 1 (``taskset``), which takes the
scheduler's placement out of the numbers; ``--pin 0:0`` makes them share one core.

The table gives ratios against nginx and ``twistd web``; the targets are pxetwist >= 0.8x
nginx single-stream and >= 1.5x ``twistd web``. Everything runs inside namespaces the script
creates; every download is bounded by ``--timeout`` seconds, servers are stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxetwist.lab import NetLab, exit_on_sigterm, require_binary, require_lab  # noqa: E402
from pxetwist.lab.pinning import parse_pin  # noqa: E402

VENV_BIN = Path(sys.executable).parent

NGINX_CONF = """
worker_processes 1;
pid {wd}/nginx.pid;
error_log {wd}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    sendfile on; tcp_nopush on;
    access_log {wd}/nginx-access.log;
    client_body_temp_path {wd}/tmp; proxy_temp_path {wd}/tmp;
    fastcgi_temp_path {wd}/tmp; uwsgi_temp_path {wd}/tmp; scgi_temp_path {wd}/tmp;
    types {{ application/octet-stream bin; }}
    server {{ listen {ip}:{port}; root {root}; }}
}}
"""

PXE_CONF = """
interfaces: [srv0]
data_dir: {wd}/pxe-data
dhcp: {{mode: off}}
tftp: {{enabled: false}}
http: {{root: {root}, port: {port}}}
policy: {{chain: [static, arch], plugin_dirs: []}}
"""

PORTS = {"pxetwist": 8081, "nginx": 8082, "twistd-web": 8083}

_PIN: dict[str, list[str]] = {"server": [], "client": []}
"""``taskset -c CPUS`` prefixes for servers and curl, from ``--pin``; empty: no pinning."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def server_argv(kind: str, lab: NetLab, root: Path, wd: Path, twistd: str) -> list[str]:
    port = PORTS[kind]
    if kind == "nginx":
        (wd / "tmp").mkdir(exist_ok=True)
        conf = wd / "nginx.conf"
        conf.write_text(NGINX_CONF.format(wd=wd, ip=lab.srv_ip, port=port, root=root))
        return [
            "nginx", "-p", str(wd), "-e", str(wd / "nginx-error.log"), "-c", str(conf),
            "-g", "daemon off;",
        ]  # fmt: skip
    if kind == "pxetwist":
        conf = wd / "pxe.yaml"
        conf.write_text(PXE_CONF.format(wd=wd, root=root, port=port))
        return [
            twistd, "-n", "--pidfile", str(wd / "pxe.pid"), "--logfile", str(wd / "pxe.log"),
            "pxe", "--config", str(conf),
        ]  # fmt: skip
    if kind == "twistd-web":
        return [
            twistd, "-n", "--pidfile", str(wd / "web.pid"), "--logfile", str(wd / "web.log"),
            "web", "--path", str(root), "--listen", f"tcp:{port}:interface={lab.srv_ip}",
        ]  # fmt: skip
    raise SystemExit(f"unknown server {kind}")


def cpu_seconds(pid: int) -> float:
    """CPU time of *pid*, its threads and its live children (nginx's worker), in seconds.

    From ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on the CPU), which is exact where
    ``stat``'s utime and stime count 10 ms ticks.
    """
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        try:
            tasks = os.listdir(f"/proc/{one}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                total += int(Path(f"/proc/{one}/task/{task}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def curl_time(lab: NetLab, url: str, out: str, timeout: int) -> float:
    """Seconds curl took for one GET (its ``time_total``); raises on any failure."""
    done = lab.run(
        lab.cli,
        [
            *_PIN["client"],
            "curl",
            "-sS",
            "--fail",
            "-m",
            str(timeout),
            "-o",
            out,
            "-w",
            "%{time_total}",
            url,
        ],
        timeout=timeout + 10,
    )
    if done.returncode != 0:
        raise RuntimeError(f"curl {url}: rc {done.returncode}: {done.stderr.strip()}")
    return float(done.stdout.strip())


def concurrent(lab: NetLab, url: str, count: int, out: Path, want: str, timeout: int) -> float:
    """Wall seconds for *count* parallel curls of *url*; every result is checked by SHA-256."""
    for stale in out.glob("c*.bin"):
        stale.unlink()
    start = time.monotonic()
    procs = [
        lab.spawn(
            lab.cli,
            [
                *_PIN["client"],
                "curl",
                "-sS",
                "--fail",
                "-m",
                str(timeout),
                "-o",
                str(out / f"c{i}.bin"),
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(count)
    ]
    failures = []
    for proc in procs:
        try:
            rc = proc.wait(timeout + 10)
        except subprocess.TimeoutExpired:
            NetLab.stop(proc)
            rc = -1
        if rc != 0:
            failures.append(rc)
    elapsed = time.monotonic() - start
    for proc in procs:
        if proc.stderr is not None:
            proc.stderr.close()
    bad = [p.name for p in sorted(out.glob("c*.bin")) if sha256(p) != want]
    if failures or bad or len(list(out.glob("c*.bin"))) != count:
        raise RuntimeError(f"concurrent downloads failed: rc {failures}, corrupt {bad}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", default="pxetwist,nginx,twistd-web")
    ap.add_argument("--big-mib", type=int, default=64)
    ap.add_argument("--small-mib", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7, help="single-stream rounds (>= 5)")
    ap.add_argument("--conc", type=int, default=20)
    ap.add_argument("--conc-rounds", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--twistd", default=str(VENV_BIN / "twistd"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument(
        "--pin",
        metavar="SERVER_CPUS:CLIENT_CPUS",
        help="pin the servers and curl with taskset, e.g. 0:1 (apart) or 0:0 (sharing a core)",
    )
    args = ap.parse_args()
    exit_on_sigterm()  # a kill PID still removes the lab and its servers
    try:
        pinning = parse_pin(args.pin)
    except ValueError as error:
        ap.error(str(error))
    _PIN["server"], _PIN["client"] = pinning.server_prefix, pinning.client_prefix
    require_lab()
    require_binary("curl")
    require_binary("nginx")
    kinds = args.servers.split(",")

    wd = Path(tempfile.mkdtemp(prefix="pxt-httpbench-"))
    os.chmod(wd, 0o755)
    shm = Path(tempfile.mkdtemp(prefix="pxt-httpbench-", dir="/dev/shm"))
    root = wd / "root"
    root.mkdir()
    big, small = root / "big.bin", root / "small.bin"
    with big.open("wb") as f:
        for _ in range(args.big_mib):
            f.write(os.urandom(1 << 20))
    small.write_bytes(os.urandom(args.small_mib << 20))
    want_big, want_small = sha256(big), sha256(small)
    size = big.stat().st_size

    load_before = os.getloadavg()[0]
    single: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    conc: dict[str, list[float]] = {k: [] for k in kinds}
    pids: dict[str, int] = {}
    lab = NetLab(clients=0)
    try:
        lab.up()
        for kind in kinds:
            proc = lab.spawn(
                lab.srv,
                [*_PIN["server"], *server_argv(kind, lab, root, wd, args.twistd)],
                stdout=subprocess.DEVNULL,
                stderr=(wd / f"{kind}.stderr").open("w"),
            )
            lab.wait_port(lab.srv, "tcp", PORTS[kind], timeout=20, proc=proc)
            pids[kind] = proc.pid
        url = {k: f"http://{lab.srv_ip}:{PORTS[k]}/" for k in kinds}
        for kind in kinds:  # integrity first (also warms the page cache)
            check = shm / "check.bin"
            curl_time(lab, url[kind] + "big.bin", str(check), args.timeout)
            if sha256(check) != want_big:
                raise SystemExit(f"{kind}: the big file arrived corrupted")
            check.unlink()
        for _ in range(args.repeats):
            for kind in kinds:
                before = cpu_seconds(pids[kind])
                seconds = curl_time(lab, url[kind] + "big.bin", "/dev/null", args.timeout)
                cpu[kind].append(cpu_seconds(pids[kind]) - before)
                single[kind].append(size / seconds / 1e6)
        for _ in range(args.conc_rounds):
            for kind in kinds:
                conc[kind].append(
                    concurrent(
                        lab, url[kind] + "small.bin", args.conc, shm, want_small, args.timeout
                    )
                )
    finally:
        lab.down()
        shutil.rmtree(shm, ignore_errors=True)
        if args.keep:
            print(f"work directory kept: {wd}", file=sys.stderr)
        else:
            shutil.rmtree(wd, ignore_errors=True)

    report(kinds, single, cpu, conc, size, args)
    pinned = f"pinned {args.pin} (server:client CPUs)" if args.pin else "not pinned"
    print(
        f"\n{os.cpu_count()} CPUs, {pinned}; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    return 0


def report(
    kinds: list[str],
    single: dict[str, list[float]],
    cpu: dict[str, list[float]],
    conc: dict[str, list[float]],
    size: int,
    args: Any,
) -> None:
    med = {k: statistics.median(v) for k, v in single.items()}
    cmed = {k: statistics.median(v) for k, v in conc.items()}

    def ratio(kind: str, other: str) -> str:
        return f"{med[kind] / med[other]:.2f}x" if other in med else "-"

    print(
        f"\nHTTP GET of a {size >> 20} MiB file with curl (MB/s = 10^6 B/s, median of "
        f"{args.repeats}); {args.conc} concurrent GETs of {args.small_mib} MiB (total s, median "
        f"of {args.conc_rounds}); SHA-256 verified\n"
    )
    print(
        "| server | single MB/s | vs nginx | vs twistd web | best MB/s | server CPU ms/GET "
        f"| {args.conc}x{args.small_mib} MiB s | runs (single MB/s; concurrent s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        runs = " / ".join(f"{x:.0f}" for x in single[kind])
        cruns = " / ".join(f"{x:.2f}" for x in conc[kind])
        print(
            f"| {kind} | {med[kind]:.0f} | {ratio(kind, 'nginx')} | {ratio(kind, 'twistd-web')} "
            f"| {max(single[kind]):.0f} | {statistics.median(cpu[kind]) * 1000:.1f} "
            f"| {cmed[kind]:.2f} | {runs}; {cruns} |"
        )
    if {"pxetwist", "nginx", "twistd-web"} <= set(kinds):
        vs_nginx = med["pxetwist"] / med["nginx"]
        vs_web = med["pxetwist"] / med["twistd-web"]
        print(
            f"\ntargets: pxetwist/nginx {vs_nginx:.2f} (>= 0.8: "
            f"{'met' if vs_nginx >= 0.8 else 'MISSED'}), pxetwist/twistd-web {vs_web:.2f} "
            f"(>= 1.5: {'met' if vs_web >= 1.5 else 'MISSED'}); concurrent "
            f"pxetwist/nginx time {cmed['pxetwist'] / cmed['nginx']:.2f}, "
            f"pxetwist/twistd-web time {cmed['pxetwist'] / cmed['twistd-web']:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())

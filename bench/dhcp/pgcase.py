"""The PostgreSQL case of bench/dhcp/run.py (issue 15): one or two servers on one PostgreSQL.

Servers (one throw-away PostgreSQL 15 cluster for the whole run, a fresh database per run):

* ``pxetwist-pg``   one pxetwist, ``dhcp.leases: postgresql://...`` (every ACK after its commit)
* ``pxetwist-pg2``  two pxetwist servers on the same database, active-active
* ``kea-pg``        one kea-dhcp4, ``lease-database: {type: postgresql}`` (schema by
                    ``kea-admin db-init pgsql``)
* ``kea-pg2``       two kea-dhcp4 on the same database, no HA hook (as measured in issue 15)

A "2" case runs two perfdhcp relays at once (giaddrs 10.77.0.2 and 10.77.0.20), one per server
(10.77.0.1 and 10.77.0.10, the second in its own namespace), each offered half the rate; the
rate is the sum of both.  By default the two relays' clients are different machines (MAC
bases 00:0c:01:... and 00:0c:02:...): the capacity of the pair.  ``--shared-macs`` gives both
relays the same clients, so that every machine reaches both servers at once: the contention
case, where the database decides and a REQUEST that lost its claim is NAKed (perfdhcp counts
a NAK as a lost exchange).  With ``--audit`` tcpdump records the run
and every run prints the addresses ACKed to two clients and the clients ACKed two addresses
(pxetwist.lab.dhcpaudit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pxetwist.lab import SRV_IF, NetLab
from pxetwist.lab.dhcpaudit import audit, read_pcap
from pxetwist.lab.postgres import PostgresCluster

PG_SERVERS = ("pxetwist-pg", "pxetwist-pg2", "kea-pg", "kea-pg2")
SECOND_IF, SECOND_IP, SECOND_RELAY = "eth0", "10.77.0.10", "10.77.0.20"

_cluster: PostgresCluster | None = None
_runs = 0


def prepare(lab: NetLab) -> None:
    """Start the cluster and give the second server and relay their addresses."""
    global _cluster
    _cluster = PostgresCluster()
    _cluster.start()
    second = lab.clients[0]
    subprocess.run(["ip", "-n", second, "addr", "add", f"{SECOND_IP}/16", "dev", SECOND_IF],
                   check=True, timeout=10)  # fmt: skip
    subprocess.run(["ip", "-n", lab.cli, "addr", "add", f"{SECOND_RELAY}/16", "dev", "br0"],
                   check=True, timeout=10)  # fmt: skip


def finish() -> None:
    global _cluster
    if _cluster is not None:
        _cluster.close()
        _cluster = None


def _database(kind: str) -> tuple[str, str]:
    global _runs
    assert _cluster is not None
    _runs += 1
    name = f"bench{_runs}"
    url = _cluster.create_database(name)
    if kind.startswith("kea"):
        subprocess.run(
            ["kea-admin", "db-init", "pgsql", "-n", name, "-u", _cluster.superuser, "-p", "x",
             "-h", str(_cluster.socket_dir), "-P", str(_cluster.port)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return name, url


def _kea(
    lab: NetLab, ns: str, interface: str, wd: Path, name: str, pool: tuple[str, str]
) -> subprocess.Popen[Any]:
    assert _cluster is not None
    conf = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [interface], "dhcp-socket-type": "udp"},
            "lease-database": {
                "type": "postgresql",
                "name": name,
                "host": str(_cluster.socket_dir),
                "port": _cluster.port,
                "user": _cluster.superuser,
            },
            "valid-lifetime": 3600,
            "subnet4": [{"subnet": str(lab.subnet), "pools": [{"pool": f"{pool[0]} - {pool[1]}"}]}],
            "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                         "output_options": [{"output": f"{wd}/kea.log"}]}],
        }
    }  # fmt: skip
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "kea-dhcp4.conf").write_text(json.dumps(conf, indent=1))
    env = dict(os.environ, KEA_LOCKFILE_DIR=str(wd), KEA_PIDFILE_DIR=str(wd))
    with open(wd / "server.err", "w") as err:
        return lab.spawn(ns, ["kea-dhcp4", "-c", str(wd / "kea-dhcp4.conf")],
                         stdout=subprocess.DEVNULL, stderr=err, env=env)  # fmt: skip


def _pxetwist(
    lab: NetLab,
    ns: str,
    interface: str,
    wd: Path,
    url: str,
    config_for: Callable[..., Path],
    twistd: Path,
) -> subprocess.Popen[Any]:
    wd.mkdir(parents=True, exist_ok=True)
    config = config_for(wd, lab, url)
    text = config.read_text().replace(f"interfaces: [{SRV_IF}]", f"interfaces: [{interface}]")
    config.write_text(text)
    argv = [str(twistd), "-n", "--pidfile=", "-l", str(wd / "pxetwist.log"), "pxe", "-c",
            str(config)]  # fmt: skip
    with open(wd / "server.err", "w") as err:
        return lab.spawn(ns, argv, stdout=subprocess.DEVNULL, stderr=err)


def one_run(
    kind: str,
    rate: int,
    lab: NetLab,
    args: argparse.Namespace,
    wd: Path,
    *,
    pool: tuple[str, str],
    config_for: Callable[..., Path],
    twistd: Path,
    perfdhcp: Callable[..., str],
    parse: Callable[[str, int, float], Any],
) -> tuple[Any, str]:
    """One run of a PostgreSQL case; returns (Run, perfdhcp output) like run.py's one_run."""
    name, url = _database(kind)
    pair = kind.endswith("2")
    places = [(lab.srv, SRV_IF, lab.srv_ip, lab.cli_ip)]
    if pair:
        places.append((lab.clients[0], SECOND_IF, SECOND_IP, SECOND_RELAY))
    procs = []
    capture = wd / "dhcp.pcap"
    tcpdump = None
    try:
        for n, (ns, interface, _, _) in enumerate(places):
            where = wd / f"server{n}"
            if kind.startswith("kea"):
                procs.append(_kea(lab, ns, interface, where, name, pool))
            else:
                procs.append(_pxetwist(lab, ns, interface, where, url, config_for, twistd))
        for proc, (ns, _, _, _) in zip(procs, places, strict=True):
            lab.wait_port(ns, "udp", 67, timeout=30, proc=proc)
        time.sleep(0.3)
        if args.audit:
            tcpdump = lab.spawn(lab.cli, ["tcpdump", "-i", "br0", "-n", "-U", "-s", "700", "-Z",
                                          "root", "-w", str(capture), "udp port 67 or udp port 68"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(1.0)
        outputs: list[str] = [""] * len(places)
        share = rate // len(places) if rate else 0

        def drive(i: int) -> None:
            _, _, server_ip, relay = places[i]
            base = None if args.shared_macs or i == 0 else "00:0c:02:02:03:04"
            outputs[i] = perfdhcp(lab, share, relay, server_ip, base)

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(places))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.period + 120)
    finally:
        if tcpdump is not None:
            time.sleep(0.5)
            lab.stop(tcpdump, grace=5)
        for proc in procs:
            lab.stop(proc, grace=10)
    runs = [parse(out, share, args.period) for out in outputs]
    total = runs[0]
    for other in runs[1:]:
        for field in ("rate", "discover_sent", "discover_drops", "request_sent", "request_drops"):
            setattr(total, field, getattr(total, field) + getattr(other, field))
    total.offered = rate
    text = "\n".join(outputs)
    if args.audit and capture.exists():
        report = audit(read_pcap(capture))
        text += (
            f"\naudit: {report.acks} ACKs, {report.naks} NAKs, "
            f"{len(report.duplicate_addresses)} addresses ACKed to two clients, "
            f"{len(report.duplicate_clients)} clients ACKed two live addresses\n"
        )
        print(f"  {kind} audit: " + text.rsplit("audit: ", 1)[1].strip(), flush=True)
    return total, text

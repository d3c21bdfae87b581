"""NFS export wrapper: how soon an export is usable, and how soon a killed Ganesha serves again.

No peer PXE server makes exports (dnsmasq, Pixiecore, Smee, matchbox and PyPXE leave NFS to the
operator), so there is no reference to run beside; these are pxetwist's own figures, taken in a
throw-away namespace lab with ``twistd -n pxe`` (proxyDHCP mode, HTTP on, a managed Ganesha):

* **grant**: a machine fetches ``boot.ipxe?mac=<new MAC>`` from the client namespace's address
  (so the new MAC takes the address over: the previous machine's export is withdrawn and the new
  one's granted over DBus); the time until libnfs ``nfs-ls`` of the new export succeeds.  The
  floor is one ``nfs-ls`` of an export that already works (``nfs-ls alone``), also reported.
* **recovery**: Ganesha killed with SIGKILL; the time until ``nfs-ls`` of the export succeeds
  again (pxetwist's supervisor restarts dbus-daemon, rpcbind and Ganesha with the exports).

Every loop is bounded (``--grants``, ``--kills``, a timeout per wait); everything is stopped by
PID and the lab removed at the end.  Run as root from the repository::

    sudo .venv/bin/python bench/nfs/run.py --grants 30 --kills 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import time

import yaml

from pxetwist.lab import NetLab, exit_on_sigterm, require_lab
from pxetwist.lab.nfs import NfsLabServer, nfs_ls, nfs_url

CLIENT_IP = "10.77.0.10"
WAIT = 60.0  # seconds any one wait may take


def _mac(index: int) -> str:
    return f"52:54:00:78:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}"


def _until_mounts(lab: NetLab, url: str) -> float:
    start = time.monotonic()
    while nfs_ls(lab, "c1", url).returncode != 0:
        if time.monotonic() - start > WAIT:
            raise RuntimeError(f"{url} not usable after {WAIT}s")
        time.sleep(0.01)
    return time.monotonic() - start


def _summary(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return (
        f"{name:<12} n={len(ms):<4} median {statistics.median(ms):7.1f} ms   "
        f"p90 {p90:7.1f} ms   min {ms[0]:7.1f} ms   max {ms[-1]:7.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=30, help="machines granted one by one")
    parser.add_argument("--kills", type=int, default=3, help="Ganesha SIGKILLs to recover from")
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a kill PID still removes the lab and its servers
    require_lab()
    lab = NetLab(clients=1).up()
    server = None
    try:
        lab.run("c1", ["ip", "addr", "add", f"{CLIENT_IP}/16", "dev", "eth0"], check=True)
        server = NfsLabServer(
            lab,
            {
                "dhcp": {"mode": "proxy"},
                "nfs": {"versions": ["4.0", "4.1", "3"]},
                "defaults": {
                    "kernel": "linux",
                    "nfs": [{"path": "hosts/{mac}", "access": "rw", "create": True}],
                },
            },
        )
        http = server.workdir / "http"
        http.mkdir()
        (http / "linux").write_bytes(b"kernel")
        server.config["http"] = {"enabled": True, "root": str(http), "port": 8080}
        server.config_path.write_text(yaml.safe_dump(server.config, sort_keys=False))
        server.start()
        server.wait_log("nfs: Ganesha is up", timeout=WAIT)
        lab.wait_port("srv", "tcp", 8080, 15)

        grants: list[float] = []
        floor: list[float] = []
        url = ""
        for index in range(args.grants):
            mac = _mac(index)
            started = time.monotonic()
            lab.run(
                "c1",
                ["curl", "-sS", "--max-time", "20", "-o", "/dev/null",
                 f"http://{lab.srv_ip}:8080/boot.ipxe?mac={mac}"],
                timeout=30,
                check=True,
            )  # fmt: skip
            url = nfs_url(lab.srv_ip, server.pseudo(mac, f"hosts/{mac.replace(':', '-')}"))
            _until_mounts(lab, url)
            grants.append(time.monotonic() - started)
            floor.append(_until_mounts(lab, url))

        recoveries: list[float] = []
        for _ in range(args.kills):
            pid = server.ganesha_pid()
            if pid is None:
                raise RuntimeError("no Ganesha to kill")
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while server.ganesha_pid() in (None, pid):
                if time.monotonic() - started > WAIT:
                    raise RuntimeError("Ganesha was not restarted")
                time.sleep(0.01)
            _until_mounts(lab, url)
            recoveries.append(time.monotonic() - started)
            time.sleep(2)  # let the supervisor's back-off settle between kills

        print(_summary("grant", grants))
        print(_summary("nfs-ls alone", floor))
        print(_summary("recovery", recoveries))
        return 0
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
        lab.down()


if __name__ == "__main__":
    sys.exit(main())

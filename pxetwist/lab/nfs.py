"""pxetwist with its NFS export wrapper in a :class:`~pxetwist.lab.NetLab`, and libnfs clients.

:class:`NfsLabServer` runs ``twistd -n pxe`` in the lab's server namespace with a config that
turns ``nfs`` on (and whatever else the test passes); the managed Ganesha, its dbus-daemon and
rpcbind are pxetwist's children there.  :func:`nfs_ls`, :func:`nfs_cat` and :func:`nfs_put` are
libnfs's user-space clients (``libnfs-utils``) run in a client namespace, so the address a
request comes from is that namespace's.  Everything is stopped by PID.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pxetwist.lab.netlab import SRV_IF, LabError, NetLab
from pxetwist.nfs.paths import pseudo_path
from pxetwist.policy.values import MacAddress

__all__ = ["NfsLabServer", "nfs_cat", "nfs_ls", "nfs_put", "nfs_url", "process_names"]

TWISTD = Path(sys.executable).with_name("twistd")
IMPORT_ROOT = Path(__file__).resolve().parents[2]
CLIENT_TIMEOUT = 30.0


def nfs_url(server: str, pseudo: str, path: str = "", version: str = "3") -> str:
    """A libnfs URL; NFSv3 mounts the pseudo path too (Ganesha's ``Mount_Path_Pseudo``)."""
    url = f"nfs://{server}{pseudo}"
    if path:
        url += "/" + path.lstrip("/")
    if version == "4":
        url += "?version=4"
    return url


def nfs_ls(lab: NetLab, ns: str, url: str) -> subprocess.CompletedProcess[str]:
    return lab.run(ns, ["nfs-ls", url], timeout=CLIENT_TIMEOUT)


def nfs_cat(lab: NetLab, ns: str, url: str) -> subprocess.CompletedProcess[str]:
    return lab.run(ns, ["nfs-cat", url], timeout=CLIENT_TIMEOUT)


def nfs_put(lab: NetLab, ns: str, local: Path, url: str) -> subprocess.CompletedProcess[str]:
    """Write ``local`` to ``url`` with ``nfs-cp`` (as root: the client sends uid 0)."""
    return lab.run(ns, ["nfs-cp", str(local), url], timeout=CLIENT_TIMEOUT)


def process_names(lab: NetLab, ns: str) -> dict[int, str]:
    """PID -> command name of every process in namespace ``ns``."""
    out = subprocess.run(
        ["ip", "netns", "pids", ns if ns in lab.namespaces else lab._ns(ns)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    names: dict[int, str] = {}
    for text in out.split():
        try:
            names[int(text)] = Path(f"/proc/{text}/comm").read_text().strip()
        except (OSError, ValueError):
            continue
    return names


class NfsLabServer:
    """``twistd -n pxe`` with NFS on, in ``lab.srv``; ``workdir`` holds config, data and logs."""

    def __init__(self, lab: NetLab, config: Mapping[str, Any], workdir: Path | None = None):
        self.lab = lab
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="pxetwist-nfslab-"))
        os.chmod(self.workdir, 0o755)
        self.data_dir = self.workdir / "data"
        self.root = self.workdir / "nfs"
        self.root.mkdir(exist_ok=True)
        base: dict[str, Any] = {
            "interfaces": [SRV_IF],
            "data_dir": str(self.data_dir),
            "tftp": {"enabled": False},
            "http": {"enabled": False},
            "dhcp": {"mode": "off"},
        }
        merged = {**base, **config}
        merged["nfs"] = {"enabled": True, "root": str(self.root), **dict(config.get("nfs", {}))}
        self.config = merged
        self.config_path = self.workdir / "pxe.yaml"
        self.config_path.write_text(yaml.safe_dump(merged, sort_keys=False))
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "twistd.log"

    @property
    def ganesha_dir(self) -> Path:
        return self.data_dir / "nfs" / "ganesha"

    def start(self) -> None:
        argv = [
            str(TWISTD),
            "-n",
            "--logfile",
            str(self.log_path),
            "--pidfile",
            str(self.workdir / "twistd.pid"),
            "pxe",
            "--config",
            str(self.config_path),
        ]
        with (self.workdir / "twistd.out").open("wb") as out:
            self.proc = self.lab.spawn(
                "srv", argv, cwd=str(IMPORT_ROOT), stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM twistd (which stops Ganesha, rpcbind and dbus-daemon) and wait for it."""
        if self.proc is None:
            return None
        code = NetLab.stop(self.proc, grace)
        self.proc = None
        return code

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, needle: str, timeout: float = 60.0, count: int = 1) -> None:
        """Wait until ``needle`` is in the log ``count`` times (fail early if twistd died)."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(needle) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"twistd exited (rc {self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"no {needle!r} in the log after {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 40) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        ganesha = self.ganesha_dir / "ganesha.log"
        if ganesha.exists():
            text += "\n--- ganesha.log\n" + "\n".join(
                ganesha.read_text(errors="replace").splitlines()[-15:]
            )
        return text

    def pseudo(self, mac: str, relative: str) -> str:
        """The pseudo path pxetwist gives ``mac``'s export of ``relative`` (from its key)."""
        key = (self.data_dir / "nfs" / "pseudo.key").read_bytes()
        return pseudo_path(key, MacAddress.parse(mac), relative)

    def ganesha_pid(self) -> int | None:
        try:
            pid = int((self.ganesha_dir / "ganesha.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

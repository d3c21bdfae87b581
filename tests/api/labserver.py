"""``twistd -n pxe`` with the operator API in a lab's server namespace, for the API lab tests.

The server is authoritative for 10.77.0.0/16, serves TFTP (and HTTP when asked) from a work
directory, and listens for the API on the server namespace's loopback, 127.0.0.1:8090; the lab
has one bare client namespace whose interface takes ``MAC``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import yaml
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import NetLab, require_binary, require_lab

VENV_BIN = Path(sys.executable).parent
API = "http://127.0.0.1:8090"


class ApiLabCase(SynchronousTestCase):
    mac: ClassVar[str]
    token: ClassVar[str]
    access: ClassVar[str] = "read"
    files: ClassVar[dict[str, bytes]] = {}  # "tftp/name" or "http/name" -> content

    def server_config(self) -> dict[str, Any]:
        """What the test adds to (or changes in) the config."""
        return {}

    def setUp(self) -> None:
        require_lab(self)
        self.curl = require_binary("curl", self)
        self.base = Path(tempfile.mkdtemp(prefix="pxetwist-apilab-"))
        os.chmod(self.base, 0o755)
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        for root in ("tftp", "http"):
            (self.base / root).mkdir()
        for name, content in self.files.items():
            (self.base / name).write_bytes(content)
        tokens = {"ops": {"token": self.token, "access": self.access}}
        (self.base / "tokens.yaml").write_text(yaml.safe_dump(tokens))
        self.lab = NetLab(clients=1).up()
        self.addCleanup(self.lab.down)
        self.client_ns = self.lab.clients[0]
        self.lab.run(self.client_ns, ["ip", "link", "set", "eth0", "address", self.mac], check=True)
        config: dict[str, Any] = {
            "interfaces": ["srv0"],
            "data_dir": str(self.base / "data"),
            "dhcp": {
                "mode": "authoritative",
                "subnets": [{"network": "10.77.0.0/16", "range": ["10.77.1.10", "10.77.1.200"]}],
                "boot_server": False,
            },
            "tftp": {"enabled": True, "root": str(self.base / "tftp"), "workers": 0},
            "http": {"enabled": False, "root": str(self.base / "http")},
            "policy": {"chain": ["static", "arch"], "plugin_dirs": []},
            "api": {"listen": "127.0.0.1:8090", "tokens_file": str(self.base / "tokens.yaml")},
            **self.server_config(),
        }
        self.config = self.base / "pxe.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = self.base / "twistd.log"
        argv = [str(VENV_BIN / "twistd"), "-n", "--pidfile", str(self.base / "twistd.pid")]
        argv += ["--logfile", str(self.log), "pxe", "--config", str(self.config)]
        self.server = self.lab.spawn(self.lab.srv, argv)
        self.addCleanup(NetLab.stop, self.server)
        try:
            self.lab.wait_port(self.lab.srv, "udp", 67, timeout=30, proc=self.server)
            self.lab.wait_port(self.lab.srv, "tcp", 8090, timeout=30, proc=self.server)
        except Exception:
            raise AssertionError(f"twistd pxe did not start:\n{self.log_text()}") from None

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"

"""A reservation made through the API in the lab (issue 14): the scripted DHCP client gets the
address a POST reserved, from the running server, without a restart; a DELETE frees it.

``twistd -n pxe`` in the server namespace of a :class:`~pxetwist.lab.NetLab` (see
:mod:`tests.api.labserver`); the operator is ``curl`` in that namespace, the machine the
scripted BIOS PXE client of the DHCP lab tests in a bare client namespace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.api.labserver import API, VENV_BIN, ApiLabCase

PXECLIENT = Path(__file__).resolve().parents[1] / "dhcp" / "pxeclient.py"
MAC = "52:54:00:77:0b:01"
TOKEN = "lab-write-token-reservations-0123"
RESERVED = "10.77.0.77"  # outside the range: only a reservation can give it


class ReservationLabTests(ApiLabCase):
    mac = MAC
    token = TOKEN
    access = "write"
    files = {"tftp/undionly.kpxe": b"\x90" * 2048}

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        """``curl`` on the server: the HTTP status and the body."""
        argv = [self.curl, "-sS", "--max-time", "20", "-X", method, "-w", "\n%{http_code}"]
        argv += ["-H", f"Authorization: Bearer {TOKEN}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        done = self.lab.run(self.lab.srv, [*argv, API + path], timeout=30)
        self.assertEqual(done.returncode, 0, f"{path}: {done.stderr}")
        text, _, status = str(done.stdout).rpartition("\n")
        return int(status), text

    def dora(self) -> str:
        """One DORA of the BIOS PXE ROM; the address it was ACKed."""
        argv = [str(VENV_BIN / "python"), str(PXECLIENT), "--kind", "bios", "--dora"]
        argv += ["--window", "2", "--expect", "1"]
        done = self.lab.run(self.client_ns, argv, timeout=30)
        self.assertEqual(done.returncode, 0, f"{done.stderr}\n{self.log_text()}")
        address = json.loads(done.stdout)["address"]
        self.assertIsNotNone(address, self.log_text())
        return str(address)

    def test_the_client_gets_the_address_a_post_reserved_without_a_restart(self) -> None:
        before = self.dora()
        self.assertNotEqual(before, RESERVED)
        machine = {"mac": MAC, "name": "res-lab", "address": RESERVED}
        status, text = self.api("POST", "/api/v1/machines", machine)
        self.assertEqual(status, 201, text)
        self.assertEqual(self.dora(), RESERVED, self.log_text())
        leases = json.loads(self.api("GET", f"/api/v1/leases?mac={MAC}&active=true")[1])
        self.assertEqual([lease["address"] for lease in leases], [RESERVED])
        status, text = self.api("DELETE", f"/api/v1/machines/{MAC}")
        self.assertEqual(status, 204, text)
        # Unreserved, the address is outside the range: the client is moved into it.
        self.assertNotEqual(self.dora(), RESERVED, self.log_text())
        self.assertIsNone(self.server.poll(), "the server kept running")

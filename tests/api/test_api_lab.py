"""The operator API in the lab: a machine added through it boots without a restart, deleting it
stops it booting, and ``/metrics`` and ``/api/v1/sessions`` show what happened.

``twistd -n pxe`` runs in the server namespace of a :class:`~pxetwist.lab.NetLab`, DHCP
authoritative with the policy chain ``[static]`` (an unlisted machine gets no answer), TFTP on,
the API on the server namespace's loopback.  The operator's side is ``pxetwist machines`` and
``curl`` run inside that namespace; the machine is the scripted PXE client of the DHCP lab tests
(a BIOS PXE ROM) plus curl's TFTP client for the NBP, in a bare client namespace.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.api.labserver import API, VENV_BIN, ApiLabCase

PXECLIENT = Path(__file__).resolve().parents[1] / "dhcp" / "pxeclient.py"
MAC = "52:54:00:77:0a:01"
TOKEN = "lab-write-token-0123456789"
NBP = bytes(range(256)) * 300  # 76,800 bytes: several TFTP blocks


class ApiLabTests(ApiLabCase):
    mac = MAC
    token = TOKEN
    access = "write"
    files = {"tftp/undionly.kpxe": NBP}

    def server_config(self) -> dict[str, Any]:
        return {"policy": {"chain": ["static"], "plugin_dirs": []}}  # unlisted: no answer

    def pxetwist(self, *args: str) -> Any:
        """``pxetwist ... --json`` as the operator runs it on the server; its JSON."""
        code, out, err = self.pxetwist_text(*args, "--json")
        self.assertEqual(code, 0, f"{args}: {err}\n{self.log_text()}")
        return json.loads(out)

    def pxetwist_text(self, *args: str) -> tuple[int, str, str]:
        """``pxetwist ... --api URL``, the token from the environment."""
        argv = ["env", f"PXETWIST_API_TOKEN={TOKEN}", str(VENV_BIN / "pxetwist"), *args]
        done = self.lab.run(self.lab.srv, [*argv, "--api", API], timeout=60)
        return done.returncode, str(done.stdout), str(done.stderr)

    def get(self, path: str, token: bool = True) -> str:
        argv = [self.curl, "-sS", "--fail", "--max-time", "20"]
        if token:
            argv += ["-H", f"Authorization: Bearer {TOKEN}"]
        done = self.lab.run(self.lab.srv, [*argv, API + path], timeout=30)
        self.assertEqual(done.returncode, 0, f"{path}: {done.stderr}")
        return str(done.stdout)

    def discover(self) -> dict[str, Any]:
        """One DORA of the BIOS PXE ROM; the offers it got (file name per offer)."""
        argv = [str(VENV_BIN / "python"), str(PXECLIENT), "--kind", "bios", "--dora"]
        argv += ["--window", "2", "--expect", "1"]
        done = self.lab.run(self.client_ns, argv, timeout=30)
        self.assertEqual(done.returncode, 0, f"{done.stderr}\n{self.log_text()}")
        return dict(json.loads(done.stdout))

    def fetch_nbp(self, address: str) -> bytes:
        """The NBP over TFTP from the address the ACK gave (configured for the download)."""
        self.lab.run(
            self.client_ns, ["ip", "addr", "add", f"{address}/16", "dev", "eth0"], check=True
        )
        try:
            out = self.base / "nbp"
            argv = [self.curl, "-sS", "--max-time", "30", "-o", str(out)]
            argv += [f"tftp://{self.lab.srv_ip}/undionly.kpxe"]
            done = self.lab.run(self.client_ns, argv, timeout=60)
            self.assertEqual(done.returncode, 0, f"{done.stderr}\n{self.log_text()}")
            return out.read_bytes()
        finally:
            self.lab.run(self.client_ns, ["ip", "addr", "flush", "dev", "eth0"])

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        found = {}
        for family in text_string_to_metric_families(self.get("/metrics", token=False)):
            for sample in family.samples:
                found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def boot_files(self, run: dict[str, Any]) -> list[bytes]:
        """The boot file (the BOOTP ``file`` field, §2.2) of each offer the client got."""
        offers = [bytes.fromhex(r["hex"]) for r in run["replies"] if r["step"] == "discover"]
        self.assertTrue(offers, self.log_text())
        return [offer[108:236].rstrip(b"\0") for offer in offers]

    def test_machine_added_boots_and_deleted_stops(self) -> None:
        # Unlisted: an address (the server is authoritative) but nothing to boot: the
        # static-only chain has no answer for it.
        first = self.discover()
        self.assertEqual(self.boot_files(first), [b""])

        added = self.pxetwist("machines", "add", MAC, "--name", "lab1")
        self.assertEqual((added["mac"], added["source"]), (MAC, "api"))
        booted = self.discover()
        self.assertEqual(self.boot_files(booted), [b"undionly.kpxe"])
        self.assertIsNotNone(booted["address"], self.log_text())
        self.assertEqual(self.fetch_nbp(booted["address"]), NBP)

        # The server saw it: metrics, the machine list, its session.
        deadline = time.monotonic() + 20
        while True:
            found = self.metrics()
            transfers = found.get(
                ("pxetwist_tftp_transfers_total", (("ended", "completed"), ("outcome", "ok"))), 0
            )
            if transfers >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(transfers, 1, sorted(k for k in found if k[0].startswith("pxetwist_tftp")))
        self.assertEqual(found[("pxetwist_tftp_sent_bytes_total", ())], len(NBP))
        # Two DORAs so far (unlisted, then listed): each one DISCOVER offered, one REQUEST acked.
        packets = {
            (dict(labels)["message_type"], dict(labels)["answer"]): value
            for (name, labels), value in found.items()
            if name == "pxetwist_dhcp_packets_total" and dict(labels)["arch"] == "bios"
        }
        self.assertEqual(packets, {("discover", "replied"): 2, ("request", "replied"): 2})
        self.assertEqual(found[("pxetwist_dhcp_replies_total", (("reply", "offer"),))], 2)
        self.assertEqual(found[("pxetwist_dhcp_replies_total", (("reply", "ack"),))], 2)
        self.assertGreaterEqual(
            found[("pxetwist_policy_decisions_total", (("outcome", "boot"), ("policy", "static")))],
            1,
        )
        self.assertGreaterEqual(
            found[("pxetwist_policy_decisions_total", (("outcome", "none"), ("policy", "static")))],
            1,
        )
        self.assertEqual(
            found[("pxetwist_dhcp_pool_used_addresses", (("subnet", "10.77.0.0/16"),))], 1
        )
        leases = json.loads(self.get(f"/api/v1/leases?mac={MAC}"))
        self.assertEqual(
            [(lease["address"], lease["state"]) for lease in leases], [(booted["address"], "bound")]
        )
        sessions = json.loads(self.get(f"/api/v1/sessions/{MAC}"))
        self.assertTrue(sessions, self.log_text())
        # (the unlisted DORA counts as the same attempt: it never got past DHCP)
        events = sessions[0]["events"]
        self.assertEqual([e["stage"] for e in events[-3:]], ["dhcp-offer", "dhcp-ack", "nbp"])
        self.assertEqual(events[-3]["details"]["policy"], "static")
        self.assertEqual(events[-1]["details"]["file"], "undionly.kpxe")

        # The same through the command line: sessions and reload of the running server.
        remote = self.pxetwist("sessions", "--mac", MAC)
        self.assertEqual([e["stage"] for e in remote[0]["events"]][-1], "nbp")
        code, out, err = self.pxetwist_text("sessions", "--mac", MAC)
        self.assertEqual(code, 0, err)
        self.assertIn(f"{MAC} in-progress at nbp", out)
        code, out, err = self.pxetwist_text("reload")
        self.assertEqual((code, out.splitlines()[0]), (0, f"reloaded {self.config}"), err)
        good = self.config.read_text()
        self.config.write_text(good + "tftp: {enabled: maybe}\n")
        code, out, err = self.pxetwist_text("reload")
        self.assertEqual(code, 1)
        self.assertIn("422", err)
        self.assertIn(f"{self.config}:", err)
        self.config.write_text(good)

        # Deleted: no answer again, no restart.
        self.pxetwist("machines", "delete", MAC)
        again = self.discover()
        self.assertEqual(self.boot_files(again), [b""])
        self.assertEqual(self.server.poll(), None)

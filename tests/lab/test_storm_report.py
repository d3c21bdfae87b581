"""The storm report (bench/storm/run.py) says when the machines, not the servers, set the pace.

The lab's simulated machines share the CPUs it gives them (one with ``--pin 0:1``), where a real
room has a CPU per machine. When they were busy nearly all the storm, the total time is theirs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

RUN = Path(__file__).resolve().parents[2] / "bench" / "storm" / "run.py"


def load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("storm_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("storm_run", module)
    spec.loader.exec_module(module)
    return module


def record(index: int, end: float) -> dict[str, Any]:
    return {"index": index, "start": 0.0, "ack": 0.1, "nbp": end / 2, "end": end}


class ClientsBusyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.storm = load_run()

    def summary(self, kind: str, client_cpu: float, cpus: str) -> dict[str, Any]:
        records = [record(0, 10.0), record(1, 20.0)]
        result: dict[str, Any] = self.storm.summarise(kind, 0.0, records, 5.0, client_cpu, 2)
        pinning = self.storm.Pinning("0", cpus)
        result["clients_busy"] = client_cpu / (
            result["total"] * self.storm.client_cpu_count(pinning)
        )
        result["udp_drops"] = {"server": 0, "clients": 0}
        result["tcp"] = {"retransmitted": 0, "timeouts": 0, "client_drops": 0}
        return result

    def test_cpu_count_is_the_client_pin_list(self) -> None:
        self.assertEqual(self.storm.client_cpu_count(self.storm.Pinning("0", "1")), 1)
        self.assertEqual(self.storm.client_cpu_count(self.storm.Pinning("0", "1-3,5")), 4)

    def test_busy_is_client_cpu_over_the_storm_on_its_cpus(self) -> None:
        self.assertAlmostEqual(self.summary("pxetwist", 19.0, "1")["clients_busy"], 0.95)
        self.assertAlmostEqual(self.summary("pxetwist", 19.0, "1,2")["clients_busy"], 0.475)

    def test_the_table_shows_it_and_a_note_warns(self) -> None:
        results = {
            ("pxetwist", 0.0): [self.summary("pxetwist", 19.0, "1")],
            ("dnsmasq+nginx", 0.0): [self.summary("dnsmasq+nginx", 18.8, "1")],
        }
        table = self.storm.table(results, ["pxetwist", "dnsmasq+nginx"])
        header, _, pxetwist_row, _ = table.splitlines()
        self.assertIn("| clients busy |", header)
        self.assertIn("| 95% |", pxetwist_row)
        note = self.storm.clients_bound_note(results)
        self.assertIn("pxetwist (ramp 0): 95%", note)
        self.assertIn("dnsmasq+nginx (ramp 0): 94%", note)
        self.assertIn("'total vs ref' measures them", note)

    def test_no_note_when_the_machines_had_cpu_to_spare(self) -> None:
        results = {("pxetwist", 0.0): [self.summary("pxetwist", 12.0, "1")]}
        self.assertEqual(self.storm.clients_bound_note(results), "")

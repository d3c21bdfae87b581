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


def summary(
    storm: ModuleType,
    kind: str,
    client_cpu: float,
    cpus: str,
    server_cpu: float = 5.0,
    run: int = 0,
) -> dict[str, Any]:
    """One run's summary as ``run.py`` makes it: two machines, the last done at 20 s."""
    records = [record(0, 10.0), record(1, 20.0)]
    result: dict[str, Any] = storm.summarise(kind, 0.0, records, server_cpu, client_cpu, 2)
    result["run"] = run
    result["clients_busy"] = storm.clients_busy(
        client_cpu, result["total"], storm.Pinning("0", cpus)
    )
    result["udp_drops"] = {"server": 0, "clients": 0}
    result["tcp"] = {"retransmitted": 0, "timeouts": 0, "client_drops": 0}
    return result


class ClientsBusyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.storm = load_run()

    def test_cpu_count_is_the_client_pin_list(self) -> None:
        self.assertEqual(self.storm.client_cpu_count(self.storm.Pinning("0", "1")), 1)
        self.assertEqual(self.storm.client_cpu_count(self.storm.Pinning("0", "1-3,5")), 4)

    def test_busy_is_client_cpu_over_the_storm_on_its_cpus(self) -> None:
        self.assertAlmostEqual(summary(self.storm, "pxetwist", 19.0, "1")["clients_busy"], 0.95)
        self.assertAlmostEqual(summary(self.storm, "pxetwist", 19.0, "1,2")["clients_busy"], 0.475)

    def test_the_table_shows_it_and_a_note_warns(self) -> None:
        results = {
            ("pxetwist", 0.0): [summary(self.storm, "pxetwist", 19.0, "1")],
            ("dnsmasq+nginx", 0.0): [summary(self.storm, "dnsmasq+nginx", 18.8, "1")],
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
        results = {("pxetwist", 0.0): [summary(self.storm, "pxetwist", 12.0, "1")]}
        self.assertEqual(self.storm.clients_bound_note(results), "")


class PairTests(SynchronousTestCase):
    """CPU per boot compared run by run, each run against the reference's run beside it."""

    def setUp(self) -> None:
        self.storm = load_run()

    def runs(self, kind: str, cpus: list[float]) -> list[dict[str, Any]]:
        return [
            summary(self.storm, kind, 10.0, "1", server_cpu=cpu, run=i)
            for i, cpu in enumerate(cpus)
        ]

    def test_ratios_pair_runs_of_the_same_repeat(self) -> None:
        # A host that slows down over the set: both servers' runs of a repeat slow alike.
        ours = self.runs("pxetwist", [8.0, 12.0, 18.0])
        theirs = self.runs("dnsmasq+nginx", [10.0, 14.0, 19.0])
        ratios = self.storm.pair_ratios(list(reversed(ours)), theirs, "cpu_per_boot_ms")
        self.assertEqual([round(r, 3) for r in ratios], [0.8, 0.857, 0.947])

    def test_the_table_shows_the_median_pair_beside_the_median_ratio(self) -> None:
        results = {
            ("pxetwist", 0.0): self.runs("pxetwist", [8.0, 20.0, 18.0]),
            ("dnsmasq+nginx", 0.0): self.runs("dnsmasq+nginx", [10.0, 14.0, 20.0]),
        }
        table = self.storm.table(results, ["pxetwist", "dnsmasq+nginx"])
        header, _, ours, theirs = table.splitlines()
        self.assertTrue(header.endswith("| CPU/boot vs ref | CPU/boot vs ref, by pair |"))
        # medians: 18 against 14 (1.29x); by pair 0.80, 1.43, 0.90: 0.90
        self.assertTrue(ours.endswith("| 1.29 | 0.90 (0.80, 1.43, 0.90) |"), ours)
        self.assertTrue(theirs.endswith("| - | - |"), theirs)

    def test_a_run_without_its_pair_is_left_out(self) -> None:
        ours = self.runs("pxetwist", [8.0, 12.0])
        theirs = self.runs("dnsmasq+nginx", [10.0])
        self.assertEqual(self.storm.pair_ratios(ours, theirs, "cpu_per_boot_ms"), [0.8])

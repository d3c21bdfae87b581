"""The benchmarks' ``--pin SERVER_CPUS:CLIENT_CPUS`` (pxetwist.lab.pinning)."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab.pinning import Pinning, parse_pin

TWO_CPUS = frozenset({0, 1})


class ParsePinTests(SynchronousTestCase):
    def test_apart(self) -> None:
        pinning = parse_pin("0:1", TWO_CPUS)
        self.assertEqual(pinning, Pinning("0", "1"))
        self.assertEqual(pinning.server_prefix, ["taskset", "-c", "0"])
        self.assertEqual(pinning.client_prefix, ["taskset", "-c", "1"])
        self.assertEqual(pinning.describe(), "pinned 0:1")

    def test_one_list_pins_both_sides_to_it(self) -> None:
        """``--pin 0`` shares one CPU, as ``--pin 0:0`` does."""
        self.assertEqual(parse_pin("0", TWO_CPUS), Pinning("0", "0"))
        self.assertEqual(parse_pin("0:", TWO_CPUS), Pinning("0", "0"))

    def test_ranges_and_lists(self) -> None:
        pinning = parse_pin("0-1:1", TWO_CPUS)
        self.assertEqual(pinning.server_prefix, ["taskset", "-c", "0-1"])
        self.assertEqual(parse_pin("0,1:0", TWO_CPUS).client_cpus, "0")

    def test_not_pinned(self) -> None:
        for spec in (None, ""):
            pinning = parse_pin(spec, TWO_CPUS)
            self.assertFalse(pinning.pinned)
            self.assertEqual(pinning.server_prefix, [])
            self.assertEqual(pinning.client_prefix, [])
            self.assertEqual(pinning.describe(), "not pinned")

    def test_a_cpu_the_machine_lacks_is_refused_before_anything_runs(self) -> None:
        with self.assertRaises(ValueError) as caught:
            parse_pin("0:3", TWO_CPUS)
        self.assertIn("client CPUs [3]", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            parse_pin("2-3:0", TWO_CPUS)
        self.assertIn("server CPUs [2, 3]", str(caught.exception))

    def test_a_list_taskset_would_reject_is_refused(self) -> None:
        for spec in ("x:1", "0:1-0", ":1", "0:a,b"):
            with self.assertRaises(ValueError, msg=spec) as caught:
                parse_pin(spec, TWO_CPUS)
            self.assertIn("is not one", str(caught.exception))

    def test_default_is_this_process_affinity(self) -> None:
        """Any CPU this process may run on is accepted; CPU 4096 is nowhere."""
        first = min(os.sched_getaffinity(0))
        self.assertEqual(parse_pin(f"{first}").server_cpus, str(first))
        with self.assertRaises(ValueError):
            parse_pin("4096")

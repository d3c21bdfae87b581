"""LogBudget: lines per interval, then one summary line with the rest counted by kind."""

from __future__ import annotations

from typing import cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.logbudget import LogBudget


class SpendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.logged: list[dict[str, object]] = []
        observer = cast(ILogObserver, self.logged.append)
        self.budget = LogBudget(
            self.clock, lines=2, interval=1.0, logger=Logger(observer=observer), what="DHCP"
        )

    def test_within_the_budget_lines_are_admitted(self) -> None:
        self.assertEqual(
            [self.budget.spend(0.0, "discover ok", False) for _ in range(2)], [True] * 2
        )
        self.assertEqual(self.budget.suppressed, 0)

    def test_past_the_budget_lines_are_counted_and_summed_up(self) -> None:
        spent = [self.budget.spend(0.1 * i, "discover ok", False) for i in range(4)]
        spent.append(self.budget.spend(0.5, "invalid dropped", True))
        self.assertEqual(spent, [True, True, False, False, False])
        self.assertEqual(self.budget.suppressed, 3)
        self.clock.advance(1.0)
        [summary] = self.logged
        self.assertEqual(summary["log_level"], LogLevel.warn)  # one of them was a warning
        self.assertIn("2 discover ok, 1 invalid dropped", formatEvent(summary))

    def test_a_new_interval_admits_again(self) -> None:
        for _ in range(3):
            self.budget.spend(0.0, "discover ok", False)
        self.assertTrue(self.budget.spend(1.0, "discover ok", False))

    def test_no_budget_admits_everything(self) -> None:
        budget = LogBudget(self.clock, lines=0, interval=1.0, logger=Logger(), what="DHCP")
        self.assertTrue(all(budget.spend(0.0, "x", False) for _ in range(10_000)))
        self.assertEqual(budget.suppressed, 0)

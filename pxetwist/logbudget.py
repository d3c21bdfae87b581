"""A budget for the log lines written per request, so that a flood costs neither CPU nor disk.

A line costs more than answering a DHCP packet does.  So each protocol gets ``lines`` log lines
per ``interval`` (``log_budget`` in the config); past that, within the same interval, lines are
only counted by kind, and one summary line per interval says how many were left out and of
which kinds.  A normal network, even a rack booting at once, logs every request; 100,000
malformed packets cost a few lines a second (issue 18).
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel


class LogBudget:
    """At most ``lines`` lines per ``interval`` seconds; ``lines == 0`` means no budget."""

    def __init__(
        self, clock: IReactorTime, *, lines: int, interval: float, logger: Logger, what: str
    ) -> None:
        self.clock = clock
        self.lines = lines
        self.interval = interval
        self.logger = logger
        self.what = what
        self._window_start = float("-inf")
        self._window_lines = 0
        self._unlogged: dict[str, int] = {}
        self._warn = False
        self._summary: IDelayedCall | None = None
        self.suppressed = 0  # lines left out since the start, for tests and metrics

    def admit(self, now: float) -> bool:
        """Whether one more line may be written now; if not, :meth:`count` it instead."""
        if not self.lines:
            return True
        if now - self._window_start >= self.interval:
            self._window_start = now
            self._window_lines = 0
        self._window_lines += 1
        return self._window_lines <= self.lines

    def spend(self, now: float, kind: str, warn: bool) -> bool:
        """:meth:`admit`, and :meth:`count` the line as ``kind`` if it is refused."""
        if self.admit(now):
            return True
        self.count(kind, now, warn=warn)
        return False

    def count(self, kind: str, now: float, *, warn: bool = False) -> None:
        """A line of ``kind`` that :meth:`admit` refused: it goes into the interval's summary."""
        self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
        self._warn = self._warn or warn
        self.suppressed += 1
        if self._summary is None:
            delay = max(0.0, self._window_start + self.interval - now)
            self._summary = self.clock.callLater(delay, self._sum_up)

    def _sum_up(self) -> None:
        """One line for the lines of the last interval that were not written."""
        self._summary = None
        unlogged, self._unlogged = self._unlogged, {}
        warn, self._warn = self._warn, False
        total = sum(unlogged.values())
        if not total:
            return
        counts = ", ".join(f"{count} {kind}" for kind, count in sorted(unlogged.items()))
        self.logger.emit(
            LogLevel.warn if warn else LogLevel.info,
            "{total} more {what} lines in {interval:g} s, over the budget of {budget} lines "
            "logged one by one: {counts}",
            total=total,
            what=self.what,
            interval=self.interval,
            budget=self.lines,
            counts=counts,
            unlogged=unlogged,
        )

"""The TFTP transfer table: one slot per accepted request, released exactly once (issue 11 point
4, issue 18 defect 1), and the boot events it reports (issue 11 point 3)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, cast

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.context import ITransferReactor
from pxetwist.events import BootEvent, BootEventBus, EventStage, LogObserver, Outcome
from pxetwist.policy.render import LoaderKind
from pxetwist.policy.values import MacAddress
from pxetwist.tftp import table as table_module
from pxetwist.tftp.files import Resolved
from pxetwist.tftp.session import BytesSource, Negotiation, TransferSummary
from pxetwist.tftp.session import Outcome as Ended
from pxetwist.tftp.table import RequestReport, TransferTable

PEER = ("10.77.0.50", 2000)
MAC = MacAddress.parse("52:54:00:77:00:10")


def summary(outcome: Ended = Ended.COMPLETED, bytes_: int = 10, size: int = 10) -> TransferSummary:
    return TransferSummary(outcome, "", bytes_, size, 0.5, 1468, 8, 2)


class Recorder:
    def __init__(self) -> None:
        self.clock = Clock()
        self.bus = BootEventBus()
        self.events: list[BootEvent] = []
        self.bus.subscribe(self.events.append)

    def table(self, limit: int = 10) -> TransferTable:
        return TransferTable(limit, cast(ITransferReactor, self.clock), self.bus)


class TableTests(SynchronousTestCase):
    def test_a_slot_from_claim_to_end(self) -> None:
        recorder = Recorder()
        table = recorder.table(limit=2)
        slot = table.claim("10.77.0.1", PEER, "f")
        assert slot is not None
        self.assertIs(table.at("10.77.0.1", PEER), slot)
        self.assertIsNone(table.at("10.77.0.2", PEER))
        self.assertEqual(table.busy, 1)
        slot.resolved = Resolved(BytesSource(b"x" * 10), "f", MAC)
        recorder.clock.advance(2.5)
        table.end(slot, summary())
        self.assertEqual(table.busy, 0)
        self.assertIsNone(table.at("10.77.0.1", PEER))
        (event,) = recorder.events
        self.assertEqual(
            (event.stage, event.outcome, event.mac, event.client, event.time),
            (EventStage.TFTP_TRANSFER, Outcome.OK, MAC, IPv4Address(PEER[0]), 2.5),
        )
        self.assertEqual(
            dict(event.details),
            {
                "file": "f",
                "port": 2000,
                "blksize": 1468,
                "windowsize": 8,
                "bytes": 10,
                "size": 10,
                "seconds": 2.5,  # a worker's summary is timed by the main process
                "retransmits": 2,
                "ended": "completed",
                "detail": "",
            },
        )

    def test_released_exactly_once(self) -> None:
        recorder = Recorder()
        table = recorder.table()
        errors: list[LogEvent] = []
        self.patch(table_module, "log", Logger(observer=cast(ILogObserver, errors.append)))
        slot = table.claim("a", PEER, "f")
        assert slot is not None
        slot.worker = worker = object()
        table.ended_remotely(slot.id, summary())
        table.ended_remotely(slot.id, summary())  # a duplicate report: unknown id now
        table.lost(worker, "transfer worker 1 exited")  # and its worker dies afterwards
        table.end(slot, summary())  # a bug elsewhere: refused, logged
        table.refuse(slot, RequestReport.of(PEER, "f", "late"))
        self.assertEqual(len(recorder.events), 1)
        self.assertEqual(table.busy, 0)
        self.assertEqual(len(errors), 2)
        self.assertIn("released twice", errors[0]["log_format"])

    def test_the_limit_counts_every_slot(self) -> None:
        table = Recorder().table(limit=2)
        first = table.claim("a", PEER, "f")
        second = table.claim("a", ("10.77.0.51", 1), "f")
        self.assertIsNotNone(first)
        self.assertIsNotNone(second)
        self.assertIsNone(table.claim("a", ("10.77.0.52", 1), "f"))
        assert first is not None
        table.refuse(first, RequestReport.of(PEER, "f", "no such file", code=1))
        self.assertIsNotNone(table.claim("a", ("10.77.0.52", 1), "f"))

    def test_a_superseded_slot_does_not_unlist_its_successor(self) -> None:
        table = Recorder().table()
        old = table.claim("a", PEER, "one")
        new = table.claim("a", PEER, "two")
        assert old is not None and new is not None
        table.end(old, summary(Ended.ERROR))
        self.assertIs(table.at("a", PEER), new)
        self.assertEqual(table.busy, 1)

    def test_a_lost_worker_ends_its_transfers_with_what_is_known(self) -> None:
        """Issue 18 defect 8: not "0 of N bytes, blksize 0": the negotiated sizes are known,
        and the bytes delivered are said to be unknown."""
        recorder = Recorder()
        table = recorder.table()
        mine, other = object(), object()
        for index, worker in enumerate((mine, mine, other)):
            slot = table.claim("a", ("10.77.0.50", index), "f")
            assert slot is not None
            slot.worker = worker
            slot.negotiation = Negotiation(blksize=1468, windowsize=16)
            slot.resolved = Resolved(BytesSource(b"x" * 5000), "f")
        table.lost(mine, "transfer worker 7 exited")
        self.assertEqual(table.busy, 1)
        self.assertEqual(len(recorder.events), 2)
        for event in recorder.events:
            self.assertEqual(event.outcome, Outcome.FAILED)
            self.assertEqual(
                (event.details["blksize"], event.details["windowsize"], event.details["size"]),
                (1468, 16, 5000),
            )
            self.assertIn("bytes delivered unknown", str(event.details["detail"]))

    def test_generated_configs_are_flagged(self) -> None:
        recorder = Recorder()
        table = recorder.table()
        slot = table.claim("a", PEER, "pxelinux.cfg/01-52-54-00-77-00-10")
        assert slot is not None
        slot.resolved = Resolved(BytesSource(b"x"), slot.filename, MAC, LoaderKind.PXELINUX)
        table.end(slot, summary(size=1, bytes_=1))
        (event,) = recorder.events
        self.assertIs(event.details["generated"], True)
        self.assertEqual(event.details["loader"], "pxelinux")

    def test_refusals_are_request_events(self) -> None:
        recorder = Recorder()
        table = recorder.table()
        table.refuse(None, RequestReport.of(PEER, "../etc/passwd", "outside the root", code=2))
        table.refuse(
            None,
            RequestReport.of(PEER, "a malformed datagram", "x", outcome=Outcome.DROPPED),
        )
        refused, dropped = recorder.events
        self.assertEqual(
            (refused.stage, refused.outcome, refused.details["code"]),
            (EventStage.TFTP_REQUEST, Outcome.REFUSED, 2),
        )
        self.assertEqual(dropped.outcome, Outcome.DROPPED)

    def test_the_log_line_is_the_events_message(self) -> None:
        """The log observer writes what the listener used to log itself (the e2e demo and
        the lab tests read these lines)."""
        recorder = Recorder()
        recorder.bus.subscribe(LogObserver())
        lines: list[str] = []

        def observer(event: LogEvent) -> None:
            if event.get("log_namespace") == "pxetwist.tftp":
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(cast(ILogObserver, observer))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, observer))
        table = recorder.table()
        slot = table.claim("a", PEER, "pxelinux.0")
        assert slot is not None
        slot.resolved = Resolved(BytesSource(b"x"), "pxelinux.0", MAC)
        table.end(slot, summary())
        table.refuse(None, RequestReport.of(PEER, "bootsig.bin", "no such file", code=1))
        self.assertEqual(
            lines,
            [
                "tftp completed: pxelinux.0 to 10.77.0.50:2000 (mac 52:54:00:77:00:10): "
                "10 of 10 bytes in 0.0s, blksize 1468, windowsize 8, 2 retransmitted ",
                "tftp refused bootsig.bin from 10.77.0.50:2000: no such file",
            ],
        )


class LogBudgetTests(SynchronousTestCase):
    def test_a_flood_of_refusals_is_summarised(self) -> None:
        """Every refusal is an event (metrics count them all), but past the budget in one
        second they carry no log line; one summary line says how many and why."""
        recorder = Recorder()
        table = TransferTable(
            10, cast(ITransferReactor, recorder.clock), recorder.bus, log_lines_per_second=5
        )
        logged: list[LogEvent] = []
        self.patch(table_module, "log", Logger(observer=cast(ILogObserver, logged.append)))
        for index in range(8):
            table.refuse(None, RequestReport.of(PEER, f"f{index}", "no such file", code=1))
        table.refuse(None, RequestReport.of(PEER, "junk", "too short", outcome=Outcome.DROPPED,
                                            verb="dropped"))  # fmt: skip
        self.assertEqual(len(recorder.events), 9)
        self.assertEqual([bool(e.message) for e in recorder.events], [True] * 5 + [False] * 4)
        self.assertEqual(logged, [])
        recorder.clock.advance(1.0)
        (summary,) = logged
        self.assertEqual(
            formatEvent(summary),
            "tftp: 4 more requests refused or dropped in one second, over the 5 lines/s logged "
            "one by one: 1 dropped: too short, 3 refused (error 1)",
        )
        table.refuse(None, RequestReport.of(PEER, "f", "no such file", code=1))
        self.assertTrue(recorder.events[-1].message)  # a new second, a new budget


class TableMachine(RuleBasedStateMachine):
    """Any order of claims, refusals, reports, duplicate reports and dying workers: every
    slot ends in exactly one event, the count never passes the limit, and ``busy`` is what
    is left."""

    LIMIT = 5

    def __init__(self) -> None:
        super().__init__()
        self.recorder = Recorder()
        self.table = self.recorder.table(self.LIMIT)
        self.workers = [object(), object()]
        self.claimed: list[Any] = []
        self.open: set[int] = set()

    @rule(port=st.integers(1, 4), name=st.sampled_from(["a", "b"]))
    def claim(self, port: int, name: str) -> None:
        slot = self.table.claim("srv", ("10.0.0.1", port), name)
        if len(self.open) >= self.LIMIT:
            assert slot is None
            return
        assert slot is not None
        self.claimed.append(slot)
        self.open.add(slot.id)

    @precondition(lambda self: self.claimed)
    @rule(index=st.integers(0, 100), worker=st.integers(0, 1))
    def hand_off(self, index: int, worker: int) -> None:
        slot = self.claimed[index % len(self.claimed)]
        if not slot.released and slot.worker is None:
            slot.worker = self.workers[worker]

    @precondition(lambda self: self.claimed)
    @rule(index=st.integers(0, 100), how=st.sampled_from(["end", "refuse", "report", "abort"]))
    def finish(self, index: int, how: str) -> None:
        slot = self.claimed[index % len(self.claimed)]
        if how == "end":
            self.table.end(slot, summary())
        elif how == "refuse":
            self.table.refuse(slot, RequestReport.of(slot.peer, slot.filename, "no"))
        elif how == "report":
            self.table.ended_remotely(slot.id, summary())
        else:
            slot.abort("test")  # resolving: only marked; it ends when its file comes back
        if slot.released:
            self.open.discard(slot.id)

    @rule(worker=st.integers(0, 1))
    def worker_dies(self, worker: int) -> None:
        self.table.lost(self.workers[worker], "exited")
        self.open = {s.id for s in self.claimed if not s.released}

    @invariant()
    def counted_once(self) -> None:
        assert self.table.busy == len(self.open) <= self.LIMIT
        released = [s for s in self.claimed if s.released]
        assert len(self.recorder.events) == len(released)


TableMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TableMachineTests = TableMachine.TestCase

__all__ = ["TableMachineTests"]

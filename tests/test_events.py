"""The boot-event vocabulary and its bus (pxetwist/events.py)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import cast

import attrs
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from pxetwist.events import (
    BootEvent,
    BootEventBus,
    EventProtocol,
    EventStage,
    IBootEventObserver,
    LogObserver,
    Outcome,
)
from pxetwist.policy.values import MacAddress

MAC = MacAddress.parse("52:54:00:77:00:10")


def transfer_event(**details: object) -> BootEvent:
    return BootEvent(
        time=1000.5,
        protocol=EventProtocol.TFTP,
        stage=EventStage.TFTP_TRANSFER,
        outcome=Outcome.OK,
        mac=MAC,
        client=IPv4Address("10.77.0.10"),
        details=details,
        message="sent {file} to {client}",
    )


class BootEventTests(SynchronousTestCase):
    def test_details_are_frozen_copies(self) -> None:
        source: dict[str, object] = {"file": "undionly.kpxe"}
        event = transfer_event(**source)
        source["file"] = "changed"
        self.assertEqual(event.details["file"], "undionly.kpxe")
        with self.assertRaises(TypeError):
            event.details["file"] = "x"  # type: ignore[index]

    def test_json_shape(self) -> None:
        event = transfer_event(file="undionly.kpxe", bytes=1024, outcome_enum=Outcome.FAILED)
        self.assertEqual(
            event.as_json(),
            {
                "time": 1000.5,
                "protocol": "tftp",
                "stage": "tftp-transfer",
                "outcome": "ok",
                "mac": "52:54:00:77:00:10",
                "client": "10.77.0.10",
                "details": {"file": "undionly.kpxe", "bytes": 1024, "outcome_enum": "failed"},
            },
        )


class BootEventBusTests(SynchronousTestCase):
    def test_fans_out_in_subscription_order(self) -> None:
        bus = BootEventBus()
        seen: list[str] = []
        bus.subscribe(lambda event: seen.append("first"))
        bus.subscribe(lambda event: seen.append("second"))
        bus.emit(transfer_event())
        self.assertEqual(seen, ["first", "second"])

    def test_failing_observer_is_logged_once_and_others_still_see_events(self) -> None:
        bus = BootEventBus()
        seen: list[BootEvent] = []

        def broken(event: BootEvent) -> None:
            raise RuntimeError("observer bug")

        bus.subscribe(broken)
        bus.subscribe(seen.append)
        bus.emit(transfer_event())
        bus.emit(transfer_event())
        self.assertEqual(len(seen), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unsubscribe(self) -> None:
        bus = BootEventBus()
        seen: list[BootEvent] = []
        bus.subscribe(seen.append)
        bus.unsubscribe(seen.append)
        bus.emit(transfer_event())
        self.assertEqual(seen, [])


class LogObserverTests(SynchronousTestCase):
    def test_is_a_boot_event_observer(self) -> None:
        self.assertTrue(verifyObject(IBootEventObserver, LogObserver()))

    def test_logs_message_in_protocol_namespace(self) -> None:
        logged: list[dict[str, object]] = []
        observer = cast(ILogObserver, logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        LogObserver()(transfer_event(file="undionly.kpxe"))
        LogObserver()(
            attr_less := BootEvent(1.0, EventProtocol.HTTP, EventStage.HTTP_REQUEST, Outcome.OK)
        )
        del attr_less
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["log_namespace"], "pxetwist.tftp")
        self.assertEqual(logged[0]["log_level"], LogLevel.info)
        self.assertEqual(logged[0]["file"], "undionly.kpxe")
        # Rendered when emitted (Twisted's formatter costs more than the rest of the line),
        # the fields kept for structured observers.
        self.assertEqual(logged[0]["log_format"], f"sent undionly.kpxe to {logged[0]['client']}")
        self.assertEqual(formatEvent(logged[0]), logged[0]["log_format"])

    def logged(self, event: BootEvent) -> dict[str, object]:
        logged: list[dict[str, object]] = []
        observer = cast(ILogObserver, logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        LogObserver()(event)
        (line,) = logged
        return line

    def test_braces_in_a_value_are_written_as_they_are(self) -> None:
        """A client-chosen name with braces is text, not a format: written literally, and
        re-rendering the event (a structured observer) gives the same line."""
        line = self.logged(transfer_event(file="{evil}{0}}{"))
        self.assertEqual(formatEvent(line), f"sent {{evil}}{{0}}}}{{ to {line['client']}")

    def test_a_value_that_cannot_be_formatted_still_gives_a_line(self) -> None:
        """Twisted reports the event as unformattable instead of losing it; so does this."""
        event = attrs.evolve(transfer_event(file="pxelinux.0"), message="sent {file:>{width}}")
        line = self.logged(event)
        self.assertEqual(line["log_format"], "sent {file:>{width}}")
        self.assertIn("Unable to format event", formatEvent(line))

    def test_a_message_only_twisted_can_render_is_left_to_twisted(self) -> None:
        event = attrs.evolve(transfer_event(file="pxelinux.0"), message="sent {file.upper()}")
        line = self.logged(event)
        self.assertEqual(line["log_format"], "sent {file.upper()}")
        self.assertEqual(formatEvent(line), "sent PXELINUX.0")

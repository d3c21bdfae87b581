"""The API over the real session recorder (issue 13): sessions, stuck, boot once, metrics."""

from __future__ import annotations

from collections.abc import Generator
from ipaddress import IPv4Address
from typing import Any

from twisted.internet import defer, reactor

from pxetwist.api.sessionview import RecorderBootOnce, RecorderSessions
from pxetwist.events import BootEvent, BootEventBus, EventProtocol, EventStage, Outcome
from pxetwist.metrics import BootMetrics
from pxetwist.policy.values import MacAddress
from pxetwist.sessions.recorder import SessionRecorder, in_this_thread
from pxetwist.sessions.store import SessionStore, UsedBoot
from tests.api.support import WRITE, ApiTestCase

Gen = Generator[defer.Deferred[Any], Any, None]
MAC = "52:54:00:77:00:10"


def event(at: float, protocol: EventProtocol, stage: EventStage, **details: Any) -> BootEvent:
    return BootEvent(
        at,
        protocol,
        stage,
        Outcome.OK,
        MacAddress.parse(MAC),
        IPv4Address("10.77.1.5"),
        details=details,
    )


class RecorderApiTests(ApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.metrics = BootMetrics()
        self.recorder.changed_listeners.append(self.metrics.sessions_changed)
        self.context.boot_once = RecorderBootOnce(self.recorder, in_thread=in_this_thread)

    def boot(self, start: float, os_up: bool) -> None:
        steps = [
            event(
                start,
                EventProtocol.DHCP,
                EventStage.DISCOVER,
                message_type="DISCOVER",
                reply="offer",
                firmware="pxe",
                pxe=True,
                file="undionly.kpxe",
            ),
            event(
                start + 0.5,
                EventProtocol.DHCP,
                EventStage.REQUEST,
                message_type="REQUEST",
                reply="ack",
                firmware="pxe",
                pxe=True,
            ),
            event(
                start + 1,
                EventProtocol.TFTP,
                EventStage.TFTP_TRANSFER,
                file="undionly.kpxe",
                bytes=70000,
                size=70000,
                ended="completed",
            ),
        ]
        if os_up:
            steps.append(event(start + 30, EventProtocol.OS, EventStage.OS_UP))
        for step in steps:
            self.bus.emit(step)

    @defer.inlineCallbacks
    def test_sessions_from_the_registry(self) -> Gen:
        now = reactor.seconds()
        self.boot(now - 100, os_up=True)
        status, body, _ = yield self.call("GET", "/api/v1/sessions")
        self.assertEqual(status, 200)
        self.assertEqual(
            [(s["mac"], s["state"], s["stage"]) for s in body], [(MAC, "booted", "os-up")]
        )
        self.assertEqual([e["protocol"] for e in body[0]["events"]], ["dhcp", "dhcp", "tftp", "os"])
        self.assertIn("nbp", [s["stage"] for s in body[0]["stages"]])
        yield self.recorder.flush()
        registry = self.metrics.registry
        self.assertEqual(registry.get_sample_value("pxetwist_boot_duration_seconds_sum"), 30.0)
        self.assertEqual(
            registry.get_sample_value(
                "pxetwist_boot_sessions_total", {"state": "booted", "stage": "os-up"}
            ),
            1.0,
        )
        yield self.recorder.flush()  # the same finished session again: not counted twice
        self.assertEqual(registry.get_sample_value("pxetwist_boot_duration_seconds_count"), 1.0)
        # A second attempt that stops after its NBP, long ago: stuck at nbp, with a hint.
        self.boot(now - 50, os_up=False)
        self.recorder.registry.sweep(now + 10_000)  # type: ignore[union-attr]
        status, body, _ = yield self.call("GET", "/api/v1/sessions/stuck")
        self.assertEqual([(s["mac"], s["stage"]) for s in body], [(MAC, "nbp")])
        self.assertTrue(body[0]["hint"])
        status, body, _ = yield self.call("GET", f"/api/v1/sessions/{MAC}")
        self.assertEqual([s["state"] for s in body], ["stuck", "booted"])

    @defer.inlineCallbacks
    def test_boot_once_state_reset_and_arm(self) -> Gen:
        mac = MacAddress.parse(MAC)
        used = UsedBoot(MAC, 1_700_000_000.0, "kernel and initrd served")
        store = SessionStore(self.config.sessions_path)
        store.save([], [used], keep=5, max_sessions=100)
        store.close()
        self.recorder.bootonce.replace_used([used])
        status, body, _ = yield self.call("GET", f"/api/v1/machines/{MAC}/boot-once")
        self.assertEqual(
            (status, body["used"], body["how"]), (200, True, "kernel and initrd served")
        )
        status, body, _ = yield self.call("POST", f"/api/v1/machines/{MAC}/boot-once/reset", WRITE)
        self.assertEqual((status, body["used"]), (200, False))
        self.assertFalse(self.recorder.bootonce.is_used(mac))
        store = SessionStore(self.config.sessions_path)
        self.assertEqual(store.used_boots(), [])
        store.close()
        # Arm: boot_once set on the machine through the API, and the machine netboots once.
        status, body, _ = yield self.call("POST", f"/api/v1/machines/{MAC}/boot-once", WRITE)
        self.assertEqual((status, body["used"]), (200, False))
        status, machine, _ = yield self.call("GET", f"/api/v1/machines/{MAC}")
        self.assertEqual((machine["boot_once"], machine["source"]), (True, "api"))
        status, body, _ = yield self.call("DELETE", f"/api/v1/machines/{MAC}/boot-once", WRITE)
        self.assertEqual(status, 200)
        status, machine, _ = yield self.call("GET", f"/api/v1/machines/{MAC}")
        self.assertEqual(machine["boot_once"], False)
        status, body, _ = yield self.call(
            "POST", "/api/v1/machines/52:54:00:00:00:01/boot-once", WRITE
        )
        self.assertEqual((status, body["field"]), (404, "mac"))

    @defer.inlineCallbacks
    def test_sessions_kept_across_a_restart(self) -> Gen:
        self.boot(reactor.seconds() - 100, os_up=True)
        yield self.recorder.flush()  # stored in data_dir/sessions.sqlite
        # A restarted server: a new recorder with nothing in memory, the same store.
        restarted = SessionRecorder(self.config, BootEventBus(), None, reactor)
        self.context.sessions = RecorderSessions(restarted)
        status, body, _ = yield self.call("GET", f"/api/v1/sessions/{MAC}")
        self.assertEqual(status, 200)
        self.assertEqual([(s["state"], s["stage"]) for s in body], [("booted", "os-up")])
        self.assertEqual([e["protocol"] for e in body[0]["events"]], ["dhcp", "dhcp", "tftp", "os"])
        status, body, _ = yield self.call("GET", "/api/v1/sessions", params={"state": "booted"})
        self.assertEqual([s["mac"] for s in body], [MAC])

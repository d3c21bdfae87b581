"""``/metrics`` over the API listener, parsed with prometheus_client's own parser.

The events fed here carry the details the protocols emit (dhcp/report.py, tftp/table.py,
http/site.py); the lab test in test_lab.py checks the same counters after a real boot.
"""

from __future__ import annotations

from collections.abc import Generator
from ipaddress import IPv4Address, IPv4Network
from typing import Any, cast

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from pxetwist.api.service import ApiService
from pxetwist.dhcp.leases import Lease, LeaseState
from pxetwist.dhcp.store import IStoreReactor, SQLiteLeaseStore
from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.metrics import (
    BootMetrics,
    DhcpBacklog,
    StateCollector,
    arch_label,
    drop_reason,
)
from pxetwist.policy.interfaces import IBootPolicy
from pxetwist.policy.values import MacAddress
from tests.api.support import METRICS, READ, ApiTestCase
from tests.util import temp_dir

Gen = Generator[defer.Deferred[Any], Any, None]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def dhcp_event(
    mac: str,
    message_type: str,
    reply: str,
    outcome: Outcome = Outcome.OK,
    arch: int | None = 0,
    reason: str = "",
    policy: str | None = "arch",
) -> BootEvent:
    stage = EventStage.DISCOVER if message_type == "DISCOVER" else EventStage.REQUEST
    return BootEvent(
        1.0,
        EventProtocol.DHCP,
        stage,
        outcome,
        MacAddress.parse(mac),
        details={
            "message_type": message_type,
            "reply": reply,
            "arch": arch,
            "reason": reason,
            "policy": policy,
            "action": "boot" if policy else None,
            "pxe": True,
        },
    )


def tftp_event(mac: str, size: int, retransmits: int, outcome: Outcome = Outcome.OK) -> BootEvent:
    return BootEvent(
        2.0,
        EventProtocol.TFTP,
        EventStage.TFTP_TRANSFER,
        outcome,
        MacAddress.parse(mac),
        IPv4Address("10.77.1.5"),
        details={
            "file": "undionly.kpxe",
            "bytes": size,
            "size": size,
            "seconds": 0.2,
            "retransmits": retransmits,
            "ended": "completed" if outcome is Outcome.OK else "timeout",
            "blksize": 1468,
            "windowsize": 8,
        },
    )


def http_event(mac: str, status: int, sent: int, generated: bool = False) -> BootEvent:
    return BootEvent(
        3.0,
        EventProtocol.HTTP,
        EventStage.HTTP_REQUEST,
        Outcome.OK if status < 400 else Outcome.REFUSED,
        MacAddress.parse(mac),
        details={
            "method": "GET",
            "path": "/vmlinuz",
            "status": status,
            "bytes": sent,
            "generated": generated,
            "complete": True,
        },
    )


def auth(token: str | None) -> dict[bytes | str, bytes | str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsEndpointTests(ApiTestCase):
    def make_service(self) -> ApiService:
        self.metrics = BootMetrics()
        self.metrics.registry.register(
            StateCollector(
                self.context.leases.pools,
                lambda: self.active,
                lambda: DhcpBacklog(held=5, stale=7, overflow=2),
            )
        )
        self.active = 3
        return ApiService(self.context, reactor, self.metrics)

    @defer.inlineCallbacks
    def scrape(
        self, token: str | None = None
    ) -> Generator[defer.Deferred[Any], Any, tuple[int, str, Any]]:
        response = yield self.http.get(self.base + "/metrics", headers=auth(token))
        text = yield response.text()
        return response.code, text, response.headers

    @defer.inlineCallbacks
    def test_counters_after_a_boot(self) -> Gen:
        self.bind_lease("52:54:00:aa:00:01", "10.77.1.5")
        mac = "52:54:00:aa:00:01"
        for event in (
            dhcp_event(mac, "DISCOVER", "offer"),
            dhcp_event(mac, "REQUEST", "ack"),
            dhcp_event(mac, "DISCOVER", "none", Outcome.IGNORED, arch=None, policy=None),
            dhcp_event(
                mac,
                "DISCOVER",
                "none",
                Outcome.DROPPED,
                arch=7,
                reason="over the limit of 50 DISCOVERs/s from interface eth0",
            ),
            tftp_event(mac, 70000, 2),
            tftp_event(mac, 512, 0, Outcome.FAILED),
            http_event(mac, 200, 5_000_000),
            http_event(mac, 200, 900, generated=True),
            http_event(mac, 404, 0),
        ):
            self.metrics(event)
        self.metrics.policy_answered("static", "none", 0.00002)
        self.metrics.policy_answered("arch", "boot", 0.00004)
        self.metrics.session_finished("booted", "os-up", 42.0)
        status, text, headers = yield self.scrape()
        self.assertEqual(status, 200)
        self.assertIn(b"text/plain", headers.getRawHeaders(b"content-type")[0])
        found = samples(text)
        self.assertEqual(
            value(
                found,
                "pxetwist_dhcp_packets_total",
                message_type="discover",
                arch="bios",
                answer="replied",
            ),
            1,
        )
        self.assertEqual(
            value(
                found,
                "pxetwist_dhcp_packets_total",
                message_type="request",
                arch="bios",
                answer="replied",
            ),
            1,
        )
        self.assertEqual(
            value(
                found,
                "pxetwist_dhcp_packets_total",
                message_type="discover",
                arch="none",
                answer="ignored",
            ),
            1,
        )
        self.assertEqual(
            value(
                found,
                "pxetwist_dhcp_packets_total",
                message_type="discover",
                arch="efi_x86_64",
                answer="dropped",
            ),
            1,
        )
        self.assertEqual(
            value(found, "pxetwist_dhcp_dropped_packets_total", reason="rate-limited"), 1
        )
        self.assertEqual(value(found, "pxetwist_dhcp_replies_total", reply="offer"), 1)
        self.assertEqual(value(found, "pxetwist_dhcp_replies_total", reply="ack"), 1)
        self.assertEqual(
            value(found, "pxetwist_tftp_transfers_total", outcome="ok", ended="completed"), 1
        )
        self.assertEqual(
            value(found, "pxetwist_tftp_transfers_total", outcome="failed", ended="timeout"), 1
        )
        self.assertEqual(value(found, "pxetwist_tftp_sent_bytes_total"), 70512)
        self.assertEqual(value(found, "pxetwist_tftp_retransmitted_blocks_total"), 2)
        self.assertEqual(value(found, "pxetwist_tftp_errors_total", kind="transfer"), 1)
        self.assertEqual(value(found, "pxetwist_tftp_active_transfers"), 3)
        self.assertEqual(value(found, "pxetwist_dhcp_held_discovers"), 5)
        self.assertEqual(
            value(found, "pxetwist_dhcp_unanswered_discovers_total", reason="stale"), 7
        )
        self.assertEqual(
            value(found, "pxetwist_dhcp_unanswered_discovers_total", reason="overflow"), 2
        )
        self.assertEqual(
            value(found, "pxetwist_http_requests_total", status="200", generated="false"), 1
        )
        self.assertEqual(
            value(found, "pxetwist_http_requests_total", status="200", generated="true"), 1
        )
        self.assertEqual(
            value(found, "pxetwist_http_requests_total", status="404", generated="false"), 1
        )
        self.assertEqual(value(found, "pxetwist_http_sent_bytes_total"), 5_000_900)
        self.assertEqual(
            value(found, "pxetwist_policy_decisions_total", policy="arch", outcome="boot"), 1
        )
        self.assertEqual(value(found, "pxetwist_policy_decision_seconds_count", policy="static"), 1)
        self.assertEqual(
            value(found, "pxetwist_policy_decision_seconds_bucket", policy="static", le="0.0001"), 1
        )
        self.assertEqual(
            value(found, "pxetwist_boot_sessions_total", state="booted", stage="os-up"), 1
        )
        self.assertEqual(value(found, "pxetwist_boot_duration_seconds_count"), 1)
        self.assertEqual(value(found, "pxetwist_boot_duration_seconds_sum"), 42.0)
        self.assertEqual(
            value(found, "pxetwist_dhcp_pool_size_addresses", subnet="10.77.0.0/16"), 21
        )
        self.assertEqual(
            value(found, "pxetwist_dhcp_pool_used_addresses", subnet="10.77.0.0/16"), 1
        )

    @defer.inlineCallbacks
    def test_no_label_grows_with_the_machines(self) -> Gen:
        def boot(count: int, offset: int) -> None:
            for index in range(offset, offset + count):
                mac = f"52:54:00:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"
                self.metrics(dhcp_event(mac, "DISCOVER", "offer"))
                self.metrics(tftp_event(mac, 100, 0))
                self.metrics(http_event(mac, 200, 100))

        boot(5, 0)
        _, before, _ = yield self.scrape()
        boot(2000, 5)
        _, after, _ = yield self.scrape()
        self.assertEqual(set(samples(before)), set(samples(after)))
        self.assertNotIn("52:54:00", after)
        self.assertEqual(
            value(
                samples(after),
                "pxetwist_dhcp_packets_total",
                message_type="discover",
                arch="bios",
                answer="replied",
            ),
            2005,
        )

    def test_label_vocabularies(self) -> None:
        self.assertEqual(
            [arch_label(v) for v in (0, 7, 16, 4242, None, "x")],
            ["bios", "efi_x86_64", "http_efi_x86_64", "other", "none", "other"],
        )
        self.assertEqual(drop_reason("malformed: short packet"), "malformed")
        self.assertEqual(drop_reason("no configured subnet for this request"), "no-subnet")
        self.assertEqual(drop_reason("something new"), "other")


class MetricsTokenTests(ApiTestCase):
    extra_config = "  metrics_token: scraper"

    @defer.inlineCallbacks
    def test_metrics_token_when_configured(self) -> Gen:
        for token in (None, READ, "nonsense-token-0000000000"):
            response = yield self.http.get(
                self.base + "/metrics",
                headers=auth(token),
            )
            body = yield response.json()
            self.assertEqual((response.code, body["field"]), (401, "Authorization"))
        response = yield self.http.get(self.base + "/metrics", headers=auth(METRICS))
        text = yield response.text()
        self.assertEqual(response.code, 200)
        self.assertIn(
            "pxetwist_dhcp_packets_total",
            {f.name + "_total" for f in text_string_to_metric_families(text)},
        )


class LeaseCommitTests(TestCase):
    @defer.inlineCallbacks
    def test_commit_latency_is_observed(self) -> Gen:
        metrics = BootMetrics()
        store = SQLiteLeaseStore(temp_dir(self) / "leases.sqlite", cast(IStoreReactor, reactor))
        self.addCleanup(store.close)
        store.on_commit = metrics.lease_committed
        mac = MacAddress.parse("52:54:00:aa:00:01")
        network = IPv4Network("10.77.0.0/16")
        for last in (5, 6):
            address = IPv4Address(f"10.77.1.{last}")
            yield store.write([Lease(address, network, None, mac, LeaseState.BOUND, 1e10)])
        found = samples(generate_latest(metrics.registry).decode())
        self.assertEqual(value(found, "pxetwist_dhcp_lease_commit_seconds_count"), 2)
        self.assertGreater(value(found, "pxetwist_dhcp_lease_commit_seconds_sum"), 0)


class ChainMonitorTests(SynchronousTestCase):
    def test_every_answer_is_timed(self) -> None:
        from pxetwist.policy.chain import PolicyChain
        from pxetwist.policy.decision import BootDecision
        from pxetwist.policy.values import BootAction
        from pxetwist.testing import make_request

        clock = Clock()
        later: defer.Deferred[Any] = defer.Deferred()

        @implementer(IBootPolicy)
        class Policy:
            def __init__(self, answer: Any) -> None:
                self.answer = answer

            def decide(self, request: Any) -> Any:
                if isinstance(self.answer, Exception):
                    raise self.answer
                return self.answer

        seen: list[tuple[str, str]] = []
        chain = PolicyChain(
            [
                ("broken", Policy(RuntimeError("x"))),
                ("silent", Policy(None)),
                ("slow", Policy(later)),
                ("local", Policy(BootDecision(action=BootAction.LOCAL))),
            ],
            clock,
            monitor=lambda name, outcome, seconds: seen.append((name, outcome)),
        )
        answers: list[Any] = []
        chain.decide(make_request("52:54:00:aa:00:01", arch=0)).addCallback(answers.append)
        self.assertEqual(seen, [("broken", "error"), ("silent", "none")])
        later.callback(None)
        self.assertEqual(seen[-2:], [("slow", "none"), ("local", "local")])
        self.assertEqual(answers[0].policy, "local")
        timing_out: defer.Deferred[Any] = defer.Deferred()
        seen.clear()
        PolicyChain(
            [("stuck", Policy(timing_out))],
            clock,
            timeout=1.0,
            monitor=lambda n, o, s: seen.append((n, o)),
        ).decide(make_request("52:54:00:aa:00:01", arch=0))
        self.flushLoggedErrors()
        clock.advance(2)
        self.flushLoggedErrors()
        self.assertEqual(seen, [("stuck", "error")])

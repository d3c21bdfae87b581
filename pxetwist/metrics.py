"""Prometheus metrics: an observer of the boot-event bus, plus gauges read at scrape time.

Counters move as events arrive (one dictionary lookup and one increment per event on the DHCP
hot path: label children are cached); what is a state rather than a count (pool use, active
TFTP transfers) is read from the server only when Prometheus scrapes.  Names follow Prometheus
conventions (``pxetwist_`` prefix, ``_total`` counters, seconds and bytes), and no label takes a
value per machine: every label has a fixed vocabulary or a hard cap (:class:`_Capped`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from zope.interface import implementer

from pxetwist.api.sources import PoolUse
from pxetwist.events import BootEvent, EventProtocol, EventStage, IBootEventObserver, Outcome
from pxetwist.policy.values import Arch

#: What the DHCP server did with a packet, by the event's outcome.
_ANSWERS: Final = {
    Outcome.OK: "replied",
    Outcome.REFUSED: "refused",  # a NAK
    Outcome.IGNORED: "ignored",
    Outcome.DROPPED: "dropped",
    Outcome.FAILED: "failed",
}

#: Why a DHCP packet was dropped: the engine's reason, by its opening words.
_DROP_REASONS: Final = (
    ("malformed", "malformed"),
    ("over the limit", "rate-limited"),
    ("no configured subnet", "no-subnet"),
    ("no ethernet hardware address", "no-hardware-address"),
    ("lease not stored", "lease-store"),
)

_ARCH_NAMES: Final = {int(arch): arch.name.lower() for arch in Arch}

#: Buckets: a policy answers in microseconds (static) to seconds (a plugin asking a CMDB); a
#: group commit in milliseconds; a boot in tens of seconds to many minutes.
POLICY_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0)
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BOOT_BUCKETS: Final = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0, 1800.0)


def arch_label(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, int):
        return _ARCH_NAMES.get(value, "other")
    return "other"


def drop_reason(reason: object) -> str:
    text = str(reason or "").lower()
    for start, label in _DROP_REASONS:
        if text.startswith(start) or start in text:
            return label
    return "other"


class _Capped:
    """A label's values as seen, up to ``limit`` distinct ones; then ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: object) -> str:
        text = "none" if value is None else str(value)
        if text in self.seen:
            return text
        if len(self.seen) >= self.limit:
            return "other"
        self.seen.add(text)
        return text


@implementer(IBootEventObserver)
class BootMetrics:
    """The server's metrics in a registry of their own (so that tests and two servers in one
    process never share counters)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.dhcp_packets = Counter(
            "pxetwist_dhcp_packets",
            "DHCP packets handled (ports 67 and 4011), by the client's message type, its "
            "architecture (option 93) and what the server did",
            ["message_type", "arch", "answer"],
            registry=r,
        )
        self.dhcp_replies = Counter(
            "pxetwist_dhcp_replies", "DHCP replies sent, by kind", ["reply"], registry=r
        )
        self.dhcp_dropped = Counter(
            "pxetwist_dhcp_dropped_packets",
            "DHCP packets dropped, by reason",
            ["reason"],
            registry=r,
        )
        self.lease_commit = Histogram(
            "pxetwist_dhcp_lease_commit_seconds",
            "Time to commit one group of lease changes to the lease store",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.tftp_transfers = Counter(
            "pxetwist_tftp_transfers",
            "TFTP transfers ended, by how they ended",
            ["outcome", "ended"],
            registry=r,
        )
        self.tftp_refused = Counter(
            "pxetwist_tftp_refused_requests",
            "TFTP read requests refused or dropped before a transfer started",
            ["outcome"],
            registry=r,
        )
        self.tftp_bytes = Counter(
            "pxetwist_tftp_sent_bytes", "File bytes delivered by TFTP transfers", registry=r
        )
        self.tftp_retransmits = Counter(
            "pxetwist_tftp_retransmitted_blocks",
            "TFTP data blocks sent again (lost or late ACKs)",
            registry=r,
        )
        self.tftp_errors = Counter(
            "pxetwist_tftp_errors",
            "TFTP transfers that failed and requests that were refused",
            ["kind"],
            registry=r,
        )
        self.http_requests = Counter(
            "pxetwist_http_requests",
            "HTTP responses, by status code and whether the body was generated",
            ["status", "generated"],
            registry=r,
        )
        self.http_bytes = Counter("pxetwist_http_sent_bytes", "HTTP body bytes sent", registry=r)
        self.policy_decisions = Counter(
            "pxetwist_policy_decisions",
            "Policy answers, by policy and outcome (an action; none: no opinion; error)",
            ["policy", "outcome"],
            registry=r,
        )
        self.policy_latency = Histogram(
            "pxetwist_policy_decision_seconds",
            "Time one policy took to answer",
            ["policy"],
            buckets=POLICY_BUCKETS,
            registry=r,
        )
        self.sessions = Counter(
            "pxetwist_boot_sessions",
            "Boot sessions finished, by final state and the stage they reached",
            ["state", "stage"],
            registry=r,
        )
        self.boot_duration = Histogram(
            "pxetwist_boot_duration_seconds",
            "Time from a boot session's first DISCOVER to the booted OS",
            buckets=BOOT_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[object, ...], Any] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._policy_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._status = _Capped(40)
        self._ended = _Capped(16)
        self._names = _Capped(32)
        self._handlers: dict[EventProtocol, Callable[[BootEvent], None]] = {
            EventProtocol.DHCP: self._dhcp,
            EventProtocol.TFTP: self._tftp,
            EventProtocol.HTTP: self._http,
        }

    # -- the bus -------------------------------------------------------------------------------

    def __call__(self, event: BootEvent) -> None:
        handler = self._handlers.get(event.protocol)
        if handler is not None:
            handler(event)

    def _dhcp(self, event: BootEvent) -> None:
        details = event.details
        outcome = event.outcome
        key = ("dhcp", details.get("message_type"), details.get("arch"), outcome)
        child = self._children.get(key)
        if child is None:
            message_type = details.get("message_type")
            child = self._children[key] = self.dhcp_packets.labels(
                message_type=str(message_type).lower() if message_type else "invalid",
                arch=arch_label(details.get("arch")),
                answer=_ANSWERS[outcome],
            )
        child.inc()
        reply = details.get("reply")
        if reply and reply != "none":
            reply_key = ("reply", reply)
            child = self._children.get(reply_key)
            if child is None:
                child = self._children[reply_key] = self.dhcp_replies.labels(
                    reply=self._names(reply)
                )
            child.inc()
        if outcome is Outcome.DROPPED:
            self.dhcp_dropped.labels(reason=drop_reason(details.get("reason"))).inc()

    def _tftp(self, event: BootEvent) -> None:
        details = event.details
        outcome = event.outcome.value
        if event.stage is EventStage.TFTP_REQUEST:
            self.tftp_refused.labels(outcome=outcome).inc()
            self.tftp_errors.labels(kind="refused").inc()
            return
        self.tftp_transfers.labels(outcome=outcome, ended=self._ended(details.get("ended"))).inc()
        sent = details.get("bytes")
        if isinstance(sent, int) and sent > 0:
            self.tftp_bytes.inc(sent)
        again = details.get("retransmits")
        if isinstance(again, int) and again > 0:
            self.tftp_retransmits.inc(again)
        if event.outcome is not Outcome.OK:
            self.tftp_errors.labels(kind="transfer").inc()

    def _http(self, event: BootEvent) -> None:
        details = event.details
        status = details.get("status")
        self.http_requests.labels(
            status=self._status(status if status is not None else "none"),
            generated="true" if details.get("generated") else "false",
        ).inc()
        sent = details.get("bytes")
        if isinstance(sent, int) and sent > 0:
            self.http_bytes.inc(sent)

    # -- other sources -------------------------------------------------------------------------

    def policy_answered(self, policy: str, outcome: str, seconds: float) -> None:
        """One policy's answer (the chain's monitor): on every request, so children cached."""
        children = self._policy_children.get((policy, outcome))
        if children is None:
            name = self._names(policy)
            children = self._policy_children[policy, outcome] = (
                self.policy_latency.labels(policy=name),
                self.policy_decisions.labels(policy=name, outcome=self._names(outcome)),
            )
        children[0].observe(seconds)
        children[1].inc()

    def lease_committed(self, seconds: float, writes: int) -> None:
        self.lease_commit.observe(seconds)

    def sessions_changed(self, sessions: Sequence[Any]) -> None:
        """The recorder's changed sessions: count each finished one once."""
        for session in sessions:
            state = session.state.value
            if state not in ("booted", "failed") or session.id in self._finished:
                continue
            self._finished[session.id] = None
            if len(self._finished) > 100_000:
                self._finished.popitem(last=False)
            end = session.ended if session.ended is not None else session.updated
            self.session_finished(state, session.stage.value, end - session.started)

    def session_finished(self, state: str, stage: str, duration: float | None) -> None:
        self.sessions.labels(state=self._names(state), stage=self._names(stage)).inc()
        if state == "booted" and duration is not None:
            self.boot_duration.observe(duration)


class StateCollector(Collector):
    """Gauges read from the server at scrape time: pools and active transfers."""

    def __init__(
        self,
        pools: Callable[[], Sequence[PoolUse]],
        active_transfers: Callable[[], int | None],
    ) -> None:
        self._pools = pools
        self._active = active_transfers

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "pxetwist_dhcp_pool_size_addresses",
            "Addresses a subnet's pool can hand out",
            labels=["subnet"],
        )
        used = GaugeMetricFamily(
            "pxetwist_dhcp_pool_used_addresses",
            "Addresses of a subnet's pool offered, bound or quarantined now",
            labels=["subnet"],
        )
        for pool in self._pools():
            size.add_metric([str(pool.network)], pool.size)
            used.add_metric([str(pool.network)], pool.held)
        yield size
        yield used
        active = self._active()
        if active is not None:
            yield GaugeMetricFamily(
                "pxetwist_tftp_active_transfers", "TFTP transfers running now", value=active
            )

"""Prometheus metrics: an observer of the boot-event bus, plus gauges read at scrape time.

Counters move as events arrive, as plain numbers in dictionaries (a DHCP packet costs a few
dictionary updates: no locks, no metric objects), and are turned into Prometheus metric
families only when Prometheus scrapes; so is what is a state rather than a count (pool use,
active TFTP transfers), read from the server then.  Names follow Prometheus
conventions (``pxetwist_`` prefix, ``_total`` counters, seconds and bytes), and no label takes a
value per machine: every label has a fixed vocabulary or a hard cap (:class:`_Capped`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NamedTuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
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


class CounterSeries:
    """A counter family kept as plain numbers, exposed at scrape time.

    The reactor thread is the only writer, so a dictionary update is all an increment costs
    (``prometheus_client``'s own metric objects take a lock per increment, which the DHCP hot
    path should not pay for several times a packet).
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def add(self, key: tuple[str, ...] = (), amount: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in list(self.values.items()):
            family.add_metric(list(key), value)
        return family


class HistogramSeries:
    """A histogram family kept as bucket counts and a sum per label set (see CounterSeries)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labels: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.buckets = tuple(buckets)
        self.series: dict[tuple[str, ...], list[Any]] = {}  # key -> [counts..., +Inf, sum]

    def observe(self, value: float, key: tuple[str, ...] = ()) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [0] * (len(self.buckets) + 1) + [0.0]
        series[bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        bounds = [*(repr(float(b)) for b in self.buckets), "+Inf"]
        for key, series in list(self.series.items()):
            cumulative, running = [], 0
            for bound, count in zip(bounds, series[:-1], strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric(list(key), cumulative, sum_value=series[-1])
        return family


@implementer(IBootEventObserver)
class BootMetrics(Collector):
    """The server's metrics in a registry of their own (so that tests and two servers in one
    process never share counters); it is itself the registry's collector."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.dhcp_packets = CounterSeries(
            "pxetwist_dhcp_packets",
            "DHCP packets handled (ports 67 and 4011), by the client's message type, its "
            "architecture (option 93) and what the server did",
            ["message_type", "arch", "answer"],
        )
        self.dhcp_replies = CounterSeries(
            "pxetwist_dhcp_replies", "DHCP replies sent, by kind", ["reply"]
        )
        self.dhcp_dropped = CounterSeries(
            "pxetwist_dhcp_dropped_packets", "DHCP packets dropped, by reason", ["reason"]
        )
        self.lease_commit = HistogramSeries(
            "pxetwist_dhcp_lease_commit_seconds",
            "Time to commit one group of lease changes to the lease store",
            COMMIT_BUCKETS,
        )
        self.tftp_transfers = CounterSeries(
            "pxetwist_tftp_transfers", "TFTP transfers ended, by how they ended",
            ["outcome", "ended"],
        )  # fmt: skip
        self.tftp_refused = CounterSeries(
            "pxetwist_tftp_refused_requests",
            "TFTP read requests refused or dropped before a transfer started",
            ["outcome"],
        )
        self.tftp_bytes = CounterSeries(
            "pxetwist_tftp_sent_bytes", "File bytes delivered by TFTP transfers"
        )
        self.tftp_retransmits = CounterSeries(
            "pxetwist_tftp_retransmitted_blocks",
            "TFTP data blocks sent again (lost or late ACKs)",
        )
        self.tftp_errors = CounterSeries(
            "pxetwist_tftp_errors",
            "TFTP transfers that failed and requests that were refused",
            ["kind"],
        )
        self.http_requests = CounterSeries(
            "pxetwist_http_requests",
            "HTTP responses, by status code and whether the body was generated",
            ["status", "generated"],
        )
        self.http_bytes = CounterSeries("pxetwist_http_sent_bytes", "HTTP body bytes sent")
        self.policy_decisions = CounterSeries(
            "pxetwist_policy_decisions",
            "Policy answers, by policy and outcome (an action; none: no opinion; error)",
            ["policy", "outcome"],
        )
        self.policy_latency = HistogramSeries(
            "pxetwist_policy_decision_seconds",
            "Time one policy took to answer",
            POLICY_BUCKETS,
            ["policy"],
        )
        self.sessions = CounterSeries(
            "pxetwist_boot_sessions",
            "Boot sessions finished, by final state and the stage they reached",
            ["state", "stage"],
        )
        self.boot_duration = HistogramSeries(
            "pxetwist_boot_duration_seconds",
            "Time from a boot session's first DISCOVER to the booted OS",
            BOOT_BUCKETS,
        )
        self._families: tuple[CounterSeries | HistogramSeries, ...] = (
            self.dhcp_packets, self.dhcp_replies, self.dhcp_dropped, self.lease_commit,
            self.tftp_transfers, self.tftp_refused, self.tftp_bytes, self.tftp_retransmits,
            self.tftp_errors, self.http_requests, self.http_bytes, self.policy_decisions,
            self.policy_latency, self.sessions, self.boot_duration,
        )  # fmt: skip
        self._keys: dict[tuple[object, ...], tuple[str, ...]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._status = _Capped(40)
        self._ended = _Capped(16)
        self._names = _Capped(32)
        self._handlers: dict[EventProtocol, Callable[[BootEvent], None]] = {
            EventProtocol.DHCP: self._dhcp,
            EventProtocol.TFTP: self._tftp,
            EventProtocol.HTTP: self._http,
        }
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for series in self._families:
            yield series.family()

    # -- the bus -------------------------------------------------------------------------------

    def __call__(self, event: BootEvent) -> None:
        handler = self._handlers.get(event.protocol)
        if handler is not None:
            handler(event)

    def _dhcp(self, event: BootEvent) -> None:
        details = event.details
        outcome = event.outcome
        message_type = details.get("message_type")
        arch = details.get("arch")
        raw: tuple[object, ...] = ("dhcp", message_type, arch, outcome)
        key = self._keys.get(raw)
        if key is None:
            key = self._keys[raw] = (
                str(message_type).lower() if message_type else "invalid",
                arch_label(arch),
                _ANSWERS[outcome],
            )
        self.dhcp_packets.add(key)
        reply = details.get("reply")
        if reply and reply != "none":
            raw = ("reply", reply)
            key = self._keys.get(raw)
            if key is None:
                key = self._keys[raw] = (self._names(reply),)
            self.dhcp_replies.add(key)
        if outcome is Outcome.DROPPED:
            self.dhcp_dropped.add((drop_reason(details.get("reason")),))

    def _tftp(self, event: BootEvent) -> None:
        details = event.details
        outcome = event.outcome.value
        if event.stage is EventStage.TFTP_REQUEST:
            self.tftp_refused.add((outcome,))
            self.tftp_errors.add(("refused",))
            return
        self.tftp_transfers.add((outcome, self._ended(details.get("ended"))))
        sent = details.get("bytes")
        if isinstance(sent, int) and sent > 0:
            self.tftp_bytes.add((), sent)
        again = details.get("retransmits")
        if isinstance(again, int) and again > 0:
            self.tftp_retransmits.add((), again)
        if event.outcome is not Outcome.OK:
            self.tftp_errors.add(("transfer",))

    def _http(self, event: BootEvent) -> None:
        details = event.details
        status = details.get("status")
        self.http_requests.add(
            (
                self._status(status if status is not None else "none"),
                "true" if details.get("generated") else "false",
            )
        )
        sent = details.get("bytes")
        if isinstance(sent, int) and sent > 0:
            self.http_bytes.add((), sent)

    # -- other sources -------------------------------------------------------------------------

    def policy_answered(self, policy: str, outcome: str, seconds: float) -> None:
        """One policy's answer (the chain's monitor): on every request, so keys are cached."""
        raw = ("policy", policy, outcome)
        key = self._keys.get(raw)
        if key is None:
            key = self._keys[raw] = (self._names(policy), self._names(outcome))
        self.policy_decisions.add(key)
        self.policy_latency.observe(seconds, key[:1])

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
        self.sessions.add((self._names(state), self._names(stage)))
        if state == "booted" and duration is not None:
            self.boot_duration.observe(duration)


class DhcpBacklog(NamedTuple):
    """What the DHCP sockets' readers did while the server was behind (summed over sockets)."""

    held: int  # DISCOVERs read and waiting for their turn now
    stale: int  # DISCOVERs dropped since the start: older than a client waits
    overflow: int  # DISCOVERs dropped since the start: more than the readers hold


class StateCollector(Collector):
    """Values read from the server at scrape time: pools, active transfers, the DHCP backlog."""

    def __init__(
        self,
        pools: Callable[[], Sequence[PoolUse]],
        active_transfers: Callable[[], int | None],
        dhcp_backlog: Callable[[], DhcpBacklog | None] = lambda: None,
    ) -> None:
        self._pools = pools
        self._active = active_transfers
        self._backlog = dhcp_backlog

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
        backlog = self._backlog()
        if backlog is not None:
            yield GaugeMetricFamily(
                "pxetwist_dhcp_held_discovers",
                "DISCOVERs read while the server was behind, waiting for their turn",
                value=backlog.held,
            )
            unanswered = CounterMetricFamily(
                "pxetwist_dhcp_unanswered_discovers",
                "DISCOVERs dropped unanswered while the server was behind, by reason",
                labels=["reason"],
            )
            unanswered.add_metric(["stale"], backlog.stale)
            unanswered.add_metric(["overflow"], backlog.overflow)
            yield unanswered

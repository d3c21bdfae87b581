"""Per-source rate limits for DISCOVERs: one relay or segment cannot take the whole server.

A relay (``giaddr``) or a directly attached segment (the receiving interface) gets ``rate``
DISCOVERs per second from machines the config does not list, with a burst of twice that (a
rack powering on); past that its DISCOVERs are dropped, which their clients survive (they
retransmit, RFC 2131 §4.1), and one line per interval says so.  Other segments, and every
listed machine, are served as usual.  Pure: time is passed in.
"""

from __future__ import annotations

#: Sources remembered at most; spoofed relay addresses cannot grow the table past it.
_MAX_SOURCES = 4096


class _Bucket:
    __slots__ = ("dropped", "reported_at", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.dropped = 0  # since the last report
        self.reported_at = float("-inf")


class DiscoverLimiter:
    """A token bucket per source; ``rate == 0`` takes everything."""

    def __init__(self, rate: int, *, report_interval: float = 1.0) -> None:
        self.rate = float(rate)
        self.burst = 2.0 * rate
        self.report_interval = report_interval
        self._buckets: dict[str, _Bucket] = {}

    def take(self, source: str, now: float) -> tuple[bool, int]:
        """Whether a DISCOVER from ``source`` may be served, and, for a refused one that should
        be reported now, how many were dropped since the last report (else 0)."""
        if not self.rate:
            return True, 0
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= _MAX_SOURCES:
                self._buckets.clear()
            bucket = self._buckets[source] = _Bucket(self.burst, now)
        elif now > bucket.updated:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True, 0
        bucket.dropped += 1
        if now - bucket.reported_at >= self.report_interval:
            dropped, bucket.dropped = bucket.dropped, 0
            bucket.reported_at = now
            return False, dropped
        return False, 0

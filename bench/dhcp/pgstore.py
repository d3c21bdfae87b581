#!/usr/bin/env python3
"""The PostgreSQL lease store alone: write latency and CPU per write at a fixed rate.

Starts a throw-away PostgreSQL 15 cluster (pxetwist.lab.postgres), opens a
``PostgresLeaseStore`` on the real reactor and writes one binding per tick at ``RATE``/s (each
write is what one REQUEST hands to the store before its ACK), then prints the latency from
``write()`` to the fired Deferred (p50/p99/max), the transactions (group commit) and the
process CPU per write (the reactor's share plus the worker thread's).  Run as root::

    .venv/bin/python bench/dhcp/pgstore.py 1000 5000     # rate/s, writes
"""

from __future__ import annotations

import sys
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from twisted.internet import reactor as _reactor
from twisted.internet import task

from pxetwist.dhcp.leases import Lease, LeaseState
from pxetwist.dhcp.pgstore import PostgresLeaseStore
from pxetwist.lab.postgres import PostgresCluster
from pxetwist.policy.values import MacAddress

reactor: Any = _reactor
NET = IPv4Network("10.0.0.0/8")


def main() -> int:
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 5 * rate
    with PostgresCluster() as pg:
        store = PostgresLeaseStore(pg.create_database("bench"), reactor)
        latencies: list[float] = []
        sent = [0]

        def one() -> None:
            i = sent[0]
            sent[0] += 1
            mac = MacAddress((0x525400000000 + i).to_bytes(6, "big"))
            lease = Lease(
                NET.network_address + 10 + i, NET, None, mac, LeaseState.BOUND, time.time() + 3600
            )
            started = time.perf_counter()
            store.write([lease]).addCallback(
                lambda _: latencies.append(time.perf_counter() - started)
            )
            if sent[0] >= total:
                loop.stop()

        loop = task.LoopingCall(one)
        cpu, wall = time.process_time(), time.perf_counter()

        def report() -> None:
            if len(latencies) < total and time.perf_counter() - wall < 300:
                reactor.callLater(0.05, report)
                return
            elapsed = time.perf_counter() - wall
            latencies.sort()
            print(
                f"{rate}/s, {total} writes ({len(latencies)} done) in {elapsed:.1f} s: latency "
                f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
                f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
                f"max {latencies[-1] * 1000:.1f} ms; {store.transactions} transactions; "
                f"CPU {(time.process_time() - cpu) / total * 1e6:.0f} us per write"
            )
            store.close().addBoth(lambda _: reactor.stop())

        loop.start(1.0 / rate).addCallback(lambda _: report())
        reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

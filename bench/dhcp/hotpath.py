#!/usr/bin/env python3
"""The DHCP hot path without sockets: DORA exchanges fed straight into a ``DhcpEndpoint``.

Measures what one DISCOVER+REQUEST costs the reactor thread in pxetwist itself (decode,
policy chain, engine, lease table, group-committed store, encode, logging), with no kernel
and no perfdhcp sharing the CPU, and optionally profiles it with cProfile::

    .venv/bin/python bench/dhcp/hotpath.py                  # 20,000 plain clients, SQLite
    .venv/bin/python bench/dhcp/hotpath.py --pxe            # PXE ROM clients (option 93/60)
    .venv/bin/python bench/dhcp/hotpath.py --profile 30     # top 30 functions by own time
    .venv/bin/python bench/dhcp/hotpath.py --pxe --metrics  # with the metrics observing
    .venv/bin/python bench/dhcp/hotpath.py --pxe --sessions # with boot sessions recording

Requests look like perfdhcp's in relay mode (giaddr set, hops 1, unicast). They are fed 64 per
reactor turn, as the socket reader drains them; logging goes to a file through the same
observer twistd uses, so its cost is counted, and the collector is settled as ``twistd pxe``
settles it (:mod:`pxetwist.gcpolicy`).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.logger import globalLogBeginner, textFileLogObserver  # noqa: E402

from pxetwist.config.load import parse_config  # noqa: E402
from pxetwist.dhcp.engine import (  # noqa: E402
    DhcpEngine,
    Interface,
    pools_for,
)
from pxetwist.dhcp.leases import LeaseTable  # noqa: E402
from pxetwist.dhcp.options import MessageType, OptionCode  # noqa: E402
from pxetwist.dhcp.packet import DhcpPacket, decode, encode  # noqa: E402
from pxetwist.dhcp.protocol import DhcpEndpoint  # noqa: E402
from pxetwist.dhcp.store import ILeaseStore, MemoryLeaseStore, SQLiteLeaseStore  # noqa: E402
from pxetwist.events import BootEventBus, LogObserver  # noqa: E402
from pxetwist.gcpolicy import settle_garbage_collector  # noqa: E402
from pxetwist.lab.interpreter import describe_interpreter  # noqa: E402
from pxetwist.policy.chain import PolicyChain  # noqa: E402
from pxetwist.policy.plugins import build_policies  # noqa: E402
from pxetwist.policy.sightings import SightingRegistry  # noqa: E402

reactor: Any = _reactor
SERVER = IPv4Address("10.77.0.1")
RELAY = IPv4Address("10.77.0.2")
NETWORK = IPv4Network("10.77.0.0/16")
BATCH = 64
PRL = bytes((1, 28, 2, 3, 15, 6, 12))


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.sent.append((data, address))
        return len(data)


def request_options(kind: MessageType, pxe: bool) -> list[tuple[int, bytes]]:
    options: list[tuple[int, bytes]] = [(OptionCode.MESSAGE_TYPE, bytes((kind,)))]
    if pxe:
        options += [
            (OptionCode.VENDOR_CLASS, b"PXEClient:Arch:00000:UNDI:002001"),
            (OptionCode.CLIENT_ARCH, b"\x00\x00"),
        ]
    options.append((OptionCode.PARAMETER_REQUEST_LIST, PRL))
    return options


def discover(i: int, pxe: bool) -> bytes:
    mac = b"\x00\x0c" + i.to_bytes(4, "big")
    packet = DhcpPacket(
        op=1,
        hops=1,
        xid=i,
        giaddr=RELAY,
        chaddr=mac,
        options=request_options(MessageType.DISCOVER, pxe),
    )
    return encode(packet)


def request_for(offer: bytes, pxe: bool) -> bytes:
    reply = decode(offer)
    options = request_options(MessageType.REQUEST, pxe)
    options[1:1] = [
        (OptionCode.SERVER_ID, SERVER.packed),
        (OptionCode.REQUESTED_IP, reply.yiaddr.packed),
    ]
    packet = DhcpPacket(
        op=1, hops=1, xid=reply.xid, giaddr=RELAY, chaddr=reply.chaddr, options=options
    )
    return encode(packet)


def config_text(work: Path, log_lines: int) -> str:
    return f"""\
interfaces: [srv0]
data_dir: {work}/state
dhcp:
  mode: authoritative
  subnets:
    - network: {NETWORK}
      range: [10.77.1.0, 10.77.254.254]
      lease_time: 1h
  boot_server: false
  discover_rate_limit: 0  # measure the server, not its per-relay limit (one relay here)
tftp: {{enabled: false, root: {work}}}
http: {{enabled: false, root: {work}}}
log_budget: {{lines: {log_lines}}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--clients", type=int, default=20000)
    parser.add_argument("--pxe", action="store_true", help="PXE ROM clients, not plain ones")
    parser.add_argument("--memory", action="store_true", help="memory: store, not SQLite")
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile: print top N")
    parser.add_argument(
        "--log-lines", type=int, default=1000, help="log_budget.lines (0: log every packet)"
    )
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    parser.add_argument(
        "--metrics", action="store_true", help="with the Prometheus metrics observing (issue 14)"
    )
    parser.add_argument(
        "--sessions",
        action="store_true",
        help="with boot sessions recording (issue 13): the recorder, its store and its thread",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dhcp-hotpath-"))
    log_file = open(work / "pxetwist.log", "a")  # noqa: SIM115 - lives as long as the process
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)], redirectStandardIO=False)
    config = parse_config(config_text(work, args.log_lines), "<bench>", work)
    table = LeaseTable(pools_for(config))
    engine = DhcpEngine(config, table, [SERVER])
    chain = PolicyChain(tuple(build_policies(config)), reactor, config.policy.timeout)
    (work / "state").mkdir()
    store: ILeaseStore = (
        MemoryLeaseStore()
        if args.memory
        else SQLiteLeaseStore(work / "state" / "leases.sqlite", reactor)
    )
    sock = FakeSocket()
    events = BootEventBus()
    budget = config.log_budget
    events.subscribe(LogObserver(reactor, lines=budget.lines, interval=budget.interval))
    if args.metrics:
        from pxetwist.metrics import BootMetrics

        metrics = BootMetrics()  # as the API service wires it: a bus observer, a chain monitor
        events.subscribe(metrics)
        chain = attrs.evolve(chain, monitor=metrics.policy_answered)
    recorder = None
    if args.sessions:
        from pxetwist.sessions.recorder import SessionRecorder

        sightings = SightingRegistry(reactor.seconds)
        recorder = SessionRecorder(config, events, sightings, reactor)
        recorder.startService()
        chain = attrs.evolve(chain, gate=recorder.bootonce.gate)
    endpoint = DhcpEndpoint(
        sock=sock,  # type: ignore[arg-type]
        interface=Interface("srv0", SERVER, NETWORK, 1500),
        port=67,
        engine=engine,
        chain=chain,
        store=store,
        sightings=SightingRegistry(reactor.seconds),
        clock=reactor,
        events=events,
    )
    discovers = [discover(i, args.pxe) for i in range(args.clients)]
    source = (str(RELAY), 67)
    profiler = cProfile.Profile() if args.profile else None
    timings: dict[str, float] = {}

    def feed(packets: list[bytes], then: Any) -> None:
        if profiler:
            profiler.enable()
        for data in packets[:BATCH]:
            endpoint.datagram_received(data, source, SERVER)
        if profiler:
            profiler.disable()
        rest = packets[BATCH:]
        reactor.callLater(0, feed, rest, then) if rest else reactor.callLater(0, then)

    def wait_sent(count: int, then: Any) -> None:
        if len(sock.sent) >= count:
            then()
        else:
            reactor.callLater(0.001, wait_sent, count, then)

    def phase_requests() -> None:
        timings["discover"] = time.perf_counter() - timings.pop("t0")
        timings["discover_cpu"] = time.thread_time() - timings.pop("c0")
        offers = [data for data, _ in sock.sent]
        if len(offers) != args.clients:
            print(f"only {len(offers)} offers for {args.clients} DISCOVERs", file=sys.stderr)
        requests = [request_for(offer, args.pxe) for offer in offers]
        sock.sent.clear()
        timings["t0"] = time.perf_counter()
        timings["c0"] = time.thread_time()
        feed(requests, lambda: wait_sent(len(requests), done))

    def done() -> None:
        timings["request"] = time.perf_counter() - timings.pop("t0")
        timings["request_cpu"] = time.thread_time() - timings.pop("c0")
        kinds = {decode(data).message_type for data, _ in sock.sent}
        assert kinds == {MessageType.ACK}, kinds
        closing = store.close()
        if recorder is not None:
            closing.addBoth(lambda _: recorder.stopService())
        closing.addBoth(lambda _: reactor.stop())

    def start() -> None:
        timings["t0"] = time.perf_counter()
        timings["c0"] = time.thread_time()
        feed(discovers, lambda: wait_sent(len(discovers), phase_requests))

    settle_garbage_collector()  # as `twistd pxe` does once its services have started
    reactor.callWhenRunning(start)
    reactor.run()
    n = args.clients
    total = timings["discover"] + timings["request"]
    cpu = timings["discover_cpu"] + timings["request_cpu"]
    print(
        f"{n} DORA ({'pxe' if args.pxe else 'plain'}, {'memory' if args.memory else 'sqlite'}): "
        f"reactor thread CPU per DISCOVER {1e6 * timings['discover_cpu'] / n:.0f} us, "
        f"per REQUEST {1e6 * timings['request_cpu'] / n:.0f} us "
        f"(= {n / cpu:.0f} DORA/s); wall time {1e6 * total / n:.0f} us per DORA; "
        f"{describe_interpreter()}"
    )
    if isinstance(store, SQLiteLeaseStore):
        print(f"store: {store.committed_writes} writes in {store.transactions} transactions")
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats(args.sort).print_stats(args.profile)
    log_file.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

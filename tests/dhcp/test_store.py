"""Lease stores: durable before the ACK, group-committed, and intact after kill -9."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Generator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from pxetwist.dhcp.leases import Lease, LeaseState, LeaseTable, Pool, removal
from pxetwist.dhcp.store import (
    ILeaseStore,
    MemoryLeaseStore,
    SQLiteLeaseStore,
    StoreClosed,
    open_lease_store,
    redacted,
)
from pxetwist.policy.values import MacAddress
from tests.util import temp_dir

reactor: Any = _reactor
REPO = Path(__file__).resolve().parents[2]
NET = IPv4Network("10.0.0.0/16")
NOW = 1_700_000_000.0


def mac(n: int) -> MacAddress:
    return MacAddress((0x525400000000 + n).to_bytes(6, "big"))


def bound(n: int, **changes: Any) -> Lease:
    fields: dict[str, Any] = {
        "address": NET.network_address + n,
        "network": NET,
        "client_id": None,
        "mac": mac(n),
        "state": LeaseState.BOUND,
        "expires": NOW + 3600,
        "hostname": None,
    }
    fields.update(changes)
    return Lease(**fields)


def rows(path: Path) -> dict[str, tuple[Any, ...]]:
    """What another connection (the next process) sees in the file."""
    connection = sqlite3.connect(path)
    try:
        return {
            row[0]: row
            for row in connection.execute(
                "SELECT address, network, client_id, mac, state, expires, hostname FROM leases"
            )
        }
    finally:
        connection.close()


@defer.inlineCallbacks
def poll(predicate: Callable[[], bool], timeout: float = 10.0) -> Generator[Any, Any, None]:
    """Let the reactor turn until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        yield deferLater(reactor, 0.002, lambda: None)


class InterfaceTests(TestCase):
    def test_sqlite_store(self) -> None:
        store = SQLiteLeaseStore(temp_dir(self) / "leases.sqlite", reactor)
        self.addCleanup(store.close)
        self.assertTrue(verifyObject(ILeaseStore, store))

    def test_memory_store(self) -> None:
        self.assertTrue(verifyObject(ILeaseStore, MemoryLeaseStore()))


class MemoryStoreTests(SynchronousTestCase):
    def test_write_load_remove(self) -> None:
        store = MemoryLeaseStore()
        self.successResultOf(store.write([bound(1), bound(2)]))
        self.successResultOf(store.write([removal(bound(1).address, NET, NOW)]))
        self.assertEqual(store.load(), [bound(2)])

    def test_closed(self) -> None:
        store = MemoryLeaseStore()
        self.successResultOf(store.close())
        self.failureResultOf(store.write([bound(1)]), StoreClosed)


class SQLiteStoreTests(TestCase):
    def setUp(self) -> None:
        self.path = temp_dir(self) / "leases.sqlite"

    def open(self, **options: Any) -> SQLiteLeaseStore:
        store = SQLiteLeaseStore(self.path, reactor, **options)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_fired_write_is_in_the_file(self) -> Generator[Any, Any, None]:
        store = self.open()
        yield store.write([bound(1, client_id=b"\x01RT\x00\x00\x00\x01", hostname="node1")])
        self.assertEqual(
            rows(self.path),
            {
                "10.0.0.1": (
                    "10.0.0.1",
                    "10.0.0.0/16",
                    b"\x01RT\x00\x00\x00\x01",
                    "52:54:00:00:00:01",
                    "bound",
                    NOW + 3600,
                    "node1",
                )
            },
        )

    @defer.inlineCallbacks
    def test_load_gives_back_what_was_written(self) -> Generator[Any, Any, None]:
        store = self.open()
        written = [
            bound(1, client_id=b"\xffduid", hostname="n\u00e9"),
            bound(2, expires=math.inf),
            bound(3, state=LeaseState.RELEASED, expires=NOW),
            bound(4, state=LeaseState.DECLINED, mac=None, client_id=b"\x00x"),
        ]
        yield store.write(written)
        yield store.close()
        self.assertEqual(sorted(self.open().load(), key=str), sorted(written, key=str))

    @defer.inlineCallbacks
    def test_changes_apply_in_order(self) -> Generator[Any, Any, None]:
        store = self.open()
        gone = removal(bound(1).address, NET, NOW)
        yield store.write([bound(1), gone, bound(2)])
        yield store.write([gone])  # removing what is not there is fine
        yield store.write([removal(bound(2).address, NET, NOW), bound(2, hostname="back")])
        self.assertEqual(store.load(), [bound(2, hostname="back")])

    def test_wal_and_full_sync_by_default(self) -> None:
        store = self.open()
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(store._connection.execute("PRAGMA synchronous").fetchone()[0], 2)

    def test_normal_sync_on_request(self) -> None:
        store = self.open(synchronous="normal")
        self.assertEqual(store._connection.execute("PRAGMA synchronous").fetchone()[0], 1)

    def test_bad_sync_mode(self) -> None:
        self.assertRaises(ValueError, SQLiteLeaseStore, self.path, reactor, synchronous="OFF")

    def test_newer_schema_is_refused(self) -> None:
        connection = sqlite3.connect(self.path)
        connection.execute("PRAGMA user_version=99")
        connection.close()
        self.assertRaises(ValueError, SQLiteLeaseStore, self.path, reactor)

    @defer.inlineCallbacks
    def test_unreadable_rows_are_skipped(self) -> Generator[Any, Any, None]:
        store = self.open()
        yield store.write([bound(1)])
        connection = sqlite3.connect(self.path)
        connection.execute(
            "INSERT INTO leases VALUES ('not an address', '10.0.0.0/16', NULL, NULL, 'bound', 0, "
            "NULL)"
        )
        connection.commit()
        connection.close()
        self.assertEqual(store.load(), [bound(1)])

    @defer.inlineCallbacks
    def test_one_turn_one_transaction(self) -> Generator[Any, Any, None]:
        """Group commit: every write of a reactor turn goes into one transaction."""
        store = self.open()
        yield defer.gatherResults([store.write([bound(n)]) for n in range(1, 101)])
        self.assertEqual((store.transactions, store.committed_writes), (1, 100))
        self.assertEqual(len(rows(self.path)), 100)

    @defer.inlineCallbacks
    def test_writes_during_a_commit_share_the_next_one(self) -> Generator[Any, Any, None]:
        store = self.open()
        entered, proceed = threading.Event(), threading.Event()

        def hold_the_commit() -> None:
            entered.set()
            proceed.wait(10)

        store._before_commit = hold_the_commit
        first = store.write([bound(1)])
        yield poll(entered.is_set)
        store._before_commit = None
        later = [store.write([bound(n)]) for n in range(2, 6)]
        yield deferLater(reactor, 0.01, lambda: None)  # several reactor turns
        later += [store.write([bound(n)]) for n in range(6, 11)]
        yield deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(first.called)
        self.assertEqual(store.transactions, 0)
        proceed.set()
        yield defer.gatherResults([first, *later])
        self.assertEqual((store.transactions, store.committed_writes), (2, 10))

    @defer.inlineCallbacks
    def test_failed_commit_fails_its_writes_and_is_retried(self) -> Generator[Any, Any, None]:
        store = self.open()
        calls: list[int] = []

        def fail_once() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("disk full")

        store._before_commit = fail_once
        yield self.assertFailure(store.write([bound(1)]), OSError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(rows(self.path), {})  # rolled back
        yield store.write([bound(2)])
        self.assertEqual(sorted(rows(self.path)), ["10.0.0.1", "10.0.0.2"])

    @defer.inlineCallbacks
    def test_close_finishes_pending_writes(self) -> Generator[Any, Any, None]:
        store = self.open()
        written = store.write([bound(1)])
        yield store.close()
        self.assertTrue(written.called)
        self.assertIn("10.0.0.1", rows(self.path))
        yield self.assertFailure(store.write([bound(2)]), StoreClosed)
        yield store.close()  # twice is fine

    def test_empty_write(self) -> None:
        store = self.open()
        self.successResultOf(store.write([]))
        self.assertEqual(store.transactions, 0)

    @defer.inlineCallbacks
    def test_restore_from_load_gives_back_the_bindings(self) -> Generator[Any, Any, None]:
        pools = [Pool(NET, IPv4Address("10.0.0.10"), IPv4Address("10.0.0.20"), {})]
        table = LeaseTable(pools)
        store = self.open()
        for n in range(1, 9):
            offer = table.offer(None, mac(n), NET, None, NOW, 60.0)
            assert offer is not None
            table.bind(None, mac(n), offer.address, NET, NOW, 3600.0, f"node{n}")
        table.release(None, mac(1), IPv4Address("10.0.0.10"), NOW + 1)
        table.decline(None, mac(2), IPv4Address("10.0.0.11"), NOW + 1, 600.0)
        table.offer(b"\x01x", mac(9), NET, None, NOW + 1, 60.0)
        yield store.write(table.take_changes())
        yield store.close()

        restarted = LeaseTable(pools)
        restarted.restore(self.open().load(), NOW + 2)
        for address in (NET.network_address + n for n in range(10, 21)):
            before = table.find_address(address, NOW + 2)
            after = restarted.find_address(address, NOW + 2)
            if before is not None and before.state is LeaseState.OFFERED:
                self.assertIsNone(after)  # offers do not survive a restart
            else:
                self.assertEqual(after, before)
        for n in range(1, 9):
            self.assertEqual(
                restarted.find_client(None, mac(n), NOW + 2, include_inactive=True),
                table.find_client(None, mac(n), NOW + 2, include_inactive=True),
            )


_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from ipaddress import IPv4Network
    from twisted.internet import reactor
    from pxetwist.dhcp.leases import Lease, LeaseState
    from pxetwist.dhcp.store import SQLiteLeaseStore
    from pxetwist.policy.values import MacAddress

    path, mode, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = SQLiteLeaseStore(path, reactor)
    network = IPv4Network("10.0.0.0/8")
    made = durable = 0

    def stored(_, address):
        global durable
        os.write(1, f"{address}\\n".encode())  # unbuffered: the parent sees it at once
        durable += 1
        if mode == "self" and durable >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    def burst():
        # Bounded: an unbounded producer makes each group commit bigger than the last, and
        # on a loaded machine one commit can then take longer than the test is willing to wait.
        global made
        for _ in range(40):
            made += 1
            address = network.network_address + made
            lease = Lease(address, network, None, MacAddress(made.to_bytes(6, "big")),
                          LeaseState.BOUND, 2e9)
            store.write([lease]).addCallback(stored, address)
        if made < 2 * limit:
            reactor.callLater(0, burst)

    reactor.callWhenRunning(burst)
    reactor.run()
    """
)


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


class CrashTests(TestCase):
    """kill -9 of the server: every lease it was told is durable is in the file."""

    def writer(self, mode: str, limit: int) -> tuple[Path, set[str]]:
        directory = temp_dir(self)
        script = directory / "writer.py"
        script.write_text(_WRITER)
        path = directory / "leases.sqlite"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen(
            [sys.executable, str(script), str(path), mode, str(limit)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Unbuffered: readline() below and communicate() then read one stream, and no
            # line read ahead into a buffer is lost between them.
            bufsize=0,
            cwd=REPO,
            env=env,
        )
        assert child.stdout is not None
        reported: list[bytes] = []
        if mode == "parent":
            # Kill it at a random moment, commits in flight, as soon as enough were reported.
            while len(reported) < limit:
                line = child.stdout.readline()
                if not line:
                    break
                reported.append(line)
            child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=60)
        reported.extend(out.splitlines(keepends=True))
        self.assertEqual(child.returncode, -signal.SIGKILL, err.decode(errors="replace"))
        # Only whole reports count: a kill can cut a line, and a cut line is no report.
        addresses = {
            text
            for text in (line.decode(errors="replace").strip() for line in reported)
            if _is_ipv4(text)
        }
        self.assertGreaterEqual(len(addresses), limit)
        return path, addresses

    def check(self, path: Path, reported: set[str]) -> None:
        stored = rows(path)
        missing = reported - set(stored)
        self.assertEqual(missing, set())
        self.assertTrue(all(stored[address][4] == "bound" for address in reported))

    def test_killed_right_after_its_deferreds_fired(self) -> None:
        self.check(*self.writer("self", 1500))

    @defer.inlineCallbacks
    def test_killed_mid_commit_then_restored(self) -> Generator[Any, Any, None]:
        path, reported = self.writer("parent", 3000)
        self.check(path, reported)
        store = SQLiteLeaseStore(path, reactor)
        self.addCleanup(store.close)
        network = IPv4Network("10.0.0.0/8")
        table = LeaseTable(
            [Pool(network, IPv4Address("10.0.0.1"), IPv4Address("10.0.255.254"), {})]
        )
        table.restore(store.load(), time.time())
        for address in reported:
            lease = table.find_address(IPv4Address(address), time.time())
            self.assertIsNotNone(lease)
        # And it keeps serving: new leases go to addresses nobody holds.
        offer = table.offer(None, mac(99_999), network, None, time.time(), 60.0)
        assert offer is not None
        self.assertNotIn(str(offer.address), reported)
        self.assertIsNotNone(
            table.bind(None, mac(99_999), offer.address, network, time.time(), 3600.0)
        )
        yield store.write(table.take_changes())


class OpenLeaseStoreTests(TestCase):
    def test_memory(self) -> None:
        self.assertIsInstance(open_lease_store("memory:", reactor), MemoryLeaseStore)

    def test_sqlite_creates_parent_directories(self) -> None:
        path = temp_dir(self) / "a" / "b" / "leases.sqlite"
        store = open_lease_store(f"sqlite:{path}", reactor)
        self.addCleanup(store.close)
        assert isinstance(store, SQLiteLeaseStore)
        self.assertEqual((store.path, store.synchronous), (path, "FULL"))
        self.assertTrue(path.exists())

    def test_sqlite_url_form_and_options(self) -> None:
        path = temp_dir(self) / "leases.sqlite"
        store = open_lease_store(f"sqlite://{path}?synchronous=normal", reactor)
        self.addCleanup(store.close)
        assert isinstance(store, SQLiteLeaseStore)
        self.assertEqual((store.path, store.synchronous), (path, "NORMAL"))

    def test_postgresql_unreachable_is_a_clear_error_without_the_password(self) -> None:
        with self.assertRaises(ValueError) as caught:
            open_lease_store(
                "postgresql://dhcp:s3cret@/leases?host=/nonexistent-pxetwist-socket", reactor
            )
        self.assertIn("cannot use the lease database", str(caught.exception))
        self.assertNotIn("s3cret", str(caught.exception))

    def test_redacted_hides_passwords(self) -> None:
        self.assertEqual(
            redacted("postgresql://dhcp:s3cret@db.example/leases"),
            "postgresql://dhcp:***@db.example/leases",
        )
        self.assertEqual(
            redacted("postgresql:///leases?host=/run/pg&password=s3cret&port=5"),
            "postgresql:///leases?host=/run/pg&password=***&port=5",
        )
        self.assertEqual(redacted("sqlite:/var/lib/x.sqlite"), "sqlite:/var/lib/x.sqlite")

    def test_bad_urls(self) -> None:
        for url in (
            "",
            "leases.sqlite",
            "mysql://db/leases",
            "sqlite:",
            "sqlite://host/leases.sqlite",
            "sqlite:/tmp/x.sqlite?synchronous=off",
            "sqlite:/tmp/x.sqlite?journal=delete",
            "memory:somewhere",
        ):
            self.assertRaises(ValueError, open_lease_store, url, reactor)

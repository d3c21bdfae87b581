"""The PostgreSQL lease store against a real PostgreSQL 15 (a throw-away cluster): durable
before the ACK, group-committed, the database deciding between servers, and an outage."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Callable, Generator
from contextlib import redirect_stdout
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pxetwist.cli import main as pxetwist_main
from pxetwist.db.schema import SCHEMA_VERSION, SchemaError, upgrade
from pxetwist.dhcp.leases import Lease, LeaseState, LeaseTable, Pool, removal
from pxetwist.dhcp.pgstore import (
    AddressClaimed,
    ISharedLeaseStore,
    PostgresLeaseStore,
    StoreUnavailable,
)
from pxetwist.dhcp.store import open_lease_store
from pxetwist.lab.netlab import in_ci
from pxetwist.lab.postgres import PostgresCluster, postgres_available, shared_cluster
from pxetwist.policy.values import MacAddress

reactor: Any = _reactor
NET = IPv4Network("10.0.0.0/16")
NOW = time.time()


def mac(n: int) -> MacAddress:
    return MacAddress((0x525400000000 + n).to_bytes(6, "big"))


def bound(n: int, client: int | None = None, **changes: Any) -> Lease:
    fields: dict[str, Any] = {
        "address": NET.network_address + n,
        "network": NET,
        "client_id": None,
        "mac": mac(n if client is None else client),
        "state": LeaseState.BOUND,
        "expires": time.time() + 3600,
        "hostname": None,
    }
    fields.update(changes)
    return Lease(**fields)


@defer.inlineCallbacks
def poll(predicate: Callable[[], bool], timeout: float = 30.0) -> Generator[Any, Any, None]:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        yield deferLater(reactor, 0.05, lambda: None)


class PostgresTestCase(TestCase):
    """One cluster for the module's tests; each test gets a database of its own."""

    cluster: ClassVar[PostgresCluster | None] = None
    count: ClassVar[int] = 0

    def setUp(self) -> None:
        if not postgres_available():
            if in_ci():
                raise AssertionError("postgresql-15 is missing (scripts/setup.sh --test)")
            raise SkipTest("postgresql-15 is not installed (scripts/setup.sh --test)")
        type(self).cluster = shared_cluster()

    def database(self) -> str:
        assert self.cluster is not None
        PostgresTestCase.count += 1
        return self.cluster.create_database(f"store{PostgresTestCase.count}")

    def store(self, url: str, **kwargs: Any) -> PostgresLeaseStore:
        store = PostgresLeaseStore(url, reactor, **kwargs)
        self.addCleanup(store.close)
        return store

    def rows(self, url: str) -> dict[str, tuple[Any, ...]]:
        with psycopg.connect(url) as connection:
            return {
                row[0]: row
                for row in connection.execute(
                    "SELECT host(address), state, mac, server FROM leases WHERE state <> 'removed'"
                )
            }


class StoreTests(PostgresTestCase):
    def test_interface_and_empty_database_initialised(self) -> None:
        url = self.database()
        store = self.store(url)
        verifyObject(ISharedLeaseStore, store)
        self.assertEqual(store.load(), [])
        with psycopg.connect(url) as connection:
            version = connection.execute("SELECT version FROM pxetwist_schema").fetchone()
        self.assertEqual(version, (SCHEMA_VERSION,))

    @defer.inlineCallbacks
    def test_write_is_committed_when_it_fires_and_group_committed(
        self,
    ) -> Generator[Any, Any, None]:
        url = self.database()
        store = self.store(url)
        writes = [store.write([bound(n)]) for n in range(1, 51)]
        yield defer.gatherResults(writes)
        # Fired means committed: another connection sees all 50 now.
        self.assertEqual(len(self.rows(url)), 50)
        self.assertLessEqual(store.transactions, 2)  # one reactor turn, one transaction
        self.assertEqual(store.committed_writes, 50)
        # Released and removed records, read back by the next server process.
        yield store.write([bound(1, state=LeaseState.RELEASED, expires=time.time())])
        yield store.write([removal(NET.network_address + 3, NET, time.time())])  # bound: kept
        yield store.write([bound(2, state=LeaseState.RELEASED, expires=time.time())])
        yield store.write([removal(NET.network_address + 2, NET, time.time())])
        fresh = PostgresLeaseStore(url, reactor)
        self.addCleanup(fresh.close)
        loaded = {str(lease.address): lease for lease in fresh.load()}
        self.assertEqual(len(loaded), 49)
        self.assertIs(loaded["10.0.0.1"].state, LeaseState.RELEASED)
        self.assertNotIn("10.0.0.2", loaded)
        self.assertEqual(loaded["10.0.0.3"].mac, mac(3))

    @defer.inlineCallbacks
    def test_statistics_renewed_as_the_table_grows(self) -> Generator[Any, Any, None]:
        # A claim's client lookups are planned from PostgreSQL's statistics; planned on an
        # empty table they scan every bound lease (bench/README, "PostgreSQL").  The store
        # renews them at start, after ANALYZE_AFTER writes, then whenever the table doubled.
        url = self.database()
        store = self.store(url)
        store.load()
        self.assertEqual(store.analyzes, 1)
        for start in range(1, 1301, 100):
            yield defer.gatherResults([store.write([bound(n)]) for n in range(start, start + 100)])
        self.assertEqual(store.analyzes, 3)  # at start, after 500 writes, then at 1,000 more
        with psycopg.connect(url) as connection:
            found = connection.execute(
                "SELECT reltuples FROM pg_class WHERE oid = 'leases'::regclass"
            ).fetchone()
            assert found is not None
            (rows,) = found
            plan = "\n".join(
                line
                for (line,) in connection.execute(
                    "EXPLAIN SELECT 1 FROM leases WHERE network = '10.0.0.0/16' AND "
                    "state = 'bound' AND (mac = '52:54:00:00:00:07' OR client_id = 'x')"
                )
            )
        self.assertGreaterEqual(rows, 1000)
        self.assertIn("leases_mac", plan)  # an index lookup of the client, not a scan
        self.assertEqual(store.analyze_failures, 0)

    @defer.inlineCallbacks
    def test_the_database_decides_between_two_servers(self) -> Generator[Any, Any, None]:
        url = self.database()
        a, b = self.store(url, server="a"), self.store(url, server="b")
        yield a.write([bound(10, client=1)])
        # The other server, not knowing it, binds the same address to another client: NAK.
        failure = yield b.write([bound(10, client=2)]).addCallbacks(lambda _: None, lambda f: [f])
        self.assertTrue(failure and failure[0].check(AddressClaimed), failure)
        self.assertEqual(self.rows(url)["10.0.0.10"][2], str(mac(1)))
        # The same client bound elsewhere by the other server while its binding is live: it
        # keeps the one it has (never two live bindings).
        failure = yield b.write([bound(11, client=1)]).addCallbacks(lambda _: None, lambda f: [f])
        self.assertTrue(failure and failure[0].check(AddressClaimed), failure)
        # The server that bound it may move it (the client asked for another address).
        yield a.write([bound(11, client=1)])
        self.assertEqual(list(self.rows(url)), ["10.0.0.11"])
        # A release of an address that is another client's now changes nothing.
        yield a.write([bound(11, client=3, state=LeaseState.RELEASED, expires=time.time())])
        self.assertEqual(self.rows(url)["10.0.0.11"][1:3], ("bound", str(mac(1))))
        # A removal never deletes another client's live binding.
        yield a.write([removal(NET.network_address + 11, NET, time.time())])
        self.assertIn("10.0.0.11", self.rows(url))
        # One machine, option 61 at one server and none at the other (a PXE ROM, then
        # iPXE): the same client, as the engine's matching rule says.
        yield a.write([bound(13, client=6, client_id=b"\x01pxe")])
        yield b.write([bound(13, client=6)])
        self.assertEqual(self.rows(url)["10.0.0.13"][2:], (str(mac(6)), "b"))
        # An expired binding is free for anyone.
        yield a.write([bound(12, client=4, expires=time.time() - 5)])
        yield b.write([bound(12, client=5)])
        self.assertEqual(self.rows(url)["10.0.0.12"][2], str(mac(5)))

    def test_concurrent_claims_one_wins(self) -> None:
        """Two transactions claim one address at once: the second waits, then loses."""
        url = self.database()
        self.store(url)  # initialises the schema
        now = time.time()
        sql = "SELECT pxetwist_apply_lease(%s, %s, %s, NULL, %s, 'bound', %s, NULL, %s, %s)"
        first = psycopg.connect(url)
        second = psycopg.connect(url)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        won = first.execute(
            sql, ("10.0.0.20", str(NET), b"m1", "m1", now + 60, "a", now)
        ).fetchone()
        results: list[Any] = []
        racer = threading.Thread(
            target=lambda: results.append(
                second.execute(
                    sql, ("10.0.0.20", str(NET), b"m2", "m2", now + 60, "b", now)
                ).fetchone()
            )
        )
        racer.start()
        time.sleep(0.5)
        self.assertEqual(results, [])  # blocked on the first one's row
        first.commit()
        racer.join(30)
        second.commit()
        self.assertEqual((won, results), ((True,), [(False,)]))
        # Same for one client bound to two addresses by two servers at once.
        won = first.execute(
            sql, ("10.0.0.21", str(NET), b"m3", "m3", now + 60, "a", now)
        ).fetchone()
        results.clear()
        racer = threading.Thread(
            target=lambda: results.append(
                second.execute(
                    sql, ("10.0.0.22", str(NET), b"m3", "m3", now + 60, "b", now)
                ).fetchone()
            )
        )
        racer.start()
        time.sleep(0.5)
        first.commit()
        racer.join(30)
        second.commit()
        self.assertEqual((won, results), ((True,), [(False,)]))
        self.assertEqual(set(self.rows(url)), {"10.0.0.20", "10.0.0.21"})

    @defer.inlineCallbacks
    def test_other_servers_changes_reach_the_table(self) -> Generator[Any, Any, None]:
        url = self.database()
        a = self.store(url, server="a")
        b = self.store(url, server="b", sync_interval=0.2)
        b.load()
        table = LeaseTable([Pool(NET, NET.network_address + 10, NET.network_address + 20)])

        def adopt(leases: list[Lease], complete: bool) -> None:
            for lease in leases:
                table.adopt(lease, time.time())

        b.watch(adopt)
        # b offers .10 (in memory only); a binds .10 to another client: b learns it.
        offer = table.offer(None, mac(7), NET, None, time.time(), 30)
        assert offer is not None
        self.assertEqual(str(offer.address), "10.0.0.10")
        yield a.write([bound(10, client=8)])
        yield poll(lambda: table.find_address(NET.network_address + 10, time.time()) != offer)
        held = table.find_address(NET.network_address + 10, time.time())
        assert held is not None
        self.assertEqual((held.mac, held.state), (mac(8), LeaseState.BOUND))
        # The survivor can renew the other server's client: its lease is in the table.
        found = table.find_client(None, mac(8), time.time())
        assert found is not None
        self.assertEqual(found.address, NET.network_address + 10)

    def test_older_schema_is_refused_and_pxetwist_db_upgrade_migrates(self) -> None:
        url = self.database()
        with psycopg.connect(url, autocommit=True) as connection:
            self.assertEqual(upgrade(connection, target=1), (None, 1))
        with self.assertRaises(SchemaError) as caught:
            PostgresLeaseStore(url, reactor)
        self.assertIn("pxetwist db upgrade", str(caught.exception))
        self.assertIn("version 1", str(caught.exception))
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(pxetwist_main(["db", "upgrade", "--url", url]), 0)
        self.assertIn(f"1 -> {SCHEMA_VERSION}", out.getvalue())
        self.store(url).load()
        with redirect_stdout(out):
            self.assertEqual(pxetwist_main(["db", "upgrade", "--url", url]), 0)
        self.assertIn("already current", out.getvalue())

    def test_open_lease_store_url(self) -> None:
        store = open_lease_store(self.database(), reactor)
        self.addCleanup(store.close)
        self.assertIsInstance(store, PostgresLeaseStore)


class OutageTests(PostgresTestCase):
    @defer.inlineCallbacks
    def test_database_stopped_no_ack_one_line_per_change_then_catch_up(
        self,
    ) -> Generator[Any, Any, None]:
        assert self.cluster is not None
        url = self.database()
        store = self.store(url, server="a", sync_interval=0.2)
        store.load()
        reloads: list[list[Lease]] = []
        store.watch(lambda leases, complete: reloads.append(leases) if complete else None)
        yield store.write([bound(1)])
        lines: list[str] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "pxetwist.dhcp.pgstore":
                lines.append(str(event.get("log_format")))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.cluster.stop()
        try:
            failures = []
            for n in range(2, 12):  # many REQUESTs while it is down: none is ACKed
                failure = yield store.write([bound(n)]).addCallbacks(lambda _: None, lambda f: [f])
                failures.append(failure)
                yield deferLater(reactor, 0.1, lambda: None)
            self.assertTrue(all(f and f[0].check(StoreUnavailable) for f in failures), failures)
            self.assertFalse(store.available)
        finally:
            self.cluster.start()
        yield poll(lambda: store.available)
        yield store.write([bound(20)])
        # Back within seconds; nothing that was refused got stored behind the clients' backs.
        self.assertEqual(sorted(self.rows(url)), ["10.0.0.1", "10.0.0.20"])
        # The table is rebuilt from the database (catch-up).
        yield poll(lambda: bool(reloads))
        self.assertEqual(sorted(str(lease.address) for lease in reloads[0]), ["10.0.0.1"])
        unreachable = [line for line in lines if "unreachable" in line]
        back = [line for line in lines if "reachable again" in line]
        self.assertEqual((len(unreachable), len(back)), (1, 1), lines)


class StartupCheckTests(PostgresTestCase):
    def test_twistd_pxe_refuses_an_older_schema_naming_the_upgrade(self) -> None:
        import tempfile

        from pxetwist.config import ConfigError
        from pxetwist.config.load import parse_config
        from pxetwist.startup import _check_lease_database

        url = self.database()
        work = Path(tempfile.mkdtemp(prefix="pxetwist-pgcheck-"))
        self.addCleanup(shutil.rmtree, work, True)
        config = parse_config(
            f'data_dir: {work}\ndhcp:\n  mode: authoritative\n  leases: "{url}"\n'
            "  subnets:\n    - network: 10.9.0.0/16\n      range: [10.9.1.0, 10.9.1.255]\n"
            f"tftp: {{enabled: false, root: {work}}}\nhttp: {{enabled: false, root: {work}}}\n",
            "<test>",
            work,
        )
        _check_lease_database(config)  # empty: initialised
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("UPDATE pxetwist_schema SET version = 1")
        with self.assertRaises(ConfigError) as caught:
            _check_lease_database(config)
        self.assertIn("pxetwist db upgrade", str(caught.exception))

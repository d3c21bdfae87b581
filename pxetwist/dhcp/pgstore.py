"""The shared lease store: several pxetwist servers on one PostgreSQL (issue 15).

Same promise as :class:`~pxetwist.dhcp.store.SQLiteLeaseStore`: an ACK leaves only once its
lease is committed (PostgreSQL's default ``synchronous_commit``: the WAL is flushed), and
every ``write()`` made in one reactor turn, or while the previous commit runs, goes into the
next single transaction (group commit).

**The database decides.** Each server still allocates in memory (offers stay cheap: an offer
is not a lease and is never written), but a binding is an *atomic claim*: the function
``pxetwist_apply_lease`` (:mod:`pxetwist.db.schema`) inserts or takes over the address's row
only if it is free, this client's, released or expired, under the row lock PostgreSQL's
``INSERT ... ON CONFLICT`` takes; a unique index allows one live binding per client and network.
A claim lost to another server fails its ``write()`` with :class:`AddressClaimed`, and the
DHCP endpoint answers that REQUEST with a NAK (the client starts again). Each claim is a
sub-transaction: a lost one leaves nothing half-written, and the rest of the batch commits.

**Every server sees the others' leases.** Each row records the transaction that wrote it
(``changed_in``); the store polls for rows written since the oldest transaction that was still
open at its previous poll (``pg_snapshot_xmin``), so no commit is ever skipped, and hands them
to :meth:`watch`'s callback, which adopts them into the lease table. A survivor thus renews
the clients of a server killed with ``kill -9`` (their leases are in its table), and stops
offering addresses the other server bound.

**Losing the database.** A commit that fails for want of a connection fails its writes (no
ACK without a durable lease), the store turns *unavailable*: one log line, ``write()`` fails at
once, reconnection with back-off (0.25 s doubling to 2 s). When it is back: one log line, and the
lease table is rebuilt from the database (catch-up: the bindings made in memory meanwhile
were never ACKed, and the other servers went on, or not, while this one could not see them).  Boot
replies that need no lease (proxy mode, port 4011) never touch the store and keep going.

**Why a thread and not psycopg's asyncio connection.** Using ``AsyncConnection`` would mean
running the whole server on Twisted's asyncio reactor; every other protocol then pays for
asyncio's event loop on its hot path, for a store that does one round trip per reactor turn.
A single worker thread with a blocking connection does that round trip with the interpreter
lock released (libpq waits in C), and the reactor only queues work and receives one callback
per batch, exactly as the SQLite store does. ``bench/dhcp/pgstore.py`` measures it: on the
shared 2-core development machine (load average 8) 1,000 writes/s cost about 180 us of process
CPU per write, reactor and worker together, most of it building and converting the rows.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorCore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from pxetwist.db.schema import prepare
from pxetwist.dhcp.leases import Lease, LeaseState
from pxetwist.dhcp.store import ILeaseStore, IStoreReactor, StoreClosed, _coalesce, _daemon_thread
from pxetwist.policy.values import MacAddress

log = Logger()

_CLAIMS_PER_TRANSACTION = 60  # below PostgreSQL's 64 cached sub-transactions
#: Writes after which the store has PostgreSQL's statistics of the leases renewed: the first
#: ANALYZE after this many, the next ones each time the table may have doubled since.
ANALYZE_AFTER = 500
SYNC_INTERVAL = 1.0  # seconds between polls for the other servers' changes
_BACKOFF_FIRST, _BACKOFF_MAX = 0.25, 2.0


class AddressClaimed(Exception):
    """Another server's lease won the address (or bound this client elsewhere) first."""


class StoreUnavailable(Exception):
    """The lease database cannot be reached: no lease can be made durable now."""


class ISharedLeaseStore(ILeaseStore):
    """A lease store several servers share: it reports the others' changes."""

    def watch(callback: Callable[[list[Lease], bool], None]) -> None:
        """Call ``callback(leases, complete)`` on the reactor thread with leases other servers
        stored; ``complete`` means every lease of the database (after an outage): the table
        is to be rebuilt from them."""


def client_key(lease: Lease) -> bytes | None:
    """One client's identity in the database: option 61 if it sent one, else its MAC."""
    if lease.client_id is not None:
        return b"i" + lease.client_id
    if lease.mac is not None:
        return b"m" + lease.mac.octets
    return None


def _row(lease: Lease) -> tuple[object, ...]:
    state = "removed" if lease.is_removal else lease.state.value
    return (
        str(lease.address),
        str(lease.network),
        client_key(lease),
        lease.client_id,
        None if lease.mac is None else str(lease.mac),
        state,
        lease.expires,
        lease.hostname,
    )


def _lease(row: Sequence[Any]) -> Lease:
    address, network, client_id, mac, state, expires, hostname = row
    if state == "removed":
        return Lease(
            IPv4Address(address), IPv4Network(network), None, None, LeaseState.RELEASED, expires
        )
    return Lease(
        address=IPv4Address(address),
        network=IPv4Network(network),
        client_id=None if client_id is None else bytes(client_id),
        mac=None if mac is None else MacAddress.parse(mac),
        state=LeaseState(state),
        expires=float(expires),
        hostname=hostname,
    )


_SELECT = "SELECT host(address), network::text, client_id, mac, state, expires, hostname"

_APPLY = """
SELECT ok FROM unnest(
    %s::inet[], %s::cidr[], %s::bytea[], %s::bytea[], %s::text[], %s::text[],
    %s::float8[], %s::text[]
) WITH ORDINALITY AS change(a, n, k, i, m, s, e, h, o),
LATERAL pxetwist_apply_lease(a, n, k, i, m, s, e, h, %s, %s) AS ok
ORDER BY o
"""

_SNAPSHOT = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def _connect(url: str) -> Any:
    import psycopg  # optional: only a postgresql:// store needs it

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _is_connection_error(error: BaseException) -> bool:
    import psycopg

    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)


@implementer(ISharedLeaseStore)
class PostgresLeaseStore:
    """Leases in a PostgreSQL database that several servers share; see the module docstring.

    The constructor connects, initialises an empty database and checks the schema version
    synchronously (start-up, before serving). ``write()``, ``close()`` and ``watch()`` are
    called from the reactor thread.
    """

    def __init__(
        self,
        url: str,
        reactor: IStoreReactor,
        *,
        server: str | None = None,
        sync_interval: float = SYNC_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        # Which process wrote a row: host and PID (a restarted server is a new writer).
        self.server = server or f"{socket.gethostname()}/{os.getpid()}"
        self._reactor = reactor
        self._clock = clock
        self.sync_interval = sync_interval
        self.transactions = 0
        self.committed_writes = 0
        self.claims_lost = 0
        self.available = True
        self.on_commit: Callable[[float, int], None] | None = None
        self._pending: list[Lease] = []  # changes not yet stored, oldest first
        self._waiters: list[tuple[Deferred[None], tuple[Lease, ...]]] = []
        self._scheduled: IDelayedCall | None = None
        self._in_flight = False
        self._closing = False
        self._closed = False
        self._close_waiters: list[Deferred[None]] = []
        self._watchers: list[Callable[[list[Lease], bool], None]] = []
        self._reload_wanted = False
        self._own_too = False  # the next poll also returns this server's rows (after a reload)
        self._sync_call: IDelayedCall | None = None
        self._sync_wanted = False
        self._since: int | None = None  # poll rows changed in transactions >= this
        self._down_since = 0.0
        self._backoff = _BACKOFF_FIRST
        # Only the worker thread reads and changes these two (load() runs before it starts).
        self._analyzed_rows = 0  # the leases' rows when their statistics were last renewed
        self._written_since_analyze = 0
        self.analyzes = 0
        self.analyze_failures = 0
        try:
            self._connection: Any = _connect(url)
        except Exception as error:
            # libpq's message names the host or socket, never the password.
            raise ValueError(f"cannot use the lease database: {error}".strip()) from None
        try:
            prepare(self._connection, where="the lease database")
        except BaseException:
            self._connection.close()
            raise
        self._threads = ThreadPool(minthreads=1, maxthreads=1, name="lease-store:postgresql")
        self._threads.threadFactory = _daemon_thread  # type: ignore[assignment]
        self._trigger: Any = None
        if IReactorCore.providedBy(reactor):
            self._trigger = reactor.addSystemEventTrigger("before", "shutdown", self._on_shutdown)

    # -- ILeaseStore ----------------------------------------------------------------------------

    def load(self) -> list[Lease]:
        """Every live record (removed rows are skipped), and the point the polls start from."""
        connection = self._connection
        with connection.transaction():
            since = connection.execute(_SNAPSHOT).fetchone()[0]
            rows = connection.execute(f"{_SELECT} FROM leases WHERE state <> 'removed'").fetchall()
        self._since = int(since)
        self._analyze(connection)
        leases = []
        for row in rows:
            try:
                leases.append(_lease(row))
            except (ValueError, TypeError) as error:
                log.error("unreadable lease row {row!r}: {error}", row=row, error=str(error))
        return leases

    def watch(self, callback: Callable[[list[Lease], bool], None]) -> None:
        self._watchers.append(callback)
        if self._sync_call is None and not self._closing:
            self._sync_call = self._reactor.callLater(self.sync_interval, self._want_sync)

    def write(self, changes: Sequence[Lease]) -> Deferred[None]:
        if self._closing:
            return fail(StoreClosed("the lease database store is closed"))
        if not changes:
            return succeed(None)
        if not self.available:
            # Nothing is queued: no client was told about these changes, and the table is
            # rebuilt from the database when it is back.
            return fail(StoreUnavailable("the lease database is unreachable"))
        self._pending.extend(changes)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((waiter, tuple(changes)))
        self._schedule()
        return waiter

    def close(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._closed:
            waiter.callback(None)
            return waiter
        self._close_waiters.append(waiter)
        if not self._closing:
            self._closing = True
            if self._sync_call is not None and self._sync_call.active():
                self._sync_call.cancel()
            self._sync_call = None
            if self._trigger is not None:
                self._reactor.removeSystemEventTrigger(self._trigger)  # type: ignore[attr-defined]
                self._trigger = None
            if not self._in_flight and self._scheduled is None:
                self._flush()
        return waiter

    def _on_shutdown(self) -> Deferred[None]:
        self._trigger = None
        return self.close()

    # -- group commit and polls (one worker thread, one at a time) ------------------------------

    def _schedule(self) -> None:
        if not self._in_flight and self._scheduled is None:
            self._scheduled = self._reactor.callLater(0, self._flush)

    def _want_sync(self) -> None:
        self._sync_call = None
        self._sync_wanted = True
        self._schedule()

    def _flush(self) -> None:
        self._scheduled = None
        if self._closing and not self._waiters:
            self._shut_down()
            return
        if not self.available:
            return  # the reconnection loop runs the next flush
        batch = _coalesce(self._pending)
        waiters = self._waiters
        self._pending, self._waiters = [], []
        sync = self._sync_wanted and bool(self._watchers) and not self._closing
        reload = self._reload_wanted and sync
        self._sync_wanted = False
        if not batch and not sync:
            return
        self._in_flight = True
        if not self._threads.started:
            self._threads.start()
        done = deferToThreadPool(self._reactor, self._threads, self._work, batch, sync, reload)
        done.addBoth(self._done, batch, waiters, sync, reload)

    def _work(
        self, batch: dict[IPv4Address, Lease], sync: bool, reload: bool = False
    ) -> tuple[float, set[IPv4Address], list[Lease]]:
        """Worker thread: commit the batch (one transaction), then poll if asked."""
        started = time.perf_counter()
        connection = self._connection
        lost: set[IPv4Address] = set()
        if batch:
            rows = [_row(lease) for lease in batch.values()]
            results = []
            # Each claim is a sub-transaction; past 64 of them in one transaction PostgreSQL's
            # snapshots overflow and every claim gets slower (measured on the loaded dev
            # machine: 1,000 claims in one transaction 1.2 s, in slices of 100 about 0.2 s),
            # so a big batch is committed in slices.
            for start in range(0, len(rows), _CLAIMS_PER_TRANSACTION):
                chunk = rows[start : start + _CLAIMS_PER_TRANSACTION]
                columns = [list(column) for column in zip(*chunk, strict=True)]
                with connection.transaction():
                    results += connection.execute(
                        _APPLY, (*columns, self.server, self._clock())
                    ).fetchall()
            lost = {
                address
                for address, (ok,) in zip(batch, results, strict=True)
                if not ok and batch[address].state is LeaseState.BOUND
            }
            self._written_since_analyze += len(batch)
            if self._written_since_analyze >= max(ANALYZE_AFTER, self._analyzed_rows):
                self._analyze(connection)
        seconds = time.perf_counter() - started
        changed: list[Lease] = []
        if sync or lost:
            changed = self._poll(connection, reload)
        return seconds, lost, changed

    def _analyze(self, connection: Any) -> None:
        """Renew PostgreSQL's statistics of the leases (at start, then as the table grows).

        A claim's lookups of the client (by MAC, by client identifier) are planned once per
        connection from these statistics.  Planned while the table was empty or small, the plan
        scans every bound lease of the network: measured, a claim cost 0.65 ms at 1,000 leases
        and 6.8 ms at 10,000, and the DHCP rate collapsed a few seconds into a storm on a new
        database.  With statistics it is two index lookups, about 0.15-0.2 ms at any size.
        Autovacuum renews them too, but only once a minute and after 10 % of the table changed.
        ANALYZE samples at most 30,000 rows and blocks no writer; it also makes PostgreSQL plan
        the claim again.
        """
        self._written_since_analyze = 0
        try:
            connection.execute("ANALYZE leases")
            (rows,) = connection.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = 'leases'::regclass"
            ).fetchone()
        except Exception:
            # The batch before it is committed and stays so; a lost connection shows at the
            # next batch, which handles it.
            self.analyze_failures += 1
            return
        self._analyzed_rows = max(int(rows), 0)
        self.analyzes += 1

    def _poll(self, connection: Any, everything: bool = False) -> list[Lease]:
        with connection.transaction():
            since = int(connection.execute(_SNAPSHOT).fetchone()[0])
            if everything:
                query = f"{_SELECT} FROM leases WHERE state <> 'removed'"
                rows = connection.execute(query).fetchall()
            else:
                # After a reload, this server's own commits since then are read back once:
                # the writes queued while the reload ran are not in the rebuilt table.
                rows = connection.execute(
                    f"{_SELECT} FROM leases WHERE changed_in >= %s"
                    " AND (server IS DISTINCT FROM %s OR %s)",
                    (self._since or 0, self.server, self._own_too),
                ).fetchall()
        self._own_too = everything
        self._since = since
        return [_lease(row) for row in rows]

    def _done(
        self,
        result: Failure | tuple[float, set[IPv4Address], list[Lease]],
        batch: dict[IPv4Address, Lease],
        waiters: list[tuple[Deferred[None], tuple[Lease, ...]]],
        sync: bool,
        reload: bool = False,
    ) -> None:
        self._in_flight = False
        if isinstance(result, Failure):
            # Not queued again: their replies are withheld, so no client knows of them; the
            # table is rebuilt from the database once it answers again.
            if result.value is not None and _is_connection_error(result.value):
                self._went_down(result)
                error: Failure = Failure(StoreUnavailable(str(result.value)))
            else:
                log.failure("could not store {count} lease changes", result, count=len(batch))
                error = result
            for waiter, _ in waiters:
                waiter.errback(error)
            if sync:
                self._sync_wanted = True
        else:
            seconds, lost, changed = result
            self.transactions += 1 if batch else 0
            for waiter, changes in waiters:
                mine = [lease.address for lease in changes if lease.state is LeaseState.BOUND]
                if any(address in lost and batch[address] in changes for address in mine):
                    self.claims_lost += 1
                    waiter.errback(
                        AddressClaimed(f"{', '.join(map(str, mine))} taken by another server")
                    )
                else:
                    self.committed_writes += 1
                    waiter.callback(None)
            if batch and self.on_commit is not None:
                try:
                    self.on_commit(seconds, len(waiters))
                except Exception:
                    log.failure("lease store commit observer failed")
            if reload:
                self._reload_wanted = False
            if changed or reload:
                for watcher in self._watchers:
                    try:
                        watcher(changed, reload)
                    except Exception:
                        log.failure("lease store watcher failed")
            if sync and not self._closing:
                self._sync_call = self._reactor.callLater(self.sync_interval, self._want_sync)
        if not self.available:
            return
        if self._waiters or self._pending or self._sync_wanted:
            self._schedule()
        elif self._closing:
            self._shut_down()

    # -- losing the database and getting it back -----------------------------------------------

    def _went_down(self, failure: Failure) -> None:
        if self.available:
            self.available = False
            self._down_since = time.monotonic()
            self._backoff = _BACKOFF_FIRST
            log.error(
                "lease database unreachable ({error}): no new leases until it is back; "
                "reconnecting with back-off",
                error=str(failure.value).strip().splitlines()[0] if str(failure.value) else "",
            )
        if self._closing:
            self._shut_down()
            return
        self._reactor.callLater(self._backoff, self._reconnect)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _reconnect(self) -> None:
        if self._closing:
            self._shut_down()
            return
        if not self._threads.started:
            self._threads.start()
        self._in_flight = True
        done = deferToThreadPool(self._reactor, self._threads, self._connect_again)
        done.addBoth(self._reconnected)

    def _connect_again(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()
        self._connection = _connect(self.url)

    def _reconnected(self, result: Failure | None) -> None:
        self._in_flight = False
        if isinstance(result, Failure):
            self._went_down(result)
            return
        self.available = True
        log.info(
            "lease database reachable again after {seconds:.1f} s; new leases again, the "
            "lease table is reloaded from it",
            seconds=time.monotonic() - self._down_since,
        )
        self._sync_wanted = self._reload_wanted = bool(self._watchers)
        if self._pending or self._waiters or self._sync_wanted:
            self._schedule()
        elif self._closing:
            self._shut_down()

    def _shut_down(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pending:
            log.warn(
                "closing the lease database with {count} lease changes not stored",
                count=len(self._pending),
            )
        waiters, self._waiters = self._waiters, []
        for waiter, _ in waiters:
            waiter.errback(StoreClosed("the lease database store is closed"))
        if self._threads.started:
            closed = deferToThreadPool(self._reactor, self._threads, self._connection.close)
        else:
            self._connection.close()
            closed = succeed(None)
        closed.addBoth(self._stopped)

    def _stopped(self, result: Failure | None) -> None:
        if self._threads.started:
            self._threads.stop()
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

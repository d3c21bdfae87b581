"""Where leases survive a restart: the lease stores behind :class:`ILeaseStore`.

The DHCP engine decides in memory (:mod:`pxetwist.dhcp.leases`) and hands the changes to a
store; the reply that promises an address (the ACK) leaves only when the store's Deferred has
fired, so a lease a client was told about is never lost by a crash.

:class:`SQLiteLeaseStore` is the single-server store. Disk work runs on one dedicated thread,
never on the reactor, and is *group-committed*: every ``write()`` made in one reactor turn, or
while the previous transaction is being committed, goes into the next single transaction. One
commit (one fsync) then pays for a whole burst of clients, which is what lets a Python server
keep every lease durable at thousands of exchanges per second.

Durability (``synchronous``), SQLite in WAL mode:

* ``FULL`` (the default): the WAL is fsynced at every commit. A fired Deferred means the lease
  survives ``kill -9``, a kernel panic and a power cut (if the disk honours flushes).
* ``NORMAL``: commits reach the operating system but are fsynced only at checkpoints. A fired
  Deferred survives ``kill -9`` of the server (the OS still has the data) but the last commits
  may be lost on a power cut or kernel crash; the file stays consistent either way. Choose it
  (``sqlite:/path?synchronous=normal``) on disks whose fsync is slow, when a power cut takes
  the clients down too.

``memory:`` (:class:`MemoryLeaseStore`) keeps nothing across restarts: tests and demos only.
Several servers share :class:`~pxetwist.dhcp.pgstore.PostgresLeaseStore` (``postgresql://``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from socket import inet_ntoa
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from pxetwist.dhcp.leases import Lease, LeaseState
from pxetwist.policy.values import MacAddress

log = Logger()

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    address   TEXT PRIMARY KEY,  -- dotted quad
    network   TEXT NOT NULL,     -- e.g. 192.0.2.0/24
    client_id BLOB,              -- option 61, raw
    mac       TEXT,              -- 52:54:00:12:34:56
    state     TEXT NOT NULL,     -- bound, released, declined (offered is never stored)
    expires   REAL NOT NULL,     -- Unix time; 9e999 (infinity) for an infinite lease
    hostname  TEXT
) WITHOUT ROWID
"""

_COLUMNS = "address, network, client_id, mac, state, expires, hostname"


class StoreClosed(Exception):
    """A write was offered to a store that has been closed."""


class ILeaseStore(Interface):
    """Persistence for a :class:`~pxetwist.dhcp.leases.LeaseTable`, one record per address."""

    def load() -> list[Lease]:
        """Every stored record, read synchronously at start-up (before serving)."""

    def write(changes: Sequence[Lease]) -> Deferred[None]:
        """Store ``changes`` in order (a removal deletes its address).

        The Deferred fires once they are durable, and fails if they could not be stored: the
        caller must then not send the reply that depended on them.
        """

    def close() -> Deferred[None]:
        """Finish the writes already made, then release the store; later writes fail."""


class IStoreReactor(IReactorTime, IReactorFromThreads):
    """What a store needs from its reactor: ``callLater`` and ``callFromThread``."""


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


_network_text: dict[int, tuple[IPv4Network, str]] = {}  # id -> (network, str()): few of them


def _text_of(network: IPv4Network) -> str:
    cached = _network_text.get(id(network))
    if cached is None or cached[0] is not network:
        if len(_network_text) >= 1024:
            _network_text.clear()
        cached = _network_text[id(network)] = (network, str(network))
    return cached[1]


def _row(lease: Lease) -> tuple[object, ...]:
    # The same text as str() of each value, made the cheap way: this runs for every lease
    # on the store's thread, which shares the interpreter lock with the reactor.
    return (
        inet_ntoa(lease.address.packed),
        _text_of(lease.network),
        lease.client_id,
        None if lease.mac is None else lease.mac.octets.hex(":"),
        lease.state.value,
        lease.expires,
        lease.hostname,
    )


_ROWS_PER_STATEMENT = 500  # 7 values a row: far below SQLite's 32766 variables


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _lease(row: Sequence[Any]) -> Lease:
    address, network, client_id, mac, state, expires, hostname = row
    return Lease(
        address=IPv4Address(address),
        network=IPv4Network(network),
        client_id=None if client_id is None else bytes(client_id),
        mac=None if mac is None else MacAddress.parse(mac),
        state=LeaseState(state),
        expires=float(expires),
        hostname=hostname,
    )


def _coalesce(changes: Sequence[Lease]) -> dict[IPv4Address, Lease]:
    """The latest change per address: what applying all of them in order would leave."""
    latest: dict[IPv4Address, Lease] = {}
    for lease in changes:
        latest[lease.address] = lease
    return latest


@implementer(ILeaseStore)
class MemoryLeaseStore:
    """Keeps leases in a dict and reports them durable at once: tests and ``memory:`` only."""

    def __init__(self) -> None:
        self.leases: dict[IPv4Address, Lease] = {}
        self.transactions = 0
        self.committed_writes = 0
        self.closed = False

    def load(self) -> list[Lease]:
        return list(self.leases.values())

    def write(self, changes: Sequence[Lease]) -> Deferred[None]:
        if self.closed:
            return fail(StoreClosed("the lease store is closed"))
        for address, lease in _coalesce(changes).items():
            if lease.is_removal:
                self.leases.pop(address, None)
            else:
                self.leases[address] = lease
        self.transactions += 1
        self.committed_writes += 1
        return succeed(None)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


@implementer(ILeaseStore)
class SQLiteLeaseStore:
    """One SQLite file in WAL mode, written by one thread, group-committed.

    The constructor opens (and if needed creates) the database synchronously: it runs at
    start-up, before the server answers anyone. From then on the connection belongs to the
    store's single worker thread; the reactor only queues work and receives results, so
    ``write()`` and ``close()`` must be called from the reactor thread.

    ``transactions`` and ``committed_writes`` count commits and the ``write()`` calls they made
    durable; their ratio is the group-commit batching factor, worth a metric.
    """

    def __init__(
        self, path: str | Path, reactor: IStoreReactor, *, synchronous: str = "FULL"
    ) -> None:
        mode = synchronous.upper()
        if mode not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = mode
        self._reactor = reactor
        self.transactions = 0  # transactions committed
        self.committed_writes = 0  # write() calls made durable by them (batching = ratio)
        self._pending: list[Lease] = []
        self._waiters: list[Deferred[None]] = []
        self._scheduled: IDelayedCall | None = None
        self._in_flight = False
        self._closing = False
        self._closed: Deferred[None] | None = None
        self._close_waiters: list[Deferred[None]] = []
        #: Told the seconds each successful transaction took and the writes it made durable
        #: (the metrics' commit latency); called on the reactor thread.
        self.on_commit: Callable[[float, int], None] | None = None
        #: Test hook, run on the worker thread inside each transaction just before COMMIT.
        self._before_commit: Callable[[], None] | None = None
        self._connection = self._open()
        # Started at the first commit, so a store opened only to load() holds no thread. Its
        # thread is a daemon: should the process exit without close(), it must not hang on
        # the worker (an interrupted transaction is rolled back; its Deferreds never fired).
        self._threads = ThreadPool(minthreads=1, maxthreads=1, name=f"lease-store:{self.path.name}")
        self._threads.threadFactory = _daemon_thread  # type: ignore[assignment]
        # A reactor that stops without close() would drop the writes still queued: flush
        # them during shutdown (the reactor waits for the returned Deferred).
        self._trigger: Any = None
        if IReactorCore.providedBy(reactor):
            self._trigger = reactor.addSystemEventTrigger("before", "shutdown", self._on_shutdown)

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path}: lease schema {version} is newer than this pxetwist "
                    f"understands ({SCHEMA_VERSION})"
                )
            journal = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(journal).lower() != "wal":
                raise ValueError(
                    f"{self.path}: SQLite cannot use WAL journaling here (got {journal}); "
                    "put the lease file on a local filesystem"
                )
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            connection.execute(_SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            connection.close()
            raise
        return connection

    # -- ILeaseStore ----------------------------------------------------------------------------

    def load(self) -> list[Lease]:
        """Every stored lease; rows that cannot be read are logged and skipped.

        Reads through a connection of its own, so it never shares the writer's connection
        with another thread.
        """
        connection = sqlite3.connect(self.path, timeout=10.0)
        try:
            rows = connection.execute(f"SELECT {_COLUMNS} FROM leases").fetchall()
        finally:
            connection.close()
        leases = []
        for row in rows:
            try:
                leases.append(_lease(row))
            except (ValueError, TypeError) as error:
                log.error(
                    "unreadable lease row {row!r} in {path}: {error}",
                    row=row,
                    path=str(self.path),
                    error=str(error),
                )
        return leases

    def write(self, changes: Sequence[Lease]) -> Deferred[None]:
        if self._closing:
            return fail(StoreClosed(f"the lease store {self.path} is closed"))
        if not changes:
            return succeed(None)
        self._pending.extend(changes)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        self._schedule()
        return waiter

    def close(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._closed is not None and self._closed.called:
            waiter.callback(None)
            return waiter
        self._close_waiters.append(waiter)
        if not self._closing:
            self._closing = True
            if self._trigger is not None:
                self._reactor.removeSystemEventTrigger(self._trigger)  # type: ignore[attr-defined]
                self._trigger = None
            if not self._in_flight and self._scheduled is None:
                self._flush()
        return waiter

    def _on_shutdown(self) -> Deferred[None]:
        self._trigger = None  # it is firing: removing it now would be an error
        return self.close()

    # -- group commit ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Commit at the end of this reactor turn, unless a commit is running (it will)."""
        if not self._in_flight and self._scheduled is None:
            self._scheduled = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        if not self._waiters:
            if self._closing:
                self._shut_down()
            return
        batch, waiters = _coalesce(self._pending), self._waiters
        self._pending, self._waiters = [], []
        self._in_flight = True
        if not self._threads.started:
            self._threads.start()
        done = deferToThreadPool(self._reactor, self._threads, self._commit, batch)
        done.addBoth(self._committed, batch, waiters)

    def _commit(self, batch: Mapping[IPv4Address, Lease]) -> float:
        """Worker thread: one transaction for the whole batch; returns the seconds it took."""
        started = time.perf_counter()
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            removed = [inet_ntoa(a.packed) for a, lease in batch.items() if lease.is_removal]
            stored = [_row(lease) for lease in batch.values() if not lease.is_removal]
            # Many rows per statement: sqlite3 releases and retakes the interpreter lock
            # around every step, and each of those is a hand-over with the reactor thread.
            for chunk in _chunks(removed, _ROWS_PER_STATEMENT):
                marks = ", ".join("?" * len(chunk))
                connection.execute(f"DELETE FROM leases WHERE address IN ({marks})", chunk)
            for chunk in _chunks(stored, _ROWS_PER_STATEMENT):
                marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                connection.execute(
                    f"INSERT OR REPLACE INTO leases ({_COLUMNS}) VALUES {marks}",
                    [value for row in chunk for value in row],
                )
            if self._before_commit is not None:
                self._before_commit()
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return time.perf_counter() - started

    def _committed(
        self,
        result: Failure | float,
        batch: Mapping[IPv4Address, Lease],
        waiters: list[Deferred[None]],
    ) -> None:
        self._in_flight = False
        if isinstance(result, Failure):
            log.failure(
                "could not store {count} lease changes in {path}",
                failure=result,
                count=len(batch),
                path=str(self.path),
            )
            # The table still holds these changes; keep them ahead of newer ones so the file
            # catches up with memory at the next commit that succeeds. Their replies are
            # withheld: the callers see the failure.
            self._pending[:0] = batch.values()
            for waiter in waiters:
                waiter.errback(result)
        else:
            self.transactions += 1
            self.committed_writes += len(waiters)
            if self.on_commit is not None:
                try:
                    self.on_commit(result, len(waiters))
                except Exception:
                    log.failure("lease store commit observer failed")
            for waiter in waiters:
                waiter.callback(None)
        if self._waiters:
            self._schedule()
        elif self._closing:
            self._shut_down()

    def _shut_down(self) -> None:
        if self._closed is not None:
            return
        if self._pending:
            log.warn(
                "closing {path} with {count} lease changes that could not be stored",
                path=str(self.path),
                count=len(self._pending),
            )
        if self._threads.started:
            self._closed = deferToThreadPool(self._reactor, self._threads, self._connection.close)
        else:
            self._connection.close()  # never written: nothing to wait for
            self._closed = succeed(None)
        self._closed.addBoth(self._stopped)

    def _stopped(self, result: Failure | None) -> None:
        if self._threads.started:
            self._threads.stop()
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)


def redacted(url: str) -> str:
    """A lease store URL fit for a log line: a password in it is replaced by ``***``."""
    url = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?]*):[^@/?]*@", r"\1:***@", url)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


def open_lease_store(url: str, reactor: IStoreReactor) -> ILeaseStore:
    """The store a ``dhcp.leases`` URL names.

    * ``sqlite:/var/lib/pxetwist/leases.sqlite`` (or ``sqlite:///...``; a relative path is
      relative to the working directory), optionally ``?synchronous=normal``; parent
      directories are created.
    * ``memory:``: nothing survives a restart.
    * ``postgresql://user@host/database`` (any libpq URL): the store several servers share
      (:mod:`pxetwist.dhcp.pgstore`); the database decides who gets an address.
    """
    scheme, colon, rest = url.partition(":")
    scheme = scheme.strip().lower()
    if not colon:
        raise ValueError(
            f"lease store {url!r} is not a URL: use sqlite:/path/leases.sqlite or memory:"
        )
    if scheme == "memory" and not rest.strip():
        return MemoryLeaseStore()
    if scheme in ("postgresql", "postgres"):
        # Never echo the URL: it may carry a password.
        try:
            from pxetwist.dhcp.pgstore import PostgresLeaseStore
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ValueError(
                "a postgresql:// lease store needs psycopg 3: pip install 'pxetwist[postgresql]'"
            ) from error
        return PostgresLeaseStore(url, reactor)
    if scheme != "sqlite":
        raise ValueError(
            f"unknown lease store {scheme!r}: use sqlite:/path/leases.sqlite or memory:"
        )
    location, _, query = rest.partition("?")
    if location.startswith("//"):
        if not location.startswith("///"):
            raise ValueError(
                f"lease store {url!r}: a SQLite file has no host; write sqlite:/path/file"
            )
        location = location[2:]
    if not location:
        raise ValueError(f"lease store {url!r} names no file")
    options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise ValueError(f"lease store {url!r}: unknown option(s) {', '.join(sorted(unknown))}")
    synchronous = options.get("synchronous", ["full"])[-1]
    if synchronous.upper() not in ("FULL", "NORMAL"):
        raise ValueError(f"lease store {url!r}: synchronous is full or normal")
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteLeaseStore(path, reactor, synchronous=synchronous)

"""API-defined machines in the shared PostgreSQL database, when the leases are there (issue 15).

Several servers answer the same machines: one added, changed or deleted through one server's
API (a reservation included) must be answered the same way by every other.  So when
``dhcp.leases`` is a ``postgresql://`` URL the :class:`~pxetwist.policy.overlay.MachineOverlay`
keeps its machines in the database's ``machines`` table (schema version 3,
:mod:`pxetwist.db.schema`) instead of ``data_dir/machines.json``:

* a write goes to the database first, on a worker thread (never on the reactor), in one
  transaction that also checks the reservation against every server's leases and bumps
  ``machines_version``; the overlay changes only once it is committed;
* :class:`SharedMachinesService` polls ``machines_version`` every ``interval`` seconds on the
  same thread and reads the table again when another server (or process) moved it, so every
  server serves a change within a few seconds;
* the database refuses a second machine on one address (a unique index), and a bound claim of
  a reserved address for another client (a trigger on ``leases``): no server can give a
  reserved address to anyone else, whatever its own view of the machines.

Reservations written in the config file stay in the config file: every server reads its own
(the same file on every server, as for everything else the config decides).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from pxetwist.config.model import Config
from pxetwist.db.schema import ADDRESS_LOCK, prepare
from pxetwist.policy.overlay import AddressReserved, MachineOverlay
from pxetwist.policy.values import MacAddress

log = Logger()

T = TypeVar("T")
InThread = Callable[..., "Deferred[Any]"]

POLL_INTERVAL = 1.0  # seconds between looks at machines_version


def shared_url(config: Config) -> str | None:
    """The database URL when machines are shared (the leases are on PostgreSQL)."""
    url = config.lease_store_url
    return url if url.lower().startswith(("postgresql:", "postgres:")) else None


class PostgresMachines:
    """The ``machines`` table; one connection, used by one thread at a time (blocking)."""

    def __init__(self, url: str, *, server: str | None = None) -> None:
        import psycopg  # optional: only a postgresql:// database needs it

        self.server = server or f"{socket.gethostname()}/{os.getpid()}"
        self._url = url
        self._connection: Any = psycopg.connect(url, autocommit=True, connect_timeout=5)
        try:
            prepare(self._connection, where="the shared database")
        except BaseException:
            self._connection.close()
            raise

    def close(self) -> None:
        self._connection.close()

    def reconnect_if_lost(self) -> None:
        """A new connection when the last one broke (the database restarted or was away);
        raises while the database cannot be reached.  The schema was checked at start."""
        if not (self._connection.closed or self._connection.broken):
            return
        import psycopg

        self._connection.close()
        self._connection = psycopg.connect(self._url, autocommit=True, connect_timeout=5)

    def version(self) -> int:
        row = self._connection.execute("SELECT version FROM machines_version").fetchone()
        return int(row[0])

    def load(self) -> tuple[int, list[dict[str, Any]]]:
        """The version and every definition, read in one snapshot."""
        with self._connection.transaction():
            self._connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            version = self.version()
            rows = self._connection.execute(
                "SELECT mac, definition FROM machines ORDER BY mac"
            ).fetchall()
        definitions = []
        for mac, text in rows:
            try:
                definition = json.loads(text)
            except ValueError:
                log.error("shared machine {mac}: unreadable definition, skipped", mac=mac)
                continue
            if isinstance(definition, dict):
                definitions.append(definition)
        return version, definitions

    def put(self, definition: Mapping[str, Any], address: str | None, now: float) -> None:
        """Store one machine; :class:`AddressReserved` when its address is another machine's
        reservation or another client's live binding (on any server)."""
        import psycopg

        mac = str(definition["mac"])
        connection = self._connection
        try:
            with connection.transaction():
                if address is not None:
                    connection.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (ADDRESS_LOCK, address)
                    )
                    held = connection.execute(
                        "SELECT mac, state FROM leases WHERE address = %s AND state = 'bound'"
                        " AND expires > %s AND mac IS DISTINCT FROM %s",
                        (address, now, mac),
                    ).fetchone()
                    if held is not None:
                        raise AddressReserved(
                            f"{address} is in use: leased to {held[0] or 'another client'} "
                            f"({held[1]}) in the shared database",
                            source="machine definition",
                            path=("address",),
                        )
                connection.execute(
                    "INSERT INTO machines (mac, definition, address, server, changed_at)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (mac) DO UPDATE SET"
                    " definition = EXCLUDED.definition, address = EXCLUDED.address,"
                    " server = EXCLUDED.server, changed_at = EXCLUDED.changed_at",
                    (mac, json.dumps(dict(definition), sort_keys=True), address, self.server, now),
                )
                connection.execute("UPDATE machines_version SET version = version + 1")
        except psycopg.errors.UniqueViolation:
            owner = connection.execute(
                "SELECT mac FROM machines WHERE address = %s", (address,)
            ).fetchone()
            raise AddressReserved(
                f"{address} is already reserved for machine {owner[0] if owner else 'another'}"
                " (in the shared database)",
                source="machine definition",
                path=("address",),
            ) from None

    def remove(self, mac: str) -> bool:
        with self._connection.transaction():
            row = self._connection.execute(
                "DELETE FROM machines WHERE mac = %s RETURNING mac", (mac,)
            ).fetchone()
            if row is not None:
                self._connection.execute("UPDATE machines_version SET version = version + 1")
        return row is not None


def load_shared(url: str) -> list[dict[str, Any]]:
    """Every shared definition, read once (start-up, ``pxetwist explain``)."""
    machines = PostgresMachines(url)
    try:
        return machines.load()[1]
    finally:
        machines.close()


class SharedMachinesService(Service):
    """Keeps a :class:`MachineOverlay` on the shared database: writes and polls on one worker
    thread, changes applied to the overlay on the reactor thread."""

    name = "shared-machines"

    def __init__(
        self,
        config: Config,
        reactor: IReactorTime,
        *,
        interval: float = POLL_INTERVAL,
        in_thread: InThread | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url = shared_url(config)
        if url is None:
            raise ValueError("machines are shared only when the leases are on PostgreSQL")
        self.url = url
        self.config = config
        self.reactor = reactor
        self.interval = interval
        self._clock = clock
        self._in_thread = in_thread
        self._threads: ThreadPool | None = None
        self._database: PostgresMachines | None = None
        self._version: int | None = None
        self._loop: LoopingCall | None = None
        self._polling = False
        self._unreachable = False
        self.overlay: MachineOverlay | None = None

    # -- the service ---------------------------------------------------------------------------

    def startService(self) -> None:
        """Connect and read every machine (synchronously: before anything is served)."""
        super().startService()
        database = self._database = PostgresMachines(self.url)
        version, definitions = database.load()
        self._version = version
        overlay = self.overlay = MachineOverlay.for_config(self.config)
        overlay.attach(self)
        overlay.replace_all(definitions)
        if self._in_thread is None:
            pool = self._threads = ThreadPool(minthreads=1, maxthreads=1, name="shared-machines")
            pool.start()
        loop = self._loop = LoopingCall(self.poll)
        loop.clock = self.reactor
        loop.start(self.interval, now=False).addErrback(
            lambda failure: log.failure("shared machines: polling stopped", failure)
        )

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.overlay is not None:
            self.overlay.attach(None)
        if self._threads is not None:
            self._threads.stop()
            self._threads = None
        if self._database is not None:
            self._database.close()
            self._database = None
        return None

    def configure(self, config: Config) -> None:
        """A reload: the overlay of the new config's data directory follows the database."""
        self.config = config
        overlay = MachineOverlay.for_config(config)
        if overlay is not self.overlay and self.overlay is not None:
            self.overlay.attach(None)
            overlay.attach(self)
            self.overlay = overlay
            self._version = None  # read everything into it at the next poll

    # -- the overlay's backend -----------------------------------------------------------------

    def save(self, definition: Mapping[str, Any], address: str | None) -> Deferred[None]:
        return self._run(self._put, dict(definition), address)

    def delete(self, mac: MacAddress) -> Deferred[bool]:
        return self._run(self._remove, str(mac))

    def _put(self, definition: dict[str, Any], address: str | None) -> None:
        assert self._database is not None
        self._database.reconnect_if_lost()
        self._database.put(definition, address, self._clock())

    def _remove(self, mac: str) -> bool:
        assert self._database is not None
        self._database.reconnect_if_lost()
        return self._database.remove(mac)

    # -- polling -------------------------------------------------------------------------------

    def poll(self) -> Deferred[None] | None:
        """Read the machines again if any server changed them since the last look."""
        if self._polling or self._database is None:
            return None
        self._polling = True
        seen = self._version

        def read() -> tuple[int, list[dict[str, Any]]] | None:
            assert self._database is not None
            self._database.reconnect_if_lost()
            if seen is not None and self._database.version() == seen:
                return None
            return self._database.load()

        def apply(result: tuple[int, list[dict[str, Any]]] | None) -> None:
            if self._unreachable:
                self._unreachable = False
                log.info("shared machines: the database is back")
            if result is None or self.overlay is None:
                return
            version, definitions = result
            if version != self._version:
                self._version = version
                self.overlay.replace_all(definitions)

        def failed(failure: Failure) -> None:
            # One line per change of state, not one per poll: the last known machines are
            # served meanwhile, and the next poll after the database is back reads them all.
            if not self._unreachable:
                self._unreachable = True
                self._version = None
                log.error(
                    "shared machines: cannot read the database ({error}); serving the last "
                    "known machines, trying again every {interval} s",
                    error=failure.getErrorMessage().strip(),
                    interval=self.interval,
                )

        def done(result: object) -> None:
            self._polling = False

        polled: Deferred[None] = self._run(read).addCallback(apply).addErrback(failed)
        polled.addBoth(done)
        return polled

    def _run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._in_thread is not None:
            return self._in_thread(function, *args)
        assert self._threads is not None and IReactorThreads.providedBy(self.reactor)
        return deferToThreadPool(self.reactor, self._threads, function, *args)  # type: ignore[arg-type]

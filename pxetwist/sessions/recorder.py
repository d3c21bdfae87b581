# -*- test-case-name: tests.sessions.test_recorder -*-
"""Sessions and boot once in the running server: subscribed to the bus, persisted off the reactor.

:class:`SessionRecorder` is a Twisted service that wires the pieces together::

    BootEventBus -> Attribution (MAC for address-only events) -> SessionRegistry
                                                              -> BootOnce (also the chain's gate)

and runs one timer (``sessions.flush_interval``, a second by default) that places events
waiting for the neighbour table, marks silent sessions stuck, and hands what changed (sessions,
used-up boots) to one writer thread of its own, which stores it in ``data_dir/sessions.sqlite``
and tells the reactor when ``pxetwist machines reset-boot`` has changed the boot-once table.
Nothing on the per-event path touches a file, a socket or a lock; when a write is still running
at the next tick, what changed waits for the one after (the newest state of a session wins).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from pxetwist.config.model import Config
from pxetwist.context import ServerContext
from pxetwist.events import BootEventBus
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.sessions.attribution import Attribution
from pxetwist.sessions.bootonce import BootOnce
from pxetwist.sessions.model import Session
from pxetwist.sessions.registry import SessionRegistry
from pxetwist.sessions.shared import PostgresBootOnce, shared_store
from pxetwist.sessions.store import SessionRow, SessionStore, UsedBoot

log = Logger()

T = TypeVar("T")
InThread = Callable[..., "Deferred[Any]"]


def _write(
    store: SessionStore,
    rows: Sequence[SessionRow],
    used: Sequence[UsedBoot],
    keep: int,
    max_sessions: int,
    seen_version: int | None,
    shared: PostgresBootOnce | None = None,
) -> tuple[int, list[UsedBoot] | None]:
    """On the writer thread: store, then read the boot-once table if another process changed it.

    With a ``shared`` database (leases on PostgreSQL), used boots go there first and are read
    back from there whenever any server (or ``pxetwist machines reset-boot``) changed them.
    """
    if shared is not None:
        shared.save(used)
    if rows or used:
        store.save(
            rows,
            used,
            keep=keep,
            max_sessions=max_sessions,
        )
    if shared is not None:
        version = shared.version()
        if seen_version is not None and version == seen_version:
            return version, None
        return version, shared.used_boots()
    version = store.data_version()
    if seen_version is not None and version == seen_version:
        return version, None
    return version, store.used_boots()


class SessionRecorder(Service):
    """See the module docstring; ``registry`` is None when ``sessions.enabled`` is false."""

    name = "sessions"

    def __init__(
        self,
        config: Config,
        bus: BootEventBus,
        sightings: SightingRegistry | None,
        reactor: IReactorTime,
        *,
        in_thread: InThread | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.reactor = reactor
        self.bootonce = BootOnce()
        self.registry: SessionRegistry | None = None
        if config.sessions.enabled:
            self.registry = SessionRegistry(
                reactor, config.sessions, files_for=self.bootonce.files_for
            )
        observers: list[Callable[[Any], None]] = [self.bootonce]
        if self.registry is not None:
            observers.insert(0, self.registry)
        self.attribution = Attribution(observers, sightings)
        self._in_thread = in_thread
        self._threads: ThreadPool | None = None
        self._store: SessionStore | None = None
        self._shared: PostgresBootOnce | None = None
        self._loop: LoopingCall | None = None
        self._writing: Deferred[None] | None = None
        self._version: int | None = None
        self.writes = 0
        self.write_failures = 0
        #: Told the sessions that changed, at each tick (the metrics count finished boots).
        self.changed_listeners: list[Callable[[Sequence[Session]], None]] = []

    def open(self) -> None:
        """Open the store and load the used boots (synchronously: before anything is served)."""
        if self._store is not None:
            return
        self._store = SessionStore(self.config.sessions_path)
        self._shared = shared_store(self.config)
        if self._shared is not None:
            self._version = self._shared.version()
            self.bootonce.replace_used(self._shared.used_boots())
            return
        self._version = self._store.data_version()
        self.bootonce.replace_used(self._store.used_boots())

    def startService(self) -> None:
        super().startService()
        self.open()
        if self._in_thread is None:
            pool = ThreadPool(minthreads=1, maxthreads=1, name="sessions-store")
            pool.start()
            self._threads = pool
        self.bus.subscribe(self.attribution)
        loop = self._loop = LoopingCall(self.tick)
        loop.clock = self.reactor
        loop.start(self.config.sessions.flush_interval, now=False).addErrback(
            lambda failure: log.failure("sessions timer stopped", failure)
        )

    def configure(self, config: Config) -> None:
        """Take a reloaded config: limits and the interval change, state is kept."""
        self.config = config
        if self.registry is not None:
            self.registry.configure(config.sessions)
        loop = self._loop
        if loop is not None and loop.running and loop.interval != config.sessions.flush_interval:
            loop.stop()
            loop.start(config.sessions.flush_interval, now=False)

    def tick(self) -> Deferred[None]:
        """The timer: place waiting events, judge silent sessions, write what changed."""
        self.attribution.resolve()
        if self.registry is not None:
            self.registry.sweep()
        return self.flush()

    def flush(self) -> Deferred[None]:
        """Hand what changed to the writer thread, unless a write is still running."""
        if self._writing is not None or self._store is None:
            return succeed(None)
        changed = self.registry.take_dirty() if self.registry is not None else []
        for listener in self.changed_listeners:
            try:
                listener(changed)
            except Exception:
                log.failure("sessions: a listener failed")
        rows = [SessionRow.of(session) for session in changed]
        used = self.bootonce.take_unsaved()
        settings = self.config.sessions
        writing = self._run(
            _write,
            self._store,
            rows,
            used,
            settings.keep,
            settings.max_sessions,
            self._version,
            self._shared,
        ).addCallbacks(self._written, self._failed, errbackArgs=(used,))
        self._writing = writing
        writing.addBoth(self._done_writing)
        return writing

    def _run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._in_thread is not None:
            return self._in_thread(function, *args)
        assert self._threads is not None
        return deferToThreadPool(self.reactor, self._threads, function, *args)  # type: ignore[arg-type]

    def _written(self, result: tuple[int, list[UsedBoot] | None]) -> None:
        self.writes += 1
        version, used = result
        self._version = version
        if used is not None:
            self.bootonce.replace_used(used, self.bootonce.unsaved)

    def _failed(self, failure: Failure, used: list[UsedBoot]) -> None:
        self.write_failures += 1
        self.bootonce.requeue(used)
        if self.write_failures == 1 or self.write_failures % 100 == 0:
            log.failure(
                "sessions: cannot write {path} ({count} failures so far); sessions are kept "
                "in memory and boot-once records retried",
                failure,
                path=str(self.config.sessions_path),
                count=self.write_failures,
            )

    def _done_writing(self, _: None) -> None:
        self._writing = None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.bus.unsubscribe(self.attribution)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        waiting: Deferred[Any] = Deferred()
        if self._writing is not None:
            self._writing.addBoth(waiting.callback)
        else:
            waiting.callback(None)
        waiting.addBoth(lambda _: self.flush())  # the last changes, once the running write ends
        waiting.addBoth(self._close)
        return waiting

    def _close(self, _: object) -> None:
        if self._threads is not None:
            self._threads.stop()
            self._threads = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None


def recorder_for(context: ServerContext) -> SessionRecorder:
    """The recorder of a running server: its gate goes on the chain before any protocol asks it.

    Built before the protocol services (which read ``context.chain`` per request), so every
    decision passes the boot-once gate; a reload keeps the gate on the new chain
    (:mod:`pxetwist.reload`), and the recorder takes the new config's limits.
    """
    recorder = SessionRecorder(context.config, context.events, context.sightings, context.reactor)
    current = context.live.current
    context.live.replace(
        attrs.evolve(current, chain=attrs.evolve(current.chain, gate=recorder.bootonce.gate))
    )
    context.live.subscribe(lambda old, new: recorder.configure(new.config))
    return recorder


def in_this_thread(function: Callable[..., T], *args: Any) -> Deferred[T]:
    """An ``in_thread`` for tests: run the write at once, on the calling thread."""
    return maybeDeferred(function, *args)

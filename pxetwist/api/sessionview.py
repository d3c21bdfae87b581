"""The session recorder (issue 13) as the API sees it: sessions and boot once.

Sessions come from the registry's memory (each machine's current and last few sessions, as
``pxetwist sessions --json`` prints them); boot-once state from the recorder's :class:`BootOnce`,
and a reset goes to ``sessions.sqlite`` as ``pxetwist machines reset-boot`` does, on a thread,
and to the running gate at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from pxetwist.api.sources import IBootOnce, ISessionView
from pxetwist.policy.values import MacAddress
from pxetwist.sessions.cli import load_sessions
from pxetwist.sessions.model import Session
from pxetwist.sessions.recorder import SessionRecorder
from pxetwist.sessions.shared import reset_shared
from pxetwist.sessions.store import SessionStore, UsedBoot


@implementer(ISessionView)
class NoSessions:
    """Before the recorder is found (or in a process without one): no sessions."""

    def sessions(self, mac: MacAddress | None, limit: int) -> Sequence[dict[str, Any]]:
        return []

    def stuck(self) -> Sequence[dict[str, Any]]:
        return []

    def latest(self, limit: int) -> Sequence[dict[str, Any]]:
        return []


@implementer(ISessionView)
class RecorderSessions:
    """The registry's sessions (each machine's current and last few), and when more are asked
    for than memory holds, the older ones from ``sessions.sqlite`` (read on a thread, judged as
    ``pxetwist sessions`` judges them), so the API shows the history a restart kept."""

    def __init__(
        self,
        recorder: SessionRecorder,
        in_thread: Callable[..., Deferred[Any]] = deferToThread,
    ) -> None:
        self.recorder = recorder
        self._in_thread = in_thread

    def sessions(
        self, mac: MacAddress | None, limit: int
    ) -> Sequence[dict[str, Any]] | Deferred[Sequence[dict[str, Any]]]:
        registry = self.recorder.registry
        if registry is None:
            return []
        memory = sorted(registry.sessions(mac), key=lambda s: s.updated, reverse=True)
        if len(memory) >= limit:
            return [session.as_json() for session in memory[:limit]]

        def merge(stored: list[Session]) -> Sequence[dict[str, Any]]:
            by_id = {session.id: session for session in stored}
            by_id.update((session.id, session) for session in memory)  # memory is newer
            merged = sorted(by_id.values(), key=lambda s: s.updated, reverse=True)
            return [session.as_json() for session in merged[:limit]]

        stored: Deferred[list[Session]] = self._in_thread(
            load_sessions, self.recorder.config, mac, limit
        )
        return stored.addCallback(merge)

    def _latest(self) -> list[Session]:
        registry = self.recorder.registry
        if registry is None:
            return []
        latest: dict[MacAddress, Session] = {}
        for session in registry.sessions():
            if session.mac not in latest:  # newest first: the machine's current attempt
                latest[session.mac] = session
        return list(latest.values())

    def stuck(self) -> Sequence[dict[str, Any]]:
        stuck = [s for s in self._latest() if s.state.value == "stuck"]
        stuck.sort(key=lambda session: session.updated)
        return [session.as_json() for session in stuck]

    def latest(self, limit: int) -> Sequence[dict[str, Any]]:
        found = sorted(self._latest(), key=lambda session: session.updated, reverse=True)
        return [session.as_json() for session in found[:limit]]


def _reset_in_store(recorder: SessionRecorder, mac: MacAddress) -> UsedBoot | None:
    store = SessionStore(recorder.config.sessions_path)
    try:
        record = store.reset_boot(str(mac))
    finally:
        store.close()
    return reset_shared(recorder.config, str(mac)) or record


@implementer(IBootOnce)
class RecorderBootOnce:
    def __init__(
        self,
        recorder: SessionRecorder,
        in_thread: Callable[..., Deferred[Any]] = deferToThread,
    ) -> None:
        self.recorder = recorder
        self._in_thread = in_thread

    def state(self, mac: MacAddress) -> dict[str, Any]:
        bootonce = self.recorder.bootonce
        used = bootonce.used_record(mac)
        return {
            "mac": str(mac),
            "armed": bootonce.is_armed(mac),
            "used": used is not None,
            "used_at": used.used_at if used is not None else None,
            "how": used.how if used is not None else None,
        }

    def reset(self, mac: MacAddress) -> Deferred[dict[str, Any]]:
        """The store first (so the recorder's next read agrees), then the running gate."""

        def forget(_: object) -> dict[str, Any]:
            self.recorder.bootonce.forget_used(mac)
            return self.state(mac)

        done: Deferred[Any] = self._in_thread(_reset_in_store, self.recorder, mac)
        return done.addCallback(forget)

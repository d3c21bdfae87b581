"""The reactor ``twistd pxe`` runs on unless told otherwise: epoll, without a log context per event.

Twisted's epoll reactor hands each ready descriptor to it inside ``log.callWithLogger``, which
pushes a ``{"system": prefix}`` context for the legacy ``log.msg`` API and pops it again: about
2 us of Python per event.  Nothing in pxetwist logs through that API (its lines carry their own
namespace), and a boot storm is hundreds of thousands of such events: every lockstep TFTP block
wakes the server once, since a client sends its next ACK only after the last block arrives
(measured, bench/README "Storm").  :class:`BootReactor` dispatches each event directly; what a
descriptor's ``doRead`` or ``doWrite`` raises is still logged and disconnects that descriptor,
as in Twisted, and the loop goes on.

Under load it also paces its polls (:data:`PACE_INTERVAL`): with many descriptors registered, a
poll that would come sooner than that after the last one's wake-up first sleeps out the rest.
In a storm of lockstep transfers each wake-up otherwise carries one or two blocks, and the
wake-up (the scheduler's switch in and out, ``epoll_wait``, the loop's own Python) costs more
than the block; paced, the ACKs that arrive meanwhile are served by one wake-up.  It adds at
most :data:`PACE_INTERVAL` to an answer, and nothing when the dispatch itself takes that long,
which is when the server is busiest (measured, bench/README "Paced polls").

:func:`install_default` installs it when twistd has not installed another (``twistd -r NAME
pxe`` still picks any reactor), before anything imports ``twisted.internet.reactor``.
"""

from __future__ import annotations

import errno
import sys
import time
from typing import Final

from twisted.logger import Logger

log = Logger()

PACE_INTERVAL: Final = 0.0004
"""Seconds from one poll's wake-up to the next poll, at the least, under load.  400 us is far
under any retransmission timer (TFTP's 1 s, DHCP's 4 s); in an N = 500 storm it cut the
server's CPU per boot by about 15 %, where 100-200 us saved less (bench/README "Paced polls")."""

PACE_THRESHOLD: Final = 64
"""Registered descriptors from which polls are paced: a rack's transfers or downloads at once.
Fewer, and every event is served the moment it is ready, as on Twisted's reactor."""

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - not Linux: Twisted's default reactor is used
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class BootReactor(EPollReactor):
        """:class:`~twisted.internet.epollreactor.EPollReactor`, minus the per-event context, with
        its polls paced under load (see the module's docstring)."""

        dispatches_directly = True
        """A ready descriptor costs one method call here: the TFTP transfer sockets register
        with it directly (:class:`pxetwist.tftp.sockets.TransferMux`)."""

        pace_interval: float = PACE_INTERVAL
        pace_threshold: int = PACE_THRESHOLD
        _clock = staticmethod(time.monotonic)
        _sleep = staticmethod(time.sleep)
        _woke = 0.0

        def doPoll(self, timeout: float | None) -> None:
            selectables = self._selectables
            if len(selectables) >= self.pace_threshold:
                early = self._woke + self.pace_interval - self._clock()
                if timeout is not None and early > timeout:
                    early = timeout  # a timed call due sooner still runs on time
                if early > 0:
                    if timeout is not None:
                        timeout -= early
                    self._sleep(early)
            try:
                events = self._poller.poll(-1 if timeout is None else timeout, len(selectables))
            except OSError as error:
                if error.errno == errno.EINTR:
                    return
                raise
            self._woke = self._clock()
            dispatch = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue  # removed by an earlier event of this same poll
                try:
                    dispatch(selectable, fd, event)
                except Exception:  # _doReadOrWrite catches what the descriptor raises
                    log.failure("reactor: dispatching an event on descriptor {fd}", fd=fd)

        doIteration = doPoll


def install_default() -> str:
    """Install :class:`BootReactor` unless a reactor is installed already; name the one in use.

    Called by ``twistd pxe`` before it first imports ``twisted.internet.reactor`` (twistd
    installs a reactor that early only when given ``-r``).
    """
    if "twisted.internet.reactor" not in sys.modules and EPollReactor is not None:
        install()
    from twisted.internet import reactor

    return type(reactor).__name__


def install() -> None:
    """Install :class:`BootReactor` (for a transfer worker, which starts without a reactor)."""
    from twisted.internet.main import installReactor

    installReactor(BootReactor())


__all__ = ["PACE_INTERVAL", "PACE_THRESHOLD", "BootReactor", "install", "install_default"]

"""The reactor ``twistd pxe`` runs on unless told otherwise: epoll, without a log context per event.

Twisted's epoll reactor hands each ready descriptor to it inside ``log.callWithLogger``, which
pushes a ``{"system": prefix}`` context for the legacy ``log.msg`` API and pops it again: about
2 us of Python per event.  Nothing in pxetwist logs through that API (its lines carry their own
namespace), and a boot storm is hundreds of thousands of such events: every lockstep TFTP block
wakes the server once, since a client sends its next ACK only after the last block arrives
(measured, bench/README "Storm").  :class:`BootReactor` dispatches each event directly, and a
plain readable or writable event (all but hang-ups, errors and both at once) goes straight to
``doRead`` or ``doWrite`` without ``_doReadOrWrite``'s flag tests; what a descriptor's
``doRead`` or ``doWrite`` raises or returns is still logged and disconnects that descriptor, as
in Twisted, and the loop goes on.

:func:`install_default` installs it when twistd has not installed another (``twistd -r NAME
pxe`` still picks any reactor), before anything imports ``twisted.internet.reactor``.
"""

from __future__ import annotations

import errno
import sys

from twisted.logger import Logger

log = Logger()

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - not Linux: Twisted's default reactor is used
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:
    from select import EPOLLIN, EPOLLOUT

    from twisted.internet.posixbase import _NO_FILEDESC

    _READABLE = EPOLLIN
    _PLAIN = frozenset((EPOLLIN, EPOLLOUT))  # readable only, or writable only

    class BootReactor(EPollReactor):
        """:class:`~twisted.internet.epollreactor.EPollReactor`, minus the per-event context."""

        dispatches_directly = True
        """A ready descriptor costs one method call here: the TFTP transfer sockets register
        with it directly (:class:`pxetwist.tftp.sockets.TransferMux`)."""

        def doPoll(self, timeout: float | None) -> None:
            try:
                events = self._poller.poll(
                    -1 if timeout is None else timeout, len(self._selectables)
                )
            except OSError as error:
                if error.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            dispatch = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue  # removed by an earlier event of this same poll
                try:
                    if event in _PLAIN:
                        # The storm's every event (an ACK, a DHCP datagram, a request, a
                        # sendfile body's socket with room again): what _doReadOrWrite does for
                        # it, without its flag tests.
                        reading = event == _READABLE
                        if selectable.fileno() == -1:
                            why: object = _NO_FILEDESC
                        else:
                            try:
                                why = selectable.doRead() if reading else selectable.doWrite()
                            except BaseException as error:
                                why = error
                                log.failure(
                                    "reactor: {doing} descriptor {fd}",
                                    doing="reading" if reading else "writing",
                                    fd=fd,
                                )
                        if why:
                            self._disconnectSelectable(selectable, why, reading)
                    else:  # several flags, or a hang-up or error: Twisted's own handling
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


__all__ = ["BootReactor", "install", "install_default"]

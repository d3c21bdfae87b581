# -*- test-case-name: tests.tftp.test_workers -*-
"""A TFTP transfer worker process: runs the transfers the main process hands it.

Forked by the *spawner* (``python -m pxetwist.tftp.worker --spawner --control-fd 3 [--uid N
--gid N]``, which :class:`pxetwist.tftp.workers.WorkerPool` starts as root before ``twistd``
switches users): the spawner imports everything a worker runs, becomes the service user, and
forks one worker for each ``spawn`` request, whose descriptor is the worker's end of a
``SOCK_SEQPACKET`` control socket.  A worker started long after the switch thus never reads the
interpreter or the code as the service user (who may not be allowed to).  Each runs its own
epoll reactor with the same transfer machinery as the main process (:class:`Transfer` over a
:class:`TransferSocket` in a :class:`TransferMux`), fed by :class:`Handoff` messages that carry
the transfer's bound socket and its file.  It reports every transfer's end, and it exits when
the main process closes the control socket (or dies): its transfers get ERROR 0 first.

It decides nothing about files or machines: confinement and the policy were applied by the main
process, which also writes every transfer's log line.  What it logs itself (send errors, stray
datagrams) goes to stderr as ``LEVEL PID text`` lines, which the main process relays into its
log.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Sequence
from typing import IO, Final, cast

from twisted.internet.interfaces import IReactorCore, IReadDescriptor, IWriteDescriptor
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.context import ITransferReactor
from pxetwist.privileges import RunAs, become
from pxetwist.tftp.files import FileSource
from pxetwist.tftp.handoff import (
    MAX_MESSAGE,
    Cancel,
    Ended,
    Handoff,
    MalformedMessage,
    Ready,
    decode_message,
    decode_transfer_id,
    encode_message,
)
from pxetwist.tftp.packet import ErrorCode, error_datagram
from pxetwist.tftp.session import Outcome, ReadSession, TransferSummary
from pxetwist.tftp.shared import SharedBlockCache
from pxetwist.tftp.sockets import TransferMux, TransferSocket
from pxetwist.tftp.transfer import Transfer
from pxetwist.tftp.workers import SPAWN_REQUEST

log = Logger()


@implementer(IReadDescriptor, IWriteDescriptor)
class WorkerHost:
    """The worker's side of the control socket, and the owner of the transfers it runs."""

    def __init__(self, reactor: ITransferReactor, control: socket.socket) -> None:
        self.reactor = reactor
        self.control = control
        self.transfers: dict[int, Transfer] = {}
        self._ids: dict[Transfer, int] = {}
        self._mux: TransferMux | None = None
        self.shared_blocks = SharedBlockCache()
        """DATA datagrams of the files this worker serves, shared by its transfers."""
        self._outbox: deque[bytes] = deque()
        self._writing = False
        self._closing = False
        control.setblocking(False)

    @property
    def busy(self) -> int:
        """Transfers this worker runs (a lone one is served in place)."""
        return len(self.transfers)

    @property
    def server(self) -> WorkerHost:
        """Transfers ask their owner's server how many run (a lone one is served in place)."""
        return self

    def mux(self) -> TransferMux:
        if self._mux is None:
            self._mux = TransferMux(self.reactor)
        return self._mux

    def start(self) -> None:
        self.reactor.addReader(self)
        self._send(Ready(os.getpid()))

    # IReadDescriptor.

    def fileno(self) -> int:
        return self.control.fileno()

    def logPrefix(self) -> str:
        return "tftp-worker-control"

    def connectionLost(self, reason: Failure) -> None:
        self._shut_down()

    def doRead(self) -> None:
        for _ in range(64):
            try:
                data, fds, flags, _addr = socket.recv_fds(self.control, MAX_MESSAGE + 1, 2)
            except BlockingIOError:
                return
            except OSError:
                data, fds, flags = b"", [], 0
            if not data:
                for fd in fds:
                    os.close(fd)
                self._shut_down()
                return
            try:
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
                    raise MalformedMessage("control message cut short", decode_transfer_id(data))
                message = decode_message(data)
            except MalformedMessage as error:
                for fd in fds:
                    os.close(fd)
                self._undecodable(error)
                continue
            if isinstance(message, Handoff):
                self._take(message, fds)
            else:
                for fd in fds:
                    os.close(fd)
                if isinstance(message, Cancel):
                    transfer = self.transfers.get(message.transfer_id)
                    if transfer is not None:
                        transfer.abort(message.reason)

    def _undecodable(self, error: MalformedMessage) -> None:
        """Log it, and if it named a transfer, report that transfer ended: its slot in the
        main process must not wait for a transfer that never starts."""
        log.error("undecodable control message: {error}", error=str(error))
        if error.transfer_id:
            self._send(Ended(error.transfer_id, _failed(f"hand-off not understood: {error}")))

    # Transfers.

    def _take(self, handoff: Handoff, fds: Sequence[int]) -> None:
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            log.error("hand-off {id} without its two descriptors", id=handoff.transfer_id)
            self._send(Ended(handoff.transfer_id, _failed("hand-off without descriptors")))
            return
        sock = socket.socket(fileno=fds[0])
        source = FileSource(fds[1], os.fstat(fds[1]).st_size)
        try:
            shared = self.shared_blocks.blocks(source, handoff.negotiation.blksize)
            session = ReadSession(handoff.negotiation, source, handoff.limits, shared)
        except Exception as error:
            source.close()
            with contextlib.suppress(OSError):
                sock.sendto(error_datagram(ErrorCode.NOT_DEFINED, "Internal error"), handoff.peer)
            sock.close()
            log.error("cannot start a transfer: {error}", error=str(error))
            self._send(Ended(handoff.transfer_id, _failed(f"cannot start: {error}")))
            return
        transfer = Transfer(
            self, handoff.peer, session, source, self.reactor.seconds(), handoff.mtu
        )
        port = TransferSocket(self.mux(), sock, transfer)
        transfer.attach(port, port.socket)
        self.transfers[handoff.transfer_id] = transfer
        self._ids[transfer] = handoff.transfer_id
        transfer.start()

    def transfer_ended(self, transfer: Transfer, summary: TransferSummary) -> None:
        transfer_id = self._ids.pop(transfer, None)
        if transfer_id is None:
            return
        del self.transfers[transfer_id]
        self._send(Ended(transfer_id, summary))

    def _send(self, message: Ready | Ended) -> None:
        """Queue a report and send what the socket takes; the rest goes when it is writable.

        A report must never be lost: the main process counts running transfers by them (a
        lost one would hold a place under ``tftp.max_transfers`` for ever).  When a boot storm
        ends hundreds of transfers at once faster than the main process reads, the socket
        fills; the outbox keeps the order and waits."""
        if self._closing:
            return  # the main process closed its end: nobody is listening
        self._outbox.append(encode_message(message))
        self._flush()

    def _flush(self) -> None:
        outbox = self._outbox
        while outbox:
            try:
                self.control.send(outbox[0])
            except BlockingIOError:
                if not self._writing:
                    self._writing = True
                    self.reactor.addWriter(self)
                return
            except OSError as error:
                log.error("cannot report to the main process: {error}", error=str(error))
                outbox.clear()
                break
            outbox.popleft()
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def doWrite(self) -> None:
        self._flush()

    def _shut_down(self) -> None:
        """The main process is stopping (or gone): end every transfer with ERROR 0, report each
        end with what it really sent (issue 18: not "0 of N bytes"), and exit."""
        if self.control.fileno() < 0:
            return
        self.reactor.removeReader(self)
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)
        for transfer in list(self.transfers.values()):
            transfer.abort("server shutting down")
        self._closing = True
        # The reports are queued; give them to a socket that may block for a moment.
        with contextlib.suppress(OSError):
            self.control.settimeout(STOP_FLUSH)
            while self._outbox:
                self.control.send(self._outbox.popleft())
        self.control.close()
        if self._mux is not None:
            self._mux.close()
        core = IReactorCore(self.reactor)
        if core.running:
            core.stop()


STOP_FLUSH: Final = 1.0
"""Seconds the last reports may wait for room on the control socket while stopping."""


def _failed(detail: str) -> TransferSummary:
    return TransferSummary(Outcome.ERROR, detail, 0, 0, 0.0, 0, 0, 0)


@implementer(ILogObserver)
class LineObserver:
    """Writes ``LEVEL text`` lines for the main process to relay (info and above)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if level is None or level.name == "debug":
            return
        text = formatEvent(event).replace("\n", " | ")
        failure = event.get("log_failure")
        if failure is not None:
            text += " | " + failure.getTraceback().replace("\n", " | ")
        try:
            self.stream.write(f"{level.name} {os.getpid()} {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


def run_worker(control_fd: int) -> None:
    """Be a worker on ``control_fd`` until the main process closes it."""
    from pxetwist.reactor import install

    install()
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([LineObserver(sys.stderr)], redirectStandardIO=False)
    host = WorkerHost(cast(ITransferReactor, reactor), socket.socket(fileno=control_fd))
    reactor.callWhenRunning(host.start)
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]


def run_spawner(control_fd: int, run_as: RunAs | None) -> None:
    """Fork a worker for each ``spawn`` request on ``control_fd``, as ``run_as``; exit at EOF.

    Single-threaded and without a reactor, so forking is safe; everything a worker runs is
    imported first, while the interpreter's files are readable (we may be root still)."""
    import twisted.internet.main  # noqa: F401

    import pxetwist.reactor  # noqa: F401 - loaded now, installed in the worker

    if run_as is not None:
        become(run_as)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, 64, 1)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data:
            return  # the main process closed its end (or is gone): the workers carry on
        if data != SPAWN_REQUEST or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 0
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                run_worker(fds[0])
            except BaseException:
                status = 1
                with contextlib.suppress(Exception):
                    import traceback

                    sys.stderr.write(
                        f"error {os.getpid()} " + traceback.format_exc().replace("\n", " | ") + "\n"
                    )
                    sys.stderr.flush()
            finally:
                os._exit(status)
        os.close(fds[0])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--spawner", action="store_true", help="fork workers on request")
    parser.add_argument("--uid", type=int, help="the user workers run as (spawner only)")
    parser.add_argument("--gid", type=int, help="the group workers run as (spawner only)")
    args = parser.parse_args(argv)
    # The main process stops us by closing the control socket; a Ctrl-C meant for it must not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.spawner:
        run_as = (
            RunAs(args.uid, args.gid) if args.uid is not None and args.gid is not None else None
        )
        run_spawner(args.control_fd, run_as)
    else:
        run_worker(args.control_fd)


if __name__ == "__main__":
    main()

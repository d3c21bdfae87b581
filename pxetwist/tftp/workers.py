# -*- test-case-name: tests.tftp.test_workers -*-
"""Transfer worker processes, seen from the main process: spawn, hand off, hear back, respawn.

Why processes: a TFTP transfer is a stream of small datagrams, and the kernel's per-datagram
work (``sendto``, ``recvfrom``) plus a few microseconds of Python per block is all a transfer
costs.  One process can only do that on one CPU, while a rack booting at once has enough
transfers to keep every CPU busy (tftpd-hpa forks per transfer, atftpd runs a thread each).  So
the main process keeps every decision (confinement, the policy, generated configs, the limit on
concurrent transfers, the log) and hands the *running* of each transfer to one of
``tftp.workers`` processes (:mod:`pxetwist.tftp.worker`), passing the transfer's bound UDP socket
and its open file as descriptors (:mod:`pxetwist.tftp.handoff`).  The main reactor then never
sees a data block, so DHCP and HTTP stay responsive however many transfers run.

Which worker runs which transfer is written in the transfer's slot of the server's
:class:`~pxetwist.tftp.table.TransferTable`; a worker's reports end slots there, and nothing
here counts transfers.

Failure handling: a worker that dies takes its transfers with it (each ends as an error;
the clients time out and retry, and their retries are served by the others); it is respawned
after a delay that grows while it keeps dying.  When no worker is ready (at start-up, or all
dead), transfers run in the main process as they do with ``tftp.workers: 0``.  Stopping shuts
the sending side of each control socket: a worker then ends its transfers (ERROR 0 to each
client), reports each end with what it really sent, and exits.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any, Final

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.tftp.handoff import (
    MAX_MESSAGE,
    Cancel,
    Ended,
    MalformedMessage,
    Ready,
    decode_message,
    encode_message,
)
from pxetwist.tftp.session import TransferSummary
from pxetwist.tftp.table import TransferSlot, TransferTable

log = Logger()

RESPAWN_FIRST: Final = 0.5
"""Seconds before a dead worker is started again; doubles while it keeps dying."""
RESPAWN_MOST: Final = 30.0
STOP_GRACE: Final = 3.0
"""Seconds a worker gets to end its transfers and exit before it is killed."""

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def default_worker_count() -> int:
    """``tftp.workers: auto``: one per CPU this process may run on, none on a single CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(cpus, 16)


@implementer(IReadDescriptor)
class WorkerProcess(ProcessProtocol):
    """One worker: its process, our end of its control socket, and the transfers it runs."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.ready = False
        self.alive = False
        self.control: socket.socket | None = None
        self.ended: Deferred[None] = Deferred()
        self._stderr = b""

    # Spawning.

    def spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            parent.setblocking(False)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p
            )
            self.pool.reactor.spawnProcess(
                self,
                sys.executable,
                [sys.executable, "-m", "pxetwist.tftp.worker", "--control-fd", "3"],
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", 3: child.fileno()},
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.control = parent
        self.alive = True
        self.pool.reactor.addReader(self)

    def connectionMade(self) -> None:
        self.pid = self.transport.pid if self.transport is not None else None
        if self.transport is not None:
            self.transport.closeStdin()

    # The control socket, as a reactor reader.

    def fileno(self) -> int:
        return self.control.fileno() if self.control is not None else -1

    def logPrefix(self) -> str:
        return "tftp-worker"

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._close_control()

    def doRead(self) -> None:
        control = self.control
        if control is None:
            return
        for _ in range(64):
            try:
                data = control.recv(MAX_MESSAGE + 1)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the worker closed its end: it is exiting
                self._close_control()
                return
            try:
                message = decode_message(data)
            except MalformedMessage as error:
                log.error("tftp: worker {pid} sent junk: {error}", pid=self.pid, error=str(error))
                continue
            if isinstance(message, Ready):
                self.ready = True
                log.info("tftp: transfer worker {pid} ready", pid=message.pid)
            elif isinstance(message, Ended):
                self.pool.ended(message.transfer_id, message.summary)

    def _drain(self) -> None:
        """Read every report still queued on the control socket (a worker that exited after
        reporting its last transfers must not have them counted as lost)."""
        for _ in range(100_000):
            if self.control is None:
                return
            try:
                if not self.control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    return
            except OSError:
                return
            self.doRead()

    def _close_control(self) -> None:
        control, self.control = self.control, None
        self.ready = False
        if control is not None:
            self.pool.reactor.removeReader(self)
            control.close()

    def shut_down(self) -> None:
        """Tell the worker to stop (end of our side of the stream) and keep reading its reports
        until it closes its side."""
        control = self.control
        if control is not None:
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_WR)

    # Work.

    def send(self, data: bytes, fds: tuple[int, ...] = ()) -> bool:
        """Send one message (and descriptors); False when it cannot go (full, or worker gone)."""
        control = self.control
        if control is None:
            return False
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            control.sendmsg([data], ancillary)
        except OSError:
            return False
        return True

    # The process.

    def outReceived(self, data: bytes) -> None:
        self.errReceived(data)

    def errReceived(self, data: bytes) -> None:
        lines = (self._stderr + data).split(b"\n")
        self._stderr = lines.pop()
        if len(self._stderr) > 8192:
            lines.append(self._stderr)
            self._stderr = b""
        for line in lines:
            if line.strip():
                _relay(self.pid, line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.alive = False
        self._drain()
        self._close_control()
        self.pool.lost(self, f"transfer worker {self.pid} exited")
        ended, self.ended = self.ended, Deferred()
        ended.callback(None)
        self.pool.worker_ended(self, reason)


def _cancel_call(result: None, call: Any) -> None:
    if call.active():
        call.cancel()


_LEVELS: Final = {level.name: level for level in LogLevel.iterconstants()}


def _relay(pid: int | None, line: str) -> None:
    """Log a line a worker wrote (``LEVEL text``, see :mod:`pxetwist.tftp.worker`)."""
    name, _, text = line.partition(" ")
    level = _LEVELS.get(name)
    if level is None:
        level, text = LogLevel.warn, line
    log.emit(level, "tftp worker {pid}: {text}", pid=pid, text=text)


class WorkerPool:
    """``count`` worker processes taking transfers, least busy first."""

    def __init__(self, reactor: Any, count: int, table: TransferTable) -> None:
        self.reactor = reactor
        self.count = count
        self.table = table
        self.workers: list[WorkerProcess] = []
        self.stopping = False
        self._delays: dict[int, float] = {}

    def start(self) -> None:
        self.stopping = False
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        worker = WorkerProcess(self, index)
        try:
            worker.spawn()
        except OSError as error:
            log.error("tftp: cannot start a transfer worker: {error}", error=str(error))
            self._respawn_later(index)
            return
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)

    def _respawn_later(self, index: int) -> None:
        delay = self._delays.get(index, RESPAWN_FIRST)
        self._delays[index] = min(delay * 2, RESPAWN_MOST)
        self.reactor.callLater(delay, self._spawn, index)

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        if self.stopping:
            return
        log.error(
            "tftp: transfer worker {pid} exited ({reason}); starting another",
            pid=worker.pid,
            reason=reason.getErrorMessage(),
        )
        self._respawn_later(worker.index)

    @property
    def ready(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.ready and w.alive]

    def hand_off(
        self, message: bytes, sock: socket.socket, file_fd: int, slot: TransferSlot
    ) -> WorkerProcess | None:
        """Give ``slot``'s transfer to the least busy ready worker; that worker, or None.

        ``message`` is the encoded hand-off.  On success the worker holds its own copies of
        ``sock`` and ``file_fd`` (the caller closes its own) and the slot names the worker."""
        if self.stopping:
            return None
        table = self.table
        for worker in sorted(self.ready, key=table.running_on):
            if worker.send(message, (sock.fileno(), file_fd)):
                slot.worker = worker
                slot.cancel = lambda reason, w=worker: self._cancel(w, slot.id, reason)
                return worker
        return None

    def ended(self, transfer_id: int, summary: TransferSummary) -> None:
        try:
            self.table.ended_remotely(transfer_id, summary)
        except Exception:
            log.failure("tftp: error reporting the end of a transfer")

    def lost(self, worker: WorkerProcess, detail: str) -> None:
        try:
            self.table.lost(worker, detail)
        except Exception:
            log.failure("tftp: error reporting the transfers of a lost worker")

    def _cancel(self, worker: WorkerProcess, transfer_id: int, reason: str) -> None:
        worker.send(encode_message(Cancel(transfer_id, reason)))

    def stop(self) -> Deferred[Any]:
        """Shut the sending side of every control socket (a worker then ends its transfers,
        reports them, and exits); kill those still there after :data:`STOP_GRACE` seconds.
        Transfers a worker did not report by the time it is gone end as errors."""
        self.stopping = True
        waits = []
        for worker in self.workers:
            if not worker.alive:
                continue
            worker.shut_down()
            waits.append(worker.ended)
            pid = worker.pid

            def kill(pid: int | None = pid, worker: WorkerProcess = worker) -> None:
                if worker.alive and worker.transport is not None:
                    log.warn("tftp: transfer worker {pid} did not exit; killing it", pid=pid)
                    with contextlib.suppress(Exception):
                        worker.transport.signalProcess("KILL")

            call = self.reactor.callLater(STOP_GRACE, kill)
            worker.ended.addCallback(_cancel_call, call)
        self.workers = []
        return DeferredList(waits)


__all__ = ["WorkerPool", "WorkerProcess", "default_worker_count"]

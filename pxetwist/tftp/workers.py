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

Starting: workers are not started by this process but forked by a *spawner*
(``python -m pxetwist.tftp.worker --spawner``) that this process starts once, in
``privilegedStartService``, while it is still root.  The spawner loads everything a worker
needs, switches to the user ``twistd --uid/--gid`` will switch to (:mod:`pxetwist.privileges`),
and then forks a worker for each control socket this process sends it.  So a worker started
later, after the switch, never has to read the interpreter or the code again as that user,
who may not be allowed to (issue 18: a virtualenv under ``/root``).  A worker is seen through
its control socket alone: it is gone when that socket closes.

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
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Final

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorProcess, IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.context import ITransferReactor
from pxetwist.privileges import RunAs
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
"""Seconds before a dead worker (or spawner) is started again; doubles while it keeps dying."""
RESPAWN_MOST: Final = 30.0
STOP_GRACE: Final = 3.0
"""Seconds a worker gets to end its transfers and exit before it is killed."""
SPAWN_REQUEST: Final = b"spawn"
"""What the spawner is sent, with the new worker's end of its control socket."""

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def default_worker_count() -> int:
    """``tftp.workers: auto``: one per CPU this process may run on, none on a single CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(cpus, 16)


class Spawner(ProcessProtocol):
    """The helper process that forks transfer workers (see the module docstring).

    Its stderr is also every worker's stderr: ``LEVEL PID text`` lines, relayed to our log.
    """

    def __init__(self, pool: WorkerPool, run_as: RunAs | None) -> None:
        self.pool = pool
        self.run_as = run_as
        self.alive = False
        self.pid: int | None = None
        self.control: socket.socket | None = None
        self._stderr = b""

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "pxetwist.tftp.worker", "--spawner", "--control-fd", "3"]
        if self.run_as is not None:
            argv += self.run_as.arguments()
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p
            )
            IReactorProcess(self.pool.reactor).spawnProcess(
                self,
                sys.executable,
                argv,
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

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.pid = self.transport.pid
            self.transport.closeStdin()

    def fork_worker(self, worker_end: socket.socket) -> None:
        """Ask for a worker on ``worker_end`` (a control socket); OSError if it cannot go."""
        control = self.control
        if control is None or not self.alive:
            raise OSError("the transfer worker spawner is not running")
        fds = array.array("i", [worker_end.fileno()])
        control.sendmsg([SPAWN_REQUEST], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])

    def stop(self) -> None:
        """Close its control socket: the spawner exits (its workers do not)."""
        control, self.control = self.control, None
        if control is not None:
            control.close()

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
        self.stop()
        self.pool.spawner_ended(self, reason)


@implementer(IReadDescriptor)
class WorkerProcess:
    """One worker, as seen through our end of its control socket (its only tie to us)."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.ready = False
        self.alive = False
        self.control: socket.socket | None = None
        self.ended: Deferred[None] = Deferred()

    def spawn(self, spawner: Spawner) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            parent.setblocking(False)
            spawner.fork_worker(child)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.control = parent
        self.alive = True
        self.pool.reactor.addReader(self)

    # The control socket, as a reactor reader.

    def fileno(self) -> int:
        return self.control.fileno() if self.control is not None else -1

    def logPrefix(self) -> str:
        return "tftp-worker"

    def connectionLost(self, reason: Failure) -> None:
        self._gone()

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
            if not data:  # the worker closed its end: it exited (or died)
                self._gone()
                return
            try:
                message = decode_message(data)
            except MalformedMessage as error:
                log.error("tftp: worker {pid} sent junk: {error}", pid=self.pid, error=str(error))
                continue
            if isinstance(message, Ready):
                self.pid = message.pid
                self.ready = True
                log.info("tftp: transfer worker {pid} ready", pid=message.pid)
            elif isinstance(message, Ended):
                self.pool.ended(message.transfer_id, message.summary)

    def _gone(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.ready = False
        control, self.control = self.control, None
        if control is not None:
            self.pool.reactor.removeReader(self)
            control.close()
        self.pool.lost(self, f"transfer worker {self.pid} exited")
        ended, self.ended = self.ended, Deferred()
        ended.callback(None)
        self.pool.worker_ended(self)

    def shut_down(self) -> None:
        """Tell the worker to stop (end of our side of the stream) and keep reading its reports
        until it closes its side."""
        control = self.control
        if control is not None:
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_WR)

    def kill(self) -> None:
        """SIGKILL it, by the PID it reported (it is the spawner's child, not ours)."""
        if self.alive and self.pid is not None:
            log.warn("tftp: transfer worker {pid} did not exit; killing it", pid=self.pid)
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

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


def _cancel_call(result: None, call: Any) -> None:
    if call.active():
        call.cancel()


_LEVELS: Final = {level.name: level for level in LogLevel.iterconstants()}


def _relay(pid: int | None, line: str) -> None:
    """Log a line a worker or the spawner wrote (``LEVEL PID text``, see
    :mod:`pxetwist.tftp.worker`); anything else is relayed as a warning."""
    name, _, rest = line.partition(" ")
    level = _LEVELS.get(name)
    writer, _, text = rest.partition(" ")
    if level is None or not writer.isdigit():
        level, text = LogLevel.warn, line
    else:
        pid = int(writer)
    log.emit(level, "tftp worker {pid}: {text}", pid=pid, text=text)


class WorkerPool:
    """``count`` worker processes taking transfers, least busy first."""

    def __init__(
        self,
        reactor: ITransferReactor,
        count: int,
        table: TransferTable,
        run_as: RunAs | None = None,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.table = table
        self.run_as = run_as
        self.workers: list[WorkerProcess] = []
        self.spawner: Spawner | None = None
        self.stopping = False
        self._delays: dict[int, float] = {}

    def start(self) -> None:
        """Start the spawner (call this before a privilege switch) and the workers."""
        self.stopping = False
        if self._start_spawner():
            for index in range(self.count):
                self._spawn(index)

    def _start_spawner(self) -> bool:
        if self.spawner is not None and self.spawner.alive:
            return True
        spawner = Spawner(self, self.run_as)
        try:
            spawner.start()
        except OSError as error:
            log.error("tftp: cannot start the transfer worker spawner: {error}", error=str(error))
            self._respawn_later(-1)
            return False
        self.spawner = spawner
        return True

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        if index < 0:  # the spawner, then every worker it lacks
            if self._start_spawner():
                for missing in range(self.count):
                    if missing >= len(self.workers) or not self.workers[missing].alive:
                        self._spawn(missing)
            return
        worker = WorkerProcess(self, index)
        try:
            assert self.spawner is not None
            worker.spawn(self.spawner)
        except (OSError, AssertionError) as error:
            log.error("tftp: cannot start a transfer worker: {error}", error=str(error))
            if self.spawner is not None and self.spawner.alive:
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

    def spawner_ended(self, spawner: Spawner, reason: Failure) -> None:
        """The spawner exited: the workers run on; it is started again (and, if it cannot
        be, transfers run in this process once no worker is left)."""
        if self.stopping or spawner is not self.spawner:
            return
        log.error(
            "tftp: transfer worker spawner {pid} exited ({reason}); starting another",
            pid=spawner.pid,
            reason=reason.getErrorMessage(),
        )
        self._respawn_later(-1)

    def worker_ended(self, worker: WorkerProcess) -> None:
        if self.stopping:
            return
        log.error(
            "tftp: transfer worker {pid} exited (its control socket closed); starting another",
            pid=worker.pid,
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
        if self.spawner is not None:
            self.spawner.stop()
        waits = []
        for worker in self.workers:
            if not worker.alive:
                continue
            worker.shut_down()
            waits.append(worker.ended)
            call = self.reactor.callLater(STOP_GRACE, worker.kill)
            worker.ended.addCallback(_cancel_call, call)
        self.workers = []
        return DeferredList(waits)


__all__ = ["Spawner", "WorkerPool", "WorkerProcess", "default_worker_count"]

"""The reactor ``twistd pxe`` runs on (pxetwist.reactor): epoll, one dispatch per event."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from pathlib import Path

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.reactor import BootReactor

ROOT = Path(__file__).resolve().parents[1]


class Reader(FileDescriptor):
    """A readable end of a socket pair that records what each event did."""

    def __init__(self, reactor: BootReactor, sock: socket.socket, log: list[str]) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.log = log
        self.on_read = lambda: None

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.log.append(f"read {self.sock.recv(64)!r}")
        self.on_read()

    def connectionLost(self, reason: Failure) -> None:
        self.log.append(f"lost {type(reason.value).__name__}")


class ClosingReader(Reader):
    """Reads, then reports the connection done, as a ``doRead`` that saw end-of-file does."""

    def doRead(self) -> ConnectionDone:  # type: ignore[override]
        super().doRead()
        return ConnectionDone("peer closed")


class BootReactorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = BootReactor()
        self.addCleanup(self.reactor._poller.close)
        self.log: list[str] = []
        self.readers: list[Reader] = []
        self.peers: list[socket.socket] = []
        for _ in range(2):
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            self.addCleanup(ours.close)
            self.addCleanup(theirs.close)
            reader = Reader(self.reactor, ours, self.log)
            self.reactor.addReader(reader)
            self.readers.append(reader)
            self.peers.append(theirs)

    def test_each_ready_descriptor_is_read(self) -> None:
        self.peers[0].send(b"one")
        self.peers[1].send(b"two")
        self.reactor.doIteration(1.0)
        self.assertEqual(sorted(self.log), ["read b'one'", "read b'two'"])

    def test_nothing_ready_returns_after_the_timeout(self) -> None:
        self.reactor.doIteration(0.01)
        self.assertEqual(self.log, [])

    def test_an_error_in_doRead_is_logged_and_disconnects_only_that_descriptor(self) -> None:
        """As in Twisted's epoll reactor: the descriptor that raised is dropped, with a logged
        traceback; the others, and the loop, go on."""

        def fail() -> None:
            raise ZeroDivisionError("a bug in a protocol")

        self.readers[0].on_read = fail
        self.peers[0].send(b"bad")
        self.reactor.doIteration(1.0)
        self.assertEqual(self.log, ["read b'bad'", "lost ZeroDivisionError"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertNotIn(self.readers[0], self.reactor.getReaders())
        self.peers[1].send(b"good")
        self.reactor.doIteration(1.0)
        self.assertEqual(self.log[-1], "read b'good'")

    def test_a_descriptor_removed_by_an_earlier_event_of_the_same_poll_is_skipped(self) -> None:
        first, second = self.readers

        def remove_the_other() -> None:
            other = second if self.log[-1] == "read b'one'" else first
            self.reactor.removeReader(other)

        first.on_read = second.on_read = remove_the_other
        self.peers[0].send(b"one")
        self.peers[1].send(b"two")
        self.reactor.doIteration(1.0)
        self.assertEqual(len(self.log), 1, self.log)

    def test_a_reason_returned_by_doRead_disconnects(self) -> None:
        """A ``doRead`` that returns a reason (Twisted's way to say "closed") is disconnected
        with it, as ``_doReadOrWrite`` does."""
        reader = ClosingReader(self.reactor, self.readers[0].sock, self.log)
        self.reactor.removeReader(self.readers[0])
        self.reactor.addReader(reader)
        self.peers[0].send(b"x")
        self.reactor.doIteration(1.0)
        self.assertEqual(self.log, ["read b'x'", "lost ConnectionDone"])
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_a_descriptor_that_lost_its_file_is_disconnected_unread(self) -> None:
        reader = self.readers[0]
        real = reader.sock.fileno()
        reader.fileno = lambda: -1  # type: ignore[method-assign]
        self.reactor._selectables[real] = reader  # still registered under its old number
        self.peers[0].send(b"x")
        self.reactor.doIteration(1.0)
        self.assertEqual(self.log, ["lost ConnectionFdescWentAway"])

    def test_a_hang_up_with_nothing_to_read_is_a_clean_close(self) -> None:
        """EPOLLHUP without EPOLLIN is left to Twisted's handling: the connection is done."""
        reader = self.readers[0]
        fd = reader.fileno()
        self.reactor._poller = ReadyPoller(self.reactor._poller, [(fd, select.EPOLLHUP)])
        self.reactor.doIteration(0)
        self.assertEqual(self.log, ["lost ConnectionDone"])


class Writer(Reader):
    """The writing end: each event records a write, as the sendfile path does."""

    def doWrite(self) -> None:
        self.log.append("write")
        self.on_write()

    def on_write(self) -> None:
        pass


class WritableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = BootReactor()
        self.addCleanup(self.reactor._poller.close)
        self.log: list[str] = []
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        self.peer = theirs
        self.writer = Writer(self.reactor, ours, self.log)
        self.reactor.addWriter(self.writer)

    def test_a_writable_descriptor_is_written(self) -> None:
        self.reactor.doIteration(1.0)
        self.assertEqual(self.log, ["write"])

    def test_an_error_in_doWrite_is_logged_and_disconnects(self) -> None:
        def fail() -> None:
            raise ZeroDivisionError("a bug in a producer")

        self.writer.on_write = fail  # type: ignore[method-assign]
        self.reactor.doIteration(1.0)
        self.assertEqual(self.log, ["write", "lost ZeroDivisionError"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertNotIn(self.writer, self.reactor.getWriters())

    def test_readable_and_writable_at_once_reads_then_writes(self) -> None:
        """Both flags in one event go through Twisted's own dispatch: read first, then write."""
        self.reactor.addReader(self.writer)
        self.peer.send(b"both")
        self.reactor.doIteration(1.0)
        self.assertEqual(self.log, ["read b'both'", "write"])


class ReadyPoller:
    """An epoll stand-in that reports the given events once (for flags a socket pair cannot
    produce on demand)."""

    def __init__(self, real: select.epoll, events: list[tuple[int, int]]) -> None:
        self.real = real
        self.events = events

    def unregister(self, fd: int) -> None:
        self.real.unregister(fd)

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        events, self.events = self.events, []
        return events


class InstallTests(SynchronousTestCase):
    """In a fresh interpreter, as ``twistd pxe`` runs: the reactor is not installed yet."""

    def run_python(self, code: str, *args: str) -> str:
        """Run ``code`` in a fresh interpreter; the last line it printed."""
        result = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.strip().splitlines()[-1]

    def test_installed_when_no_reactor_is(self) -> None:
        code = "from pxetwist.reactor import install_default; print(install_default())"
        self.assertEqual(self.run_python(code), "BootReactor")

    def test_a_reactor_chosen_already_is_kept(self) -> None:
        """``twistd -r poll pxe`` installs its reactor before the plugin runs."""
        code = (
            "from twisted.internet import pollreactor; pollreactor.install()\n"
            "from pxetwist.reactor import install_default; print(install_default())"
        )
        self.assertEqual(self.run_python(code), "PollReactor")

    def test_twistd_pxe_runs_on_it(self) -> None:
        """The real command: makeService installs it before the service imports the reactor."""
        code = (
            "import sys\n"
            "from pxetwist import tap\n"
            "options = tap.Options()\n"
            "options.parseOptions(['-c', sys.argv[1]])\n"
            "service = tap.makeService(options)\n"
            "print(type(service.context.reactor).__name__)\n"
        )
        config = Path(self.mktemp())
        config.mkdir()
        (config / "pxe.yaml").write_text(
            "interfaces: [lo]\ndhcp: {mode: off}\ntftp: {enabled: false}\n"
            f"http: {{enabled: false}}\ndata_dir: {config / 'state'}\n"
        )
        self.assertEqual(self.run_python(code, str(config / "pxe.yaml")), "BootReactor")

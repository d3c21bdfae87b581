"""Transfer worker processes: the hand-off codec, and real workers under ``twistd -n pxe``.

The lab tests run the server with ``tftp.workers: 2`` in a network namespace and check what an
operator relies on: transfers run in the workers (a stray datagram is answered with ERROR 5 by
the worker, RFC 1350 §4, protocol-reference §7.8 T6), every transfer is still logged by the
main process, a killed worker is replaced and its transfer logged as an error without taking
the server down, and stopping the server leaves no worker behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import ClassVar, cast
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.context import ITransferReactor
from pxetwist.lab.tftpserver import ServerLab, sha256
from pxetwist.tftp import workers as workers_module
from pxetwist.tftp.handoff import (
    MAX_MESSAGE,
    Cancel,
    Ended,
    Handoff,
    MalformedMessage,
    MessageTooLarge,
    Ready,
    decode_message,
    encode_message,
)
from pxetwist.tftp.packet import ReadRequest
from pxetwist.tftp.session import (
    Negotiation,
    Outcome,
    SessionLimits,
    TransferSummary,
    negotiate,
)
from pxetwist.tftp.worker import WorkerHost

from .test_clients import CLIENTS, LabTestCase, _require_tools

names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60
)
requests = st.builds(
    ReadRequest,
    filename=names,
    mode=st.sampled_from(["octet", "netascii"]),
    options=st.lists(
        st.tuples(st.sampled_from(["blksize", "tsize", "windowsize", "timeout"]), names),
        max_size=4,
    ).map(tuple),
)
limits = st.builds(
    SessionLimits,
    mtu=st.integers(68, 9000),
    max_blksize=st.integers(8, 65464),
    timeout=st.floats(0.01, 10),
    max_timeout=st.floats(0.01, 60),
    max_retries=st.integers(0, 20),
    max_window=st.integers(1, 65535),
    adaptive_window=st.booleans(),
)
peers = st.tuples(st.ip_addresses(v=4).map(str), st.integers(1, 65535))
summaries = st.builds(
    TransferSummary,
    outcome=st.sampled_from(list(Outcome)),
    detail=st.text(max_size=80),
    bytes=st.integers(0, 2**40),
    size=st.integers(0, 2**40),
    seconds=st.floats(0, 1e6),
    blksize=st.integers(0, 65464),
    windowsize=st.integers(0, 65535),
    retransmissions=st.integers(0, 10**6),
)
messages = st.one_of(
    st.builds(
        Handoff,
        transfer_id=st.integers(1, 2**53),
        peer=peers,
        negotiation=st.builds(negotiate, requests, limits),
        limits=limits,
        mtu=st.integers(68, 9000),
    ),
    st.builds(Cancel, transfer_id=st.integers(1, 2**53), reason=st.text(max_size=100)),
    st.builds(Ready, pid=st.integers(1, 2**22)),
    st.builds(Ended, transfer_id=st.integers(1, 2**53), summary=summaries),
)


class HandoffCodecTests(SynchronousTestCase):
    @given(messages)
    def test_round_trip(self, message: Handoff | Cancel | Ready | Ended) -> None:
        self.assertEqual(decode_message(encode_message(message)), message)

    def test_a_handoff_is_small_whatever_the_request(self) -> None:
        """Issue 18 defect 1: RRQs of 6 KB and more (550 ``blksize`` pairs; ``./`` x 3000 before
        the name) once made hand-offs too large for the worker.  A hand-off carries the
        negotiated options only, so it stays small for any request a datagram can hold."""
        for request in (
            ReadRequest("big.bin", "octet", (("blksize", "512"),) * 550),
            ReadRequest("./" * 3000 + "big.bin", "octet"),
            ReadRequest("x" * 65000, "netascii", (("tsize", "0"), ("windowsize", "9" * 9000))),
        ):
            message = Handoff(
                1, ("10.0.0.1", 2000), negotiate(request, SessionLimits()), SessionLimits(), 1500
            )
            self.assertLess(len(encode_message(message)), 1024)

    def test_an_oversized_message_is_refused_by_the_sender(self) -> None:
        with self.assertRaises(MessageTooLarge):
            encode_message(Cancel(1, "x" * MAX_MESSAGE))

    @given(st.binary(max_size=200))
    def test_junk_is_malformed_not_a_crash(self, junk: bytes) -> None:
        try:
            message = decode_message(junk)
        except MalformedMessage:
            return
        self.assertIsInstance(message, Handoff | Cancel | Ready | Ended)

    def test_a_message_cut_short_still_ends_its_transfer(self) -> None:
        """A hand-off the worker cannot read in full (or at all) is reported as ended, with
        its id from the fixed header, so the main process releases the slot (issue 18)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        host = WorkerHost(cast(ITransferReactor, MemoryReactor()), ours)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        good = encode_message(Handoff(7, ("127.0.0.1", 9), Negotiation(), SessionLimits(), 1500))
        for ident, data in (
            (7, good + b"x" * MAX_MESSAGE),
            (8, good[:12].replace(b"\x07", b"\x08")),
        ):
            socket.send_fds(theirs, [data], [sock.fileno(), sock.fileno()])
            host.doRead()
            ended = decode_message(theirs.recv(MAX_MESSAGE))
            assert isinstance(ended, Ended)
            self.assertEqual((ended.transfer_id, ended.summary.outcome), (ident, Outcome.ERROR))
        self.assertEqual(host.transfers, {})


class WorkerReportTests(SynchronousTestCase):
    """A worker never drops a transfer's report: the main process counts transfers by them."""

    def test_reports_wait_for_a_full_control_socket(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        reactor = MemoryReactor()
        host = WorkerHost(cast(ITransferReactor, reactor), ours)
        summary = TransferSummary(Outcome.COMPLETED, "", 1, 1, 0.1, 512, 1, 0)
        sent = 0
        while host not in reactor.getWriters():
            sent += 1
            host._send(Ended(sent, summary))
            self.assertLess(sent, 100_000, "the socket never filled")
        for _ in range(5):  # more while it is full: queued, in order
            sent += 1
            host._send(Ended(sent, summary))
        received: list[object] = []
        theirs.setblocking(False)
        while len(received) < sent:
            try:
                while True:
                    received.append(decode_message(theirs.recv(8192)))
            except BlockingIOError:
                host.doWrite()
        self.assertEqual(
            [m.transfer_id for m in received if isinstance(m, Ended)], list(range(1, sent + 1))
        )
        self.assertNotIn(host, reactor.getWriters())


class WorkerCountTests(SynchronousTestCase):
    def test_auto_is_one_per_cpu(self) -> None:
        with mock.patch.object(os, "sched_getaffinity", return_value={0, 1, 2, 3}):
            self.assertEqual(workers_module.default_worker_count(), 4)

    def test_auto_is_none_on_a_single_cpu(self) -> None:
        with mock.patch.object(os, "sched_getaffinity", return_value={0}):
            self.assertEqual(workers_module.default_worker_count(), 0)


# A client that stops after DATA 1, so a transfer is held by a worker while the test acts; then,
# depending on the mode, checks a stray datagram is refused and finishes the download.
RAW_CLIENT = r"""
import hashlib, socket, struct, sys
ip, name, mode = sys.argv[1], sys.argv[2], sys.argv[3]
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(10)
client.sendto(b"\0\1" + name.encode() + b"\0octet\0", (ip, 69))
datagram, server = client.recvfrom(4096)
assert datagram[:4] == b"\0\3\0\1", datagram[:4]
print("DATA1", server[1], flush=True)
if mode == "hold":
    sys.stdin.readline()  # the test kills the worker or stops the server, then lets go
    client.settimeout(3)
    try:
        while True:  # DATA 1 again (the server's timer) until something else comes
            datagram, sender = client.recvfrom(4096)
            if datagram[:2] == b"\0\5":
                print("AFTER", datagram[:4].hex(), datagram[4:-1].decode(), flush=True)
                break
    except TimeoutError:
        print("AFTER timeout", flush=True)
    sys.exit(0)
if mode == "restart":  # the same client port asks again, for another file
    client.sendto(b"\0\1" + sys.argv[4].encode() + b"\0octet\0", (ip, 69))
    client.settimeout(1)
    try:
        while True:
            datagram, sender = client.recvfrom(4096)
            if datagram[:2] == b"\0\5":
                print("ERROR", sender[1] == server[1], datagram[4:-1].decode(), flush=True)
            elif datagram[:4] == b"\0\3\0\1" and sender != server:
                print("NEWDATA1", flush=True)
    except TimeoutError:
        pass
    sys.exit(0)
stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
stray.settimeout(10)
stray.sendto(b"\0\4\0\1", server)
error, sender = stray.recvfrom(4096)
print("STRAY", error[:4].hex(), sender == server, flush=True)
content, block = datagram[4:], 1
while len(datagram) - 4 == 512:
    client.sendto(struct.pack("!HH", 4, block & 0xFFFF), server)
    datagram, sender = client.recvfrom(4096)
    if sender != server or datagram[:2] != b"\0\3":
        continue
    if struct.unpack("!H", datagram[2:4])[0] != (block + 1) & 0xFFFF:
        continue
    block += 1
    content += datagram[4:]
client.sendto(struct.pack("!HH", 4, block & 0xFFFF), server)
print("SHA256", hashlib.sha256(content).hexdigest(), flush=True)
"""


def raw_client(server: ServerLab, name: str, mode: str, *more: str) -> subprocess.Popen[str]:
    return server.lab.spawn(
        "cli",
        [sys.executable, "-c", RAW_CLIENT, server.ip, name, mode, *more],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class WorkerLabTests(LabTestCase):
    files: ClassVar[dict[str, int]] = {"small.bin": 300_000, "medium.bin": 3_000_000}
    tftp_options: ClassVar[str] = ", timeout: 0.2, workers: 2"

    def raw(self, name: str, mode: str, *more: str) -> subprocess.Popen[str]:
        return raw_client(self.server, name, mode, *more)

    def test_a_restarted_request_ends_the_old_transfer(self) -> None:
        """The same client port asks again (a ROM that reset): the old transfer ends with
        ERROR 0 from its own port, the new one starts from a new port."""
        proc = self.raw("medium.bin", "restart", "small.bin")
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("ERROR True superseded by a new request", out)
        self.assertIn("NEWDATA1", out)
        self.assertRegex(self.server.log_text(), r"tftp error: medium.bin .*superseded")

    def test_workers_run_transfers_and_answer_strays(self) -> None:
        self.assertEqual(len(self.server.workers), 2)
        proc = self.raw("small.bin", "stray")
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.server.lab.stop(proc)
            self.fail(f"raw client stuck\n{self.server.log_tail()}")
        self.assertEqual(proc.returncode, 0, err)
        lines = dict(line.split(" ", 1) for line in out.splitlines())
        self.assertEqual(lines["STRAY"], "00050005 True")  # ERROR 5 from the transfer's port
        self.assertEqual(lines["SHA256"], sha256(self.server.root / "small.bin"))
        log = self.server.log_text()
        # The worker that ran the transfer answered the stray and said so through the main log.
        self.assertRegex(log, r"tftp worker \d+: tftp: stray datagram from")
        self.assertRegex(
            log, r"tftp completed: small.bin to [\d.]+:\d+ \(mac [^)]+\): 300000 of 300000 bytes"
        )

    def test_concurrent_downloads_spread_over_workers(self) -> None:
        procs = [
            self.server.lab.spawn(
                "cli",
                CLIENTS["curl-1468"](self.server.ip, "medium.bin", self.server.fresh(f"m{i}")),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(8)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            self.assertEqual(proc.returncode, 0, err)
        want = sha256(self.server.root / "medium.bin")
        for i in range(8):
            self.assertEqual(sha256(self.server.out / f"m{i}"), want)
        self.assertEqual(self.server.log_text().count("tftp completed: medium.bin"), 8)

    def test_a_killed_worker_is_replaced_and_its_transfer_logged(self) -> None:
        before = self.server.wait_for_workers()
        proc = self.raw("medium.bin", "hold")
        assert proc.stdout is not None and proc.stdin is not None
        self.assertTrue(proc.stdout.readline().startswith("DATA1"))
        for pid in before[-2:]:
            os.kill(pid, signal.SIGKILL)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.communicate(timeout=30)
        after = self.server.wait_for_workers(at_least=len(before) + 2)
        log = self.server.log_text()
        self.assertRegex(log, r"tftp error: medium.bin to .*transfer worker \d+ exited")
        self.assertRegex(log, r"tftp: transfer worker \d+ exited .*starting another")
        self.assertEqual(self.server.server.poll() if self.server.server else 1, None)
        self.assertFalse(set(after[-2:]) & set(before[-2:]))
        self.fetch("curl-1468", "small.bin")  # the new workers serve


class WorkerShutdownTests(SynchronousTestCase):
    def test_stopping_the_server_ends_transfers_and_stops_workers(self) -> None:
        _require_tools()
        lab = ServerLab({"small.bin": 1000}, tftp=", workers: 2").up()
        try:
            pids = lab.wait_for_workers()
            self.assertEqual(len(pids), 2)
            for pid in pids:
                os.kill(pid, 0)  # alive
            proc = raw_client(lab, "small.bin", "hold")
            assert proc.stdout is not None and proc.stdin is not None
            self.assertTrue(proc.stdout.readline().startswith("DATA1"))
            assert lab.server is not None
            lab.lab.stop(lab.server)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=30)
            # The worker running the transfer told the client before it exited.
            self.assertIn("AFTER 00050000 server shutting down", out, lab.log_tail())
            deadline = time.monotonic() + 10
            alive = set(pids)
            while alive and time.monotonic() < deadline:
                for pid in list(alive):
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        alive.discard(pid)
                time.sleep(0.05)
            self.assertEqual(alive, set(), lab.log_tail())
        finally:
            lab.down()

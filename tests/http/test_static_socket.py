"""Integration tests for :mod:`pxetwist.http.static` over a real TCP socket on 127.0.0.1.

These run the global reactor (trial's asynchronous TestCase) because the point is the real
transport: the ``os.sendfile`` path, the hand-over between Twisted's write buffer and the
socket, and clients (treq, curl) reading what the kernel actually sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, cast

import treq
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from pxetwist.http.sendfile import SENDFILE_MIN
from pxetwist.http.static import BootFiles

CURL = shutil.which("curl")
MiB = 1024 * 1024


class _TrackingSite(Site):
    """A Site that knows which of its connections are still open, so that a test can wait for
    them to close before the reactor is checked for leftovers."""

    def __init__(self, resource: Any) -> None:
        super().__init__(resource, reactor=reactor)
        self.open: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.open.add(protocol)
        lost = protocol.connectionLost

        def connectionLost(reason: Failure) -> None:
            self.open.discard(protocol)
            lost(reason)

        protocol.connectionLost = connectionLost
        return protocol


def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> defer.Deferred[None]:
    """Poll *predicate* on the reactor every 10 ms; fail after *timeout* seconds."""

    @defer.inlineCallbacks
    def poll() -> Generator[defer.Deferred[Any], Any, None]:
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting for {predicate}")
            yield deferLater(reactor, 0.01, lambda: None)

    return poll()


def _descriptors() -> dict[str, str]:
    """This process's open descriptors and what they point at."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used is gone
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return found


def _parts(body: bytes, content_type: bytes) -> list[tuple[bytes, bytes]]:
    """(Content-Range, data) for each part of a multipart/byteranges body."""
    boundary = content_type.split(b"boundary=", 1)[1]
    closing = b"\r\n--" + boundary + b"--\r\n"
    assert body.endswith(closing), body[-100:]
    parts = []
    for chunk in body[: -len(closing)].split(b"--" + boundary + b"\r\n")[1:]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        parts.append((fields[b"Content-Range"], data))
    return parts


def _listen(case: TestCase, site: _TrackingSite) -> str:
    """Serve *site* on 127.0.0.1 (only there), an ephemeral port; its base URL."""
    port = reactor.listenTCP(0, cast(Any, site), interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    # Cleanups run last-in first-out: this one, waiting for the server side of every
    # connection to close, runs before the port stops listening.
    case.addCleanup(lambda: _until(lambda: not site.open))
    return f"http://127.0.0.1:{cast(IPv4Address, port.getHost()).port}/"


class _ReadThenAbort(Protocol):
    """Sends a request, reads the first bytes of the answer, and resets the connection."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = 0
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > 256 * 1024:
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class _Collect(Protocol):
    """Sends raw bytes and collects everything until the server closes the connection."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data: list[bytes] = []
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(b"".join(self.data))


def _split_responses(stream: bytes) -> list[tuple[bytes, bytes]]:
    """(status line, body) for each response in a stream of Content-Length-framed responses."""
    responses = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(fields[b"Content-Length"])
        responses.append((lines[0], rest[:length]))
        stream = rest[length:]
    return responses


class SocketTests(TestCase):
    """A BootFiles resource behind ``listenTCP(0, interface="127.0.0.1")``."""

    timeout = 120

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pxetwist-http-socket-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.root = self.dir / "root"
        self.root.mkdir()
        self.big = os.urandom(8 * MiB + 12345)  # odd size: the last chunk is a partial one
        (self.root / "big.iso").write_bytes(self.big)
        self.mid = os.urandom(2 * MiB)
        (self.root / "mid.efi").write_bytes(self.mid)
        with (self.root / "huge.img").open("wb") as f:
            f.truncate(64 * MiB)  # sparse: more than any socket buffer, costs no disk
        self.sendfile_calls = 0
        real_sendfile = os.sendfile

        def counting_sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
            self.sendfile_calls += 1
            return real_sendfile(out_fd, in_fd, offset, count)

        self.patch(os, "sendfile", counting_sendfile)
        self.base = self.listen(BootFiles(self.root, reactor))

    def listen(self, resource: BootFiles) -> str:
        return _listen(self, _TrackingSite(resource))

    def client(self) -> Any:
        """A treq client whose connections are all closed (and waited for) after the test."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 200
        self.addCleanup(pool.closeCachedConnections)
        return treq.client.HTTPClient(Agent(reactor, pool=pool))

    @defer.inlineCallbacks
    def fetch_digest(
        self, http: Any, url: str, headers: dict[str, str] | None = None
    ) -> Generator[defer.Deferred[Any], Any, tuple[Any, bytes, int]]:
        """GET *url*, hashing the body as it streams in (100 bodies need not sit in memory)."""
        response = yield http.get(url, headers=headers or {})
        digest = hashlib.sha256()
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            digest.update(data)
            size += len(data)

        yield treq.collect(response, collect)
        return response, digest.digest(), size

    def curl(self, *args: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
        if CURL is None:
            raise SkipTest("curl is not installed")
        return getProcessOutputAndValue(  # type: ignore[no-any-return]
            CURL, ["--silent", "--show-error", "--noproxy", "*", *args], env=dict(os.environ)
        )

    @defer.inlineCallbacks
    def test_treq_download_over_sendfile(self) -> Generator[defer.Deferred[Any], Any, None]:
        response, digest, size = yield self.fetch_digest(self.client(), self.base + "big.iso")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, len(self.big))
        self.assertEqual((size, digest), (len(self.big), hashlib.sha256(self.big).digest()))
        self.assertGreater(self.sendfile_calls, 0)

    @defer.inlineCallbacks
    def test_curl_download(self) -> Generator[defer.Deferred[Any], Any, None]:
        out = self.dir / "out.iso"
        stdout, stderr, code = yield self.curl(
            "--output",
            str(out),
            "--write-out",
            "%{http_code} %{size_download}",
            self.base + "big.iso",
        )
        self.assertEqual((code, stderr), (0, b""))
        self.assertEqual(stdout, b"200 %d" % len(self.big))
        self.assertEqual(out.read_bytes(), self.big)
        self.assertGreater(self.sendfile_calls, 0)

    @defer.inlineCallbacks
    def test_curl_head(self) -> Generator[defer.Deferred[Any], Any, None]:
        """What UEFI HTTP Boot asks first (protocol-reference §3.1)."""
        stdout, _, code = yield self.curl("--head", self.base + "mid.efi")
        self.assertEqual(code, 0)
        lines = stdout.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        self.assertIn(b"Content-Length: %d" % len(self.mid), lines)
        self.assertIn(b"Content-Type: application/efi", lines)
        self.assertEqual(self.sendfile_calls, 0)

    @defer.inlineCallbacks
    def test_single_range_over_sendfile(self) -> Generator[defer.Deferred[Any], Any, None]:
        http = self.client()
        response = yield http.get(self.base + "big.iso", headers={"Range": "bytes=1000000-4999999"})
        body = yield treq.content(response)
        self.assertEqual(response.code, 206)
        self.assertEqual(
            response.headers.getRawHeaders(b"Content-Range"),
            [b"bytes 1000000-4999999/%d" % len(self.big)],
        )
        self.assertEqual(body, self.big[1000000:5000000])
        self.assertGreater(self.sendfile_calls, 0)

    @defer.inlineCallbacks
    def test_multiple_ranges_over_sendfile(self) -> Generator[defer.Deferred[Any], Any, None]:
        """Boundaries through os.write, file parts through sendfile, in order on the wire."""
        stdout, _, code = yield self.curl(
            "--include", "--range", "0-99999,4000000-4999999,-70000", self.base + "big.iso"
        )
        self.assertEqual(code, 0)
        head, _, body = stdout.partition(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        self.assertEqual(head.split(b"\r\n")[0], b"HTTP/1.1 206 Partial Content")
        self.assertEqual(int(fields[b"Content-Length"]), len(body))
        size = len(self.big)
        self.assertEqual(
            _parts(body, fields[b"Content-Type"]),
            [
                (b"bytes 0-99999/%d" % size, self.big[:100000]),
                (b"bytes 4000000-4999999/%d" % size, self.big[4000000:5000000]),
                (b"bytes %d-%d/%d" % (size - 70000, size - 1, size), self.big[-70000:]),
            ],
        )
        self.assertGreater(self.sendfile_calls, 0)

    @defer.inlineCallbacks
    def test_keep_alive_after_sendfile(self) -> Generator[defer.Deferred[Any], Any, None]:
        """After a sendfile body the connection serves the next request, buffered path included."""
        (self.root / "boot.ipxe").write_bytes(b"#!ipxe\nchain mid.efi\n")
        first, second = self.dir / "1", self.dir / "2"
        stdout, _, code = yield self.curl(
            *("--output", str(first), self.base + "big.iso"),
            *("--output", str(second), self.base + "boot.ipxe"),
            "--write-out",
            "%{num_connects} ",
        )
        self.assertEqual(code, 0)
        self.assertEqual(stdout, b"1 0 ")  # the second transfer reused the connection
        self.assertEqual(first.read_bytes(), self.big)
        self.assertEqual(second.read_bytes(), b"#!ipxe\nchain mid.efi\n")

    @defer.inlineCallbacks
    def test_pipelined_requests(self) -> Generator[defer.Deferred[Any], Any, None]:
        """Three requests in one packet: sendfile, multipart sendfile, buffered; in order."""
        (self.root / "boot.ipxe").write_bytes(b"#!ipxe\n")
        port = int(self.base.rsplit(":", 1)[1][:-1])
        client = _Collect(
            b"GET /big.iso HTTP/1.1\r\nHost: pxe\r\n\r\n"
            b"GET /mid.efi HTTP/1.1\r\nHost: pxe\r\nRange: bytes=0-99999,-100000\r\n\r\n"
            b"GET /boot.ipxe HTTP/1.1\r\nHost: pxe\r\nConnection: close\r\n\r\n"
        )
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        stream = yield client.closed
        (status1, body1), (status2, body2), (status3, body3) = _split_responses(stream)
        self.assertEqual((status1, body1), (b"HTTP/1.1 200 OK", self.big))
        self.assertEqual(status2, b"HTTP/1.1 206 Partial Content")
        self.assertIn(self.mid[:100000], body2)
        self.assertIn(self.mid[-100000:], body2)
        self.assertEqual((status3, body3), (b"HTTP/1.1 200 OK", b"#!ipxe\n"))
        self.assertGreater(self.sendfile_calls, 0)

    @defer.inlineCallbacks
    def test_read_fallback_is_identical(self) -> Generator[defer.Deferred[Any], Any, None]:
        base = self.listen(BootFiles(self.root, reactor, sendfile=False))
        response, digest, size = yield self.fetch_digest(self.client(), base + "big.iso")
        self.assertEqual(response.code, 200)
        self.assertEqual((size, digest), (len(self.big), hashlib.sha256(self.big).digest()))
        self.assertEqual(self.sendfile_calls, 0)

    @defer.inlineCallbacks
    def test_100_concurrent_downloads(self) -> Generator[defer.Deferred[Any], Any, None]:
        http = self.client()
        expected = hashlib.sha256(self.mid).digest()
        results = yield defer.gatherResults(
            [self.fetch_digest(http, self.base + "mid.efi") for _ in range(100)],
            consumeErrors=True,
        )
        self.assertEqual(len(results), 100)
        for response, digest, size in results:
            self.assertEqual((response.code, size, digest), (200, len(self.mid), expected))
        self.assertGreaterEqual(self.sendfile_calls, 100)

    @defer.inlineCallbacks
    def test_client_disconnect_leaks_nothing(self) -> Generator[defer.Deferred[Any], Any, None]:
        """A client resetting mid-transfer: the file and the dup'd socket are closed."""
        before = _descriptors()
        huge = str((self.root / "huge.img").resolve())
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(self.base.rsplit(":", 1)[1][:-1]))
        client = _ReadThenAbort(b"GET /huge.img HTTP/1.1\r\nHost: pxe\r\n\r\n")
        yield connectProtocol(endpoint, client)
        yield client.closed
        self.assertGreater(client.received, 0)
        self.assertLess(client.received, 64 * MiB)
        yield _until(lambda: huge not in _descriptors().values())
        # No socket left behind either: not the connection, not sendfile's dup of it.
        sockets_before = {v for v in before.values() if v.startswith("socket:")}
        yield _until(
            lambda: (
                {v for v in _descriptors().values() if v.startswith("socket:")} <= sockets_before
            )
        )
        self.assertGreater(self.sendfile_calls, 0)


class MeasuredTransferTests(TestCase):
    """The sendfile transfer reports its progress to twisted.web's access log."""

    @defer.inlineCallbacks
    def test_sent_length(self) -> Generator[defer.Deferred[Any], Any, None]:
        root = Path(tempfile.mkdtemp(prefix="pxetwist-http-socket-"))
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        (root / "k").write_bytes(b"k" * (SENDFILE_MIN * 3))
        logged: list[int] = []

        class LoggingSite(_TrackingSite):
            def log(self, request: Any) -> None:
                logged.append(request.sentLength)

        base = _listen(self, LoggingSite(BootFiles(root, reactor)))
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        response = yield http.get(base + "k")
        body = yield treq.content(response)
        self.assertEqual(len(body), SENDFILE_MIN * 3)
        self.assertEqual(logged, [SENDFILE_MIN * 3])

"""Unit tests for :mod:`pxetwist.http.static`, in memory: StubTreq, or raw bytes into a Site.

Raw requests (:func:`_raw`) are used wherever the exact bytes on the wire matter (traversal
attempts), because an HTTP client library may normalise ``..`` or percent-escapes away before
they ever reach the server.
"""

from __future__ import annotations

import email.utils
import os
import random
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IWriteDescriptor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface.verify import verifyClass, verifyObject

from pxetwist.http import static
from pxetwist.http.conditions import Validators
from pxetwist.http.dates import parse_http_date
from pxetwist.http.plan import Plan, Span, plan_response
from pxetwist.http.ranges import parse_ranges
from pxetwist.http.sendfile import SendfileTransfer
from pxetwist.http.static import (
    DEFAULT_CONTENT_TYPES,
    BootFiles,
    PathRefused,
    content_type_for,
    resolve_path,
    serve_file,
)
from pxetwist.http.transfer import ReadTransfer

MTIME = 1704067200  # 2024-01-01T00:00:00Z: every fixture file is this old
NOW = 1735689600  # 2025-01-01T00:00:00Z: what the clock says
MTIME_TEXT = b"Mon, 01 Jan 2024 00:00:00 GMT"
CLIENT = IPv4Address("TCP", "192.0.2.7", 4242)


def _tempdir(case: SynchronousTestCase) -> Path:
    """A fresh directory outside the source tree (trial's ``mktemp`` is relative to the cwd,
    which under pytest is the repository), removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="pxetwist-http-"))
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def _pattern(size: int, seed: int) -> bytes:
    """Bytes that differ at every offset, so an off-by-one range shows."""
    return random.Random(seed).randbytes(size)


class _Tree:
    """A served root with the files the tests need, and a secret file next to (outside) it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.root.mkdir()
        self.kernel = _pattern(10_000, 1)
        self.big = _pattern(50_000, 2)
        self.secret = b"root:x:0:0\n"
        self.files = {
            "vmlinuz": self.kernel,
            "big.iso": self.big,
            "BOOTX64.EFI": _pattern(3_000, 3),
            "empty.img": b"",
            "boot.ipxe": b"#!ipxe\nchain next\n",
            "sub/initrd.gz": _pattern(2_000, 4),
        }
        (self.root / "sub").mkdir()
        for name, data in self.files.items():
            (self.root / name).write_bytes(data)
            os.utime(self.root / name, (MTIME, MTIME))
        (base / "secret").write_bytes(self.secret)
        os.symlink(base / "secret", self.root / "out")
        os.symlink("../../secret", self.root / "sub" / "relout")
        os.symlink("vmlinuz", self.root / "netinst.iso")  # inside the root: allowed
        os.symlink("sub", self.root / "subdir-link")
        os.symlink("loop", self.root / "loop")
        os.mkfifo(self.root / "fifo")


class _Case(SynchronousTestCase):
    """Shared fixture: a tree, a clock, a BootFiles resource and a StubTreq on it."""

    chunk_size = 1024  # small, so that the 50 kB file takes many reactor turns

    def setUp(self) -> None:
        self.tree = _Tree(_tempdir(self))
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.resource = BootFiles(self.tree.root, self.clock, chunk_size=self.chunk_size)
        self.stub: Any = StubTreq(self.resource)  # its methods are attached at run time
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def _drive(self, d: Any) -> Any:
        """Pump the in-memory connection and the resource's clock until *d* has a result."""
        for _ in range(10_000):
            self.stub.flush()
            if d.called:
                break
            self.clock.advance(0)
        return self.successResultOf(d)

    def request(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[Any, bytes]:
        response = self._drive(
            self.stub.request(method, "http://pxe.test/" + path, headers=headers or {})
        )
        body = self._drive(self.stub.content(response))
        return response, body

    def header(self, response: Any, name: str) -> str | None:
        """A response header; Content-Length too, which Twisted's client keeps apart for GET."""
        if name.lower() == "content-length" and response.request.method != b"HEAD":
            return None if response.length == UNKNOWN_LENGTH else str(response.length)
        values = response.headers.getRawHeaders(name.encode())
        return None if values is None else values[-1].decode("latin-1")

    def etag(self, name: str) -> str:
        response, _ = self.request(name, method="HEAD")
        etag = self.header(response, "ETag")
        assert etag is not None
        return etag


def _raw(resource: Resource, clock: MemoryReactorClock, request: bytes) -> tuple[int, bytes]:
    """Feed *request* verbatim to a Site over a StringTransport; (status, whole response)."""
    site = Site(resource, reactor=clock)
    protocol = site.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT)
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    for _ in range(1000):
        clock.advance(0)
    response = transport.value()
    protocol.connectionLost(Failure(ConnectionDone()))
    return int(response.split(b" ", 2)[1]), response


def _fds_open_on(path: Path) -> list[str]:
    """This process's descriptors open on *path* (to prove a transfer closed its file)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
        except OSError:
            pass
    return found


def _multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """Split a multipart/byteranges body into (Content-Range, data) parts (RFC 9110 §14.6)."""
    boundary = content_type.split("boundary=", 1)[1].encode()
    assert body.startswith(b"--" + boundary + b"\r\n")
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    inner = body[: -len(b"\r\n--" + boundary + b"--\r\n")]
    parts = []
    for chunk in inner.split(b"--" + boundary + b"\r\n")[1:]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        parts.append((fields[b"Content-Range"].decode(), data))
    return parts


class InterfaceTests(SynchronousTestCase):
    def test_resource(self) -> None:
        """BootFiles is an IResource; the transfers are the producers they claim to be."""
        verifyObject(IResource, BootFiles(_tempdir(self), MemoryReactorClock()))
        verifyClass(IPushProducer, ReadTransfer)
        verifyClass(IPushProducer, SendfileTransfer)
        verifyClass(IWriteDescriptor, SendfileTransfer)


class ContentTypeTests(SynchronousTestCase):
    """The types UEFI HTTP Boot needs (protocol-reference §3.1), and the common boot payloads."""

    def test_firmware_types(self) -> None:
        self.assertEqual(content_type_for("ipxe.efi"), "application/efi")
        self.assertEqual(content_type_for("BOOTX64.EFI"), "application/efi")
        self.assertEqual(content_type_for("netinst.iso"), "application/vnd.efi-iso")
        self.assertEqual(content_type_for("disk.IMG"), "application/vnd.efi-img")

    def test_payloads(self) -> None:
        self.assertEqual(content_type_for("vmlinuz"), "application/octet-stream")
        self.assertEqual(content_type_for("undionly.kpxe"), "application/octet-stream")
        self.assertEqual(content_type_for("initrd.gz"), "application/gzip")
        self.assertEqual(content_type_for("initrd.xz"), "application/x-xz")
        self.assertEqual(content_type_for("initrd.cpio"), "application/x-cpio")
        self.assertEqual(content_type_for("boot.ipxe"), "text/plain; charset=utf-8")
        self.assertEqual(content_type_for("grub.cfg"), "text/plain; charset=utf-8")
        self.assertEqual(content_type_for(".hidden"), "application/octet-stream")

    def test_custom_table(self) -> None:
        table = {**DEFAULT_CONTENT_TYPES, ".sqfs": "application/x-squashfs"}
        self.assertEqual(content_type_for("root.sqfs", table), "application/x-squashfs")


class ResolvePathTests(SynchronousTestCase):
    """:func:`resolve_path` on what twisted.web puts in ``postpath`` (already percent-decoded)."""

    def setUp(self) -> None:
        self.tree = _Tree(_tempdir(self))
        self.root = Path(os.path.realpath(self.tree.root))

    def refused(self, *segments: bytes) -> PathRefused:
        return cast(PathRefused, self.assertRaises(PathRefused, resolve_path, self.root, segments))

    def test_plain(self) -> None:
        self.assertEqual(resolve_path(self.root, [b"vmlinuz"]), self.root / "vmlinuz")
        self.assertEqual(
            resolve_path(self.root, [b"sub", b"initrd.gz"]), self.root / "sub" / "initrd.gz"
        )

    def test_empty_segments_skipped(self) -> None:
        """``//`` from boot scripts that join ``${base}/`` and ``/file``."""
        self.assertEqual(
            resolve_path(self.root, [b"", b"sub", b"", b"initrd.gz"]).name, "initrd.gz"
        )

    def test_directories(self) -> None:
        self.assertEqual(self.refused().code, 404)
        self.assertEqual(self.refused(b"").code, 404)
        self.assertEqual(self.refused(b"sub").reason, "directory")
        self.assertEqual(self.refused(b"sub", b"").code, 404)
        self.assertEqual(self.refused(b"subdir-link").reason, "directory")
        self.assertEqual(self.refused(b"vmlinuz", b"").code, 404)

    def test_hostile_segments(self) -> None:
        for segments, reason in [
            ((b"..", b"secret"), "dot segment"),
            ((b"sub", b"..", b"..", b"secret"), "dot segment"),
            ((b".", b"vmlinuz"), "dot segment"),
            ((b"../secret",), "encoded slash"),  # from "..%2fsecret"
            ((b"sub\\..\\..\\secret",), "backslash"),
            ((b"vmlinuz\x00.efi",), "NUL byte"),
            ((b"\xff\xfe",), "not UTF-8"),
        ]:
            refusal = self.refused(*segments)
            self.assertEqual((refusal.code, refusal.reason), (400, reason), segments)
            self.assertTrue(refusal.suspicious)

    def test_double_encoding_is_just_a_name(self) -> None:
        """``%252f`` decodes once, to a literal ``%2f``: a file name, which does not exist."""
        self.assertEqual(self.refused(b"..%2f..", b"secret").code, 404)

    def test_symlinks(self) -> None:
        """Symlinks inside the root are followed; out of it, refused as if absent."""
        self.assertEqual(resolve_path(self.root, [b"netinst.iso"]), self.root / "vmlinuz")
        for segments in ([b"out"], [b"sub", b"relout"]):
            refusal = self.refused(*segments)
            self.assertEqual((refusal.code, refusal.reason), (404, "outside the root"))
            self.assertTrue(refusal.suspicious)
        self.assertEqual(self.refused(b"loop").code, 404)

    def test_not_regular(self) -> None:
        self.assertEqual(self.refused(b"fifo").reason, "not a regular file")
        self.assertEqual(self.refused(b"missing").reason, "not found")
        self.assertEqual(self.refused(b"vmlinuz", b"x").code, 404)  # ENOTDIR
        self.assertFalse(self.refused(b"missing").suspicious)

    @given(
        st.lists(
            st.sampled_from(
                [
                    *(b"..", b".", b"", b"sub", b"out", b"relout", b"vmlinuz", b"initrd.gz"),
                    *(b"../secret", b"..\\secret", b"netinst.iso", b"loop", b"fifo", b"\x00"),
                ]
            )
            | st.binary(max_size=6),
            max_size=6,
        )
    )
    @settings(max_examples=300, deadline=None)
    def test_never_escapes(self, segments: list[bytes]) -> None:
        """Whatever the segments: a 400/404 refusal, or a regular file inside the root."""
        try:
            path = resolve_path(self.root, segments)
        except PathRefused as refusal:
            self.assertIn(refusal.code, (400, 404))
        else:
            self.assertTrue(path.is_relative_to(self.root))
            self.assertTrue(stat.S_ISREG(path.stat().st_mode))


class HttpDateTests(SynchronousTestCase):
    """RFC 9110 §5.6.7: three formats accepted, anything else ignored."""

    def test_formats(self) -> None:
        expected = 784111777
        for text in (
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ):
            self.assertEqual(parse_http_date(text, NOW), expected, text)

    def test_two_digit_year_window(self) -> None:
        """More than 50 years ahead means the previous century."""
        parsed = parse_http_date(b"Friday, 01-Jan-99 00:00:00 GMT", NOW)
        self.assertEqual(parsed, 915148800)  # 1999
        parsed = parse_http_date(b"Saturday, 01-Jan-50 00:00:00 GMT", NOW)
        self.assertEqual(parsed, 2524608000)  # 2050

    def test_invalid(self) -> None:
        for text in (
            b"",
            b"yesterday",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 PST",
            b"Sun, 06 Nov 1994 25:49:37 GMT",
            b"\xff\x00",
            b"Sun, 06 Nov 99999999999999999999 08:49:37 GMT",
        ):
            self.assertIsNone(parse_http_date(text, NOW), text)

    @given(st.integers(min_value=0, max_value=2**34))
    def test_round_trip(self, seconds: int) -> None:
        text = email.utils.formatdate(seconds, usegmt=True).encode()
        self.assertEqual(parse_http_date(text, NOW), seconds)


def _reference_positions(spec: tuple[int | None, int | None], size: int) -> range:
    """Which byte positions one range-spec covers, by Python slicing: an independent model."""
    first, last = spec
    if first is None:
        assert last is not None
        return range(size)[-last:] if last > 0 else range(0)
    if last is None:
        return range(size)[first:]
    return range(size)[first : last + 1]


_specs = st.one_of(
    st.tuples(st.integers(0, 80), st.integers(0, 80)).map(lambda t: (min(t), max(t))),
    st.tuples(st.integers(0, 80), st.none()),
    st.tuples(st.none(), st.integers(0, 80)),
)


def _spec_text(spec: tuple[int | None, int | None]) -> bytes:
    first, last = spec
    return b"%s-%s" % (
        b"" if first is None else b"%d" % first,
        b"" if last is None else b"%d" % last,
    )


class RangeParsingTests(SynchronousTestCase):
    """RFC 9110 §14.1.2: byte-range specs, checked against Python slicing."""

    def test_examples(self) -> None:
        parse = parse_ranges
        self.assertEqual(parse(b"bytes=0-499", 10000), [(0, 499)])
        self.assertEqual(parse(b"bytes=500-999", 10000), [(500, 999)])
        self.assertEqual(parse(b"bytes=-500", 10000), [(9500, 9999)])
        self.assertEqual(parse(b"bytes=9500-", 10000), [(9500, 9999)])
        self.assertEqual(parse(b"bytes=0-0,-1", 10000), [(0, 0), (9999, 9999)])
        self.assertEqual(parse(b"BYTES = 1-2 , , 4-5", 10), [(1, 2), (4, 5)])
        self.assertEqual(parse(b"bytes=5-100", 10), [(5, 9)])
        self.assertEqual(parse(b"bytes=-100", 10), [(0, 9)])

    def test_ignored(self) -> None:
        for value in (
            b"bytes=5-1",
            b"items=0-1",
            b"bytes 0-1",
            b"bytes=",
            b"bytes=-",
            b"bytes=a-b",
            b"bytes=0-1;x",
            b"bytes=1-2-3",
            b"bytes=" + b"9" * 30 + b"-",
            b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(65)),
        ):
            self.assertIsNone(parse_ranges(value, 100), value)

    def test_unsatisfiable(self) -> None:
        self.assertEqual(parse_ranges(b"bytes=100-", 100), [])
        self.assertEqual(parse_ranges(b"bytes=-0", 100), [])
        self.assertEqual(parse_ranges(b"bytes=0-", 0), [])
        self.assertEqual(parse_ranges(b"bytes=-5", 0), [])

    def test_overlaps_merged(self) -> None:
        """The same bytes are never sent twice (the "many overlapping ranges" attack)."""
        self.assertEqual(parse_ranges(b"bytes=0-,0-,0-", 100), [(0, 99)])
        self.assertEqual(parse_ranges(b"bytes=50-99,0-60,10-20", 100), [(0, 99)])

    @given(st.integers(0, 60), st.lists(_specs, min_size=1, max_size=5))
    def test_model(self, size: int, specs: list[tuple[int | None, int | None]]) -> None:
        """The union of returned ranges equals the union of the slices, all within the file."""
        ranges = parse_ranges(b"bytes=" + b",".join(map(_spec_text, specs)), size)
        assert ranges is not None
        expected: set[int] = set()
        for spec in specs:
            expected.update(_reference_positions(spec, size))
        got: set[int] = set()
        for first, last in ranges:
            self.assertTrue(0 <= first <= last < size)
            got.update(range(first, last + 1))
        self.assertEqual(got, expected)
        self.assertLessEqual(sum(last - first + 1 for first, last in ranges), max(size, 0) or 0)


class PlanTests(SynchronousTestCase):
    """The pure decision function, byte for byte."""

    def test_multipart_body(self) -> None:
        validators = Validators(100, MTIME * 10**9, b'"e"', MTIME_TEXT)
        headers = Headers({b"Range": [b"bytes=0-9,-5"]})
        plan = plan_response(b"GET", headers, validators, b"a/b", NOW, b"XYZ")
        self.assertEqual(plan.code, 206)
        self.assertEqual(
            plan.body,
            (
                b"--XYZ\r\nContent-Type: a/b\r\nContent-Range: bytes 0-9/100\r\n\r\n",
                Span(0, 10),
                b"\r\n--XYZ\r\nContent-Type: a/b\r\nContent-Range: bytes 95-99/100\r\n\r\n",
                Span(95, 5),
                b"\r\n--XYZ--\r\n",
            ),
        )
        self.assertEqual(
            plan.length, sum(len(p) if isinstance(p, bytes) else p.length for p in plan.body)
        )
        self.assertIn((b"Content-Type", b"multipart/byteranges; boundary=XYZ"), plan.headers)

    def test_304_has_validators_and_no_length(self) -> None:
        validators = Validators(100, MTIME * 10**9, b'"e"', MTIME_TEXT)
        headers = Headers({b"If-None-Match": [b'"e"']})
        plan = plan_response(b"GET", headers, validators, b"a/b", NOW, b"XYZ")
        self.assertEqual(
            plan, Plan(304, ((b"ETag", b'"e"'), (b"Last-Modified", MTIME_TEXT)), (), None)
        )


class GetHeadTests(_Case):
    def test_headers_on_the_wire(self) -> None:
        """Exactly what firmware sees for a GET of an EFI program."""
        code, response = _raw(
            self.resource, self.clock, b"GET /BOOTX64.EFI HTTP/1.1\r\nHost: pxe\r\n\r\n"
        )
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertEqual(code, 200)
        lines = head.split(b"\r\n")
        self.assertIn(b"Content-Length: 3000", lines)
        self.assertIn(b"Content-Type: application/efi", lines)
        self.assertIn(b"Accept-Ranges: bytes", lines)
        self.assertNotIn(b"Transfer-Encoding: chunked", lines)
        self.assertEqual(body, self.tree.files["BOOTX64.EFI"])

    def test_get(self) -> None:
        response, body = self.request("vmlinuz")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, self.tree.kernel)
        self.assertEqual(self.header(response, "Content-Length"), "10000")
        self.assertEqual(self.header(response, "Content-Type"), "application/octet-stream")
        self.assertEqual(self.header(response, "Accept-Ranges"), "bytes")
        self.assertEqual(self.header(response, "Last-Modified"), MTIME_TEXT.decode())
        st_ = (self.tree.root / "vmlinuz").stat()
        self.assertEqual(
            self.header(response, "ETag"), f'"{st_.st_size:x}-{st_.st_mtime_ns:x}-{st_.st_ino:x}"'
        )

    def test_head(self) -> None:
        """HEAD: what UEFI HTTP Boot sends first; Content-Length and type, and no body."""
        response, body = self.request("BOOTX64.EFI", method="HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(self.header(response, "Content-Length"), "3000")
        self.assertEqual(self.header(response, "Content-Type"), "application/efi")
        self.assertIsNotNone(self.header(response, "ETag"))

    def test_types_on_the_wire(self) -> None:
        for name, expected in [
            ("big.iso", "application/vnd.efi-iso"),
            ("empty.img", "application/vnd.efi-img"),
            ("boot.ipxe", "text/plain; charset=utf-8"),
            ("sub/initrd.gz", "application/gzip"),
            ("netinst.iso", "application/vnd.efi-iso"),  # the requested name, not the target's
        ]:
            response, _ = self.request(name, method="HEAD")
            self.assertEqual(self.header(response, "Content-Type"), expected, name)

    def test_empty_file(self) -> None:
        response, body = self.request("empty.img")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.header(response, "Content-Length"), "0")

    def test_large_file_yields_to_the_reactor(self) -> None:
        """50 chunks, never more than a few per reactor turn, and no file left open."""
        response = self.successResultOf(self.stub.get("http://pxe.test/big.iso"))
        body = self.stub.content(response)
        self.stub.flush()
        self.assertNoResult(body)  # the first turn wrote 4 KiB at most
        self.assertEqual(self._drive(body), self.tree.big)
        self.assertEqual(_fds_open_on(self.tree.root / "big.iso"), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_methods(self) -> None:
        response, _ = self.request("vmlinuz", method="POST")
        self.assertEqual(response.code, 405)
        self.assertIn("GET", self.header(response, "Allow") or "")

    def test_mounted_below_a_parent(self) -> None:
        parent = Resource()
        parent.putChild(b"boot", self.resource)
        stub: Any = StubTreq(parent)
        response = self.successResultOf(stub.get("http://pxe.test/boot/sub/initrd.gz"))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            self.successResultOf(stub.content(response)), self.tree.files["sub/initrd.gz"]
        )
        response = self.successResultOf(stub.get("http://pxe.test/boot"))
        self.assertEqual(response.code, 404)


class RangeTests(_Case):
    """RFC 9110 §14: 206, multipart/byteranges, 416."""

    def get_range(self, value: str, name: str = "vmlinuz") -> tuple[Any, bytes]:
        return self.request(name, {"Range": value})

    def test_single(self) -> None:
        response, body = self.get_range("bytes=100-199")
        self.assertEqual(response.code, 206)
        self.assertEqual(body, self.tree.kernel[100:200])
        self.assertEqual(self.header(response, "Content-Range"), "bytes 100-199/10000")
        self.assertEqual(self.header(response, "Content-Length"), "100")
        self.assertEqual(self.header(response, "Content-Type"), "application/octet-stream")

    def test_open_ended(self) -> None:
        response, body = self.get_range("bytes=9000-")
        self.assertEqual((response.code, body), (206, self.tree.kernel[9000:]))
        self.assertEqual(self.header(response, "Content-Range"), "bytes 9000-9999/10000")

    def test_suffix(self) -> None:
        response, body = self.get_range("bytes=-500")
        self.assertEqual((response.code, body), (206, self.tree.kernel[-500:]))
        self.assertEqual(self.header(response, "Content-Range"), "bytes 9500-9999/10000")
        response, body = self.get_range("bytes=-20000")
        self.assertEqual((response.code, body), (206, self.tree.kernel))

    def test_last_past_the_end(self) -> None:
        response, body = self.get_range("bytes=9990-20000")
        self.assertEqual((response.code, body), (206, self.tree.kernel[9990:]))

    def test_large_range_in_chunks(self) -> None:
        response, body = self.get_range("bytes=1000-45999", "big.iso")
        self.assertEqual((response.code, body), (206, self.tree.big[1000:46000]))

    def test_multiple(self) -> None:
        response, body = self.get_range("bytes=0-9,5000-7047,-3")
        self.assertEqual(response.code, 206)
        content_type = self.header(response, "Content-Type") or ""
        self.assertTrue(content_type.startswith("multipart/byteranges; boundary="))
        self.assertEqual(self.header(response, "Content-Length"), str(len(body)))
        self.assertIsNone(self.header(response, "Content-Range"))
        self.assertEqual(
            _multipart(body, content_type),
            [
                ("bytes 0-9/10000", self.tree.kernel[0:10]),
                ("bytes 5000-7047/10000", self.tree.kernel[5000:7048]),
                ("bytes 9997-9999/10000", self.tree.kernel[9997:]),
            ],
        )

    def test_multipart_part_type(self) -> None:
        _, body = self.get_range("bytes=0-0,2-2", "BOOTX64.EFI")
        self.assertIn(b"\r\nContent-Type: application/efi\r\n", body)

    def test_unsatisfiable(self) -> None:
        response, body = self.get_range("bytes=10000-")
        self.assertEqual(response.code, 416)
        self.assertEqual(self.header(response, "Content-Range"), "bytes */10000")
        self.assertEqual(self.header(response, "Content-Length"), str(len(body)))
        response, _ = self.get_range("bytes=0-", "empty.img")
        self.assertEqual(response.code, 416)
        self.assertEqual(self.header(response, "Content-Range"), "bytes */0")

    def test_unsatisfiable_parts_dropped(self) -> None:
        response, body = self.get_range("bytes=20000-30000,10-19")
        self.assertEqual((response.code, body), (206, self.tree.kernel[10:20]))

    def test_invalid_is_ignored(self) -> None:
        for value in ("bytes=5-1", "lines=1-2", "bytes=x", "bytes=" + ",".join(["0-0"] * 65)):
            response, body = self.get_range(value)
            self.assertEqual((response.code, body), (200, self.tree.kernel), value)

    def test_overlapping_merged(self) -> None:
        response, body = self.get_range("bytes=0-,0-,0-,0-")
        self.assertEqual((response.code, body), (206, self.tree.kernel))
        self.assertEqual(self.header(response, "Content-Range"), "bytes 0-9999/10000")

    def test_head_ignores_range(self) -> None:
        response, body = self.request("vmlinuz", {"Range": "bytes=0-9"}, method="HEAD")
        self.assertEqual((response.code, body), (200, b""))
        self.assertEqual(self.header(response, "Content-Length"), "10000")
        self.assertIsNone(self.header(response, "Content-Range"))


class ConditionalTests(_Case):
    """RFC 9110 §13: ETag and Last-Modified validators, evaluated in §13.2.2's order."""

    def assertStatus(self, headers: dict[str, str], code: int, method: str = "GET") -> Any:
        response, body = self.request("vmlinuz", headers, method)
        self.assertEqual(response.code, code, headers)
        if code == 304:
            self.assertEqual(body, b"")
            self.assertIsNone(self.header(response, "Content-Type"))
            self.assertEqual(self.header(response, "ETag"), self.etag("vmlinuz"))
        return response

    def test_304_on_the_wire(self) -> None:
        """No body, no Content-Length (it would have to be the full size, RFC 9110 §8.6), and
        the validators, so that a cache can refresh its copy (§15.4.5)."""
        request = b"GET /vmlinuz HTTP/1.1\r\nHost: pxe\r\nIf-None-Match: %s\r\n\r\n" % (
            self.etag("vmlinuz").encode()
        )
        code, response = _raw(self.resource, self.clock, request)
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertEqual((code, body), (304, b""))
        self.assertNotIn(b"content-length", head.lower())
        self.assertIn(b"\r\nLast-Modified: " + MTIME_TEXT, head)

    def test_if_none_match(self) -> None:
        etag = self.etag("vmlinuz")
        self.assertStatus({"If-None-Match": etag}, 304)
        self.assertStatus({"If-None-Match": f'"nope", {etag}'}, 304)
        self.assertStatus({"If-None-Match": "W/" + etag}, 304)  # weak comparison
        self.assertStatus({"If-None-Match": "*"}, 304)
        self.assertStatus({"If-None-Match": '"nope"'}, 200)
        self.assertStatus({"If-None-Match": etag}, 304, method="HEAD")

    def test_if_modified_since(self) -> None:
        self.assertStatus({"If-Modified-Since": MTIME_TEXT.decode()}, 304)
        self.assertStatus({"If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"}, 304)
        self.assertStatus({"If-Modified-Since": "Sun, 31 Dec 2023 23:59:59 GMT"}, 200)
        self.assertStatus({"If-Modified-Since": "not a date"}, 200)

    def test_if_none_match_wins_over_if_modified_since(self) -> None:
        self.assertStatus(
            {"If-None-Match": '"nope"', "If-Modified-Since": MTIME_TEXT.decode()}, 200
        )

    def test_if_match(self) -> None:
        etag = self.etag("vmlinuz")
        self.assertStatus({"If-Match": etag}, 200)
        self.assertStatus({"If-Match": "*"}, 200)
        self.assertStatus({"If-Match": '"nope"'}, 412)
        self.assertStatus({"If-Match": "W/" + etag}, 412)  # strong comparison
        self.assertStatus({"If-Match": '"nope"'}, 412, method="HEAD")

    def test_if_unmodified_since(self) -> None:
        self.assertStatus({"If-Unmodified-Since": "Sun, 31 Dec 2023 00:00:00 GMT"}, 412)
        self.assertStatus({"If-Unmodified-Since": MTIME_TEXT.decode()}, 200)
        self.assertStatus({"If-Unmodified-Since": "garbage"}, 200)
        # If-Match, when present, is what counts.
        etag = self.etag("vmlinuz")
        self.assertStatus(
            {"If-Match": etag, "If-Unmodified-Since": "Sun, 31 Dec 2023 00:00:00 GMT"}, 200
        )

    def test_if_range(self) -> None:
        """A Range is honoured only if the client's copy is current (RFC 9110 §13.1.5)."""
        etag = self.etag("vmlinuz")
        for if_range, code in [
            (etag, 206),
            ('"stale"', 200),
            ("W/" + etag, 200),
            (MTIME_TEXT.decode(), 206),
            ("Tue, 02 Jan 2024 00:00:00 GMT", 200),
            ("nonsense", 200),
        ]:
            response, body = self.request("vmlinuz", {"Range": "bytes=0-9", "If-Range": if_range})
            self.assertEqual(response.code, code, if_range)
            self.assertEqual(body, self.tree.kernel[:10] if code == 206 else self.tree.kernel)

    def test_if_range_date_of_a_fresh_file(self) -> None:
        """A date within the file's last second is a weak validator: send the whole file."""
        self.clock.advance(MTIME + 0.5 - self.clock.seconds())
        response, _ = self.request(
            "vmlinuz", {"Range": "bytes=0-9", "If-Range": MTIME_TEXT.decode()}
        )
        self.assertEqual(response.code, 200)

    def test_etag_changes_with_the_file(self) -> None:
        before = self.etag("vmlinuz")
        path = self.tree.root / "vmlinuz"
        replacement = self.tree.root / "vmlinuz.new"
        replacement.write_bytes(self.tree.kernel)
        os.utime(replacement, (MTIME, MTIME))
        os.replace(replacement, path)  # same size and times, new inode
        self.assertNotEqual(self.etag("vmlinuz"), before)
        self.assertStatus({"If-None-Match": before}, 200)


class RefusalTests(_Case):
    """No way out of the root, no listings, and every refusal logged, never a traceback."""

    def raw(self, target: bytes) -> tuple[int, bytes]:
        return _raw(self.resource, self.clock, b"GET " + target + b" HTTP/1.1\r\nHost: pxe\r\n\r\n")

    def test_traversal(self) -> None:
        for target in (
            b"/../secret",
            b"/sub/../../secret",
            b"/%2e%2e/secret",
            b"/%2E%2E/secret",
            b"/sub/%2e%2e/%2e%2e/secret",
            b"/..%2fsecret",
            b"/sub%2f..%2f..%2fsecret",
            b"/%2e%2e%2fsecret",
            b"/..%5csecret",
            b"/sub\\..\\..\\secret",
            b"/vmlinuz%00.efi",
            b"/%ff",
            b"/./vmlinuz",
        ):
            code, response = self.raw(target)
            self.assertEqual(code, 400, target)
            self.assertNotIn(self.tree.secret, response)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_symlinks_out(self) -> None:
        for target in (b"/out", b"/sub/relout"):
            code, response = self.raw(target)
            self.assertEqual(code, 404, target)
            self.assertNotIn(self.tree.secret, response)

    def test_directories(self) -> None:
        for target in (b"/", b"/sub", b"/sub/", b"/subdir-link/", b"//"):
            code, response = self.raw(target)
            self.assertEqual(code, 404, target)
            self.assertNotIn(b"initrd.gz", response)

    def test_not_found_and_specials(self) -> None:
        for target in (b"/missing", b"/fifo", b"/loop", b"/vmlinuz/x"):
            self.assertEqual(self.raw(target)[0], 404, target)

    def test_double_slash_is_fine(self) -> None:
        code, response = self.raw(b"//sub//initrd.gz")
        self.assertEqual(code, 200)
        self.assertTrue(response.endswith(self.tree.files["sub/initrd.gz"]))

    def test_refusals_are_logged(self) -> None:
        self.raw(b"/%2e%2e/secret")
        self.raw(b"/out")
        self.raw(b"/missing")
        refusals = [e for e in self.events if e.get("log_namespace") == static.__name__]
        self.assertEqual(
            [(e["path"], e["client"], e["reason"], e["log_level"]) for e in refusals],
            [
                ("/%2e%2e/secret", "192.0.2.7:4242", "dot segment", LogLevel.warn),
                ("/out", "192.0.2.7:4242", "outside the root", LogLevel.warn),
                ("/missing", "192.0.2.7:4242", "not found", LogLevel.info),
            ],
        )


class TransferLifecycleTests(_Case):
    """The fallback producer ends cleanly however the connection ends."""

    def start(self, name: str) -> tuple[Any, StringTransport]:
        site = Site(self.resource, reactor=self.clock)
        protocol = site.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /" + name.encode() + b" HTTP/1.1\r\nHost: pxe\r\n\r\n")
        return protocol, transport

    def test_client_goes_away(self) -> None:
        protocol, transport = self.start("big.iso")  # one turn: 4 chunks, then a callLater
        self.assertEqual(len(_fds_open_on(self.tree.root / "big.iso")), 1)
        sent = len(transport.value())
        self.assertLess(sent, len(self.tree.big))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(_fds_open_on(self.tree.root / "big.iso"), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(0)
        self.assertEqual(len(transport.value()), sent)
        self.assertTrue(any("went away" in e.get("log_format", "") for e in self.events))

    def test_file_shrinks(self) -> None:
        """The promised Content-Length can no longer be met: drop the connection, log why."""
        protocol, transport = self.start("big.iso")
        os.truncate(self.tree.root / "big.iso", 20_000)
        self.clock.advance(0)  # runs every turn still to come, see MemoryReactorClock.advance
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(transport.value().partition(b"\r\n\r\n")[2]), 20_000)
        self.assertEqual(_fds_open_on(self.tree.root / "big.iso"), [])
        self.assertTrue(any("shrank" in str(e.get("why", "")) for e in self.events))
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_push_back_is_honoured(self) -> None:
        """A paused producer writes nothing until resumed."""
        protocol, transport = self.start("big.iso")
        producer = transport.producer
        assert producer is not None
        producer.pauseProducing()
        before = len(transport.value())
        self.clock.advance(0)
        self.assertEqual(len(transport.value()), before)
        producer.resumeProducing()
        self.clock.advance(0)
        self.assertTrue(transport.value().endswith(self.tree.big))
        protocol.connectionLost(Failure(ConnectionDone()))


class ServeFileTests(_Case):
    """:func:`serve_file` reused by another resource (generated scripts, per-machine files)."""

    def test_from_another_resource(self) -> None:
        tree, clock = self.tree, self.clock

        class Script(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> int:
                return serve_file(request, tree.root / "netinst.iso", clock, content_type="x/y")

        stub: Any = StubTreq(Script())
        response = self.successResultOf(stub.get("http://pxe.test/anything"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["x/y"])
        self.assertEqual(self.successResultOf(stub.content(response)), tree.kernel)

    def test_missing(self) -> None:
        clock = self.clock

        class Gone(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> int:
                return serve_file(request, "/nonexistent/file", clock)

        stub: Any = StubTreq(Gone())
        response = self.successResultOf(stub.get("http://pxe.test/x"))
        self.assertEqual(response.code, 404)

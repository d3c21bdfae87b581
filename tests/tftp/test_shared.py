"""DATA datagrams shared by the transfers of one file (pxetwist.tftp.shared).

A storm's machines fetch the same NBP at the same block size; the datagrams are built once and
sent as they are to each (RFC 1350 §6, lockstep; block numbers wrap as in protocol-reference
§6.5).  What must never happen is a stale table: a file replaced or rewritten on disk is
served as it is now.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.tftp.files import FileSource
from pxetwist.tftp.packet import Data, ReadRequest, decode
from pxetwist.tftp.session import BytesSource, ReadSession
from pxetwist.tftp.shared import SharedBlockCache, SharedBlocks

from .test_protocol import Harness
from .test_session import CountingSource, content, run_to_the_end


def later() -> float:
    """A wall clock a minute ahead: every file written by a test has settled."""
    return time.time() + 60


class CacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.cache = SharedBlockCache(clock=later)

    def file(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def open(self, path: Path) -> FileSource:
        source = FileSource.open(path)
        self.addCleanup(source.close)
        return source

    def test_one_table_per_file_and_block_size(self) -> None:
        path = self.file("nbp", content(5000))
        first = self.cache.blocks(self.open(path), 512)
        assert first is not None
        self.assertIs(self.cache.blocks(self.open(path), 512), first)
        other = self.cache.blocks(self.open(path), 1468)
        assert other is not None
        self.assertIsNot(other, first)
        self.assertEqual((len(first.datagrams), len(other.datagrams)), (10, 4))
        self.assertEqual(len(self.cache), 2)

    def test_a_file_rewritten_in_place_gets_a_new_table(self) -> None:
        """Same inode, same size, new content: the change times tell the versions apart."""
        path = self.file("nbp", content(5000))
        before = self.cache.blocks(self.open(path), 512)
        stamp = path.stat().st_mtime_ns
        path.write_bytes(bytes(5000))
        os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
        after = self.cache.blocks(self.open(path), 512)
        self.assertIsNotNone(after)
        self.assertIsNot(after, before)

    def test_a_file_replaced_by_a_rename_gets_a_new_table(self) -> None:
        path = self.file("nbp", content(5000))
        before = self.cache.blocks(self.open(path), 512)
        os.replace(self.file("nbp.new", content(5000)), path)
        after = self.cache.blocks(self.open(path), 512)
        self.assertIsNotNone(after)
        self.assertIsNot(after, before)

    def test_a_file_changed_a_moment_ago_is_not_shared_yet(self) -> None:
        """Its times may not yet tell it from a rewrite in the same tick."""
        path = self.file("nbp", content(5000))
        now = SharedBlockCache()  # the real clock: the file was written just now
        self.assertIsNone(now.blocks(self.open(path), 512))
        self.assertEqual(len(now), 0)
        settled = SharedBlockCache(clock=lambda: path.stat().st_ctime + 1.5)
        self.assertIsNotNone(settled.blocks(self.open(path), 512))

    def test_only_plain_files_within_the_size_limit(self) -> None:
        self.assertIsNone(self.cache.blocks(BytesSource(content(100)), 512))
        small = SharedBlockCache(file_limit=4096, clock=later)
        self.assertIsNone(small.blocks(self.open(self.file("big", content(5000))), 512))
        self.assertIsNotNone(small.blocks(self.open(self.file("small", content(4000))), 512))
        closed = self.open(self.file("closed", content(100)))
        closed.close()
        self.assertIsNone(self.cache.blocks(closed, 512))

    def test_bounded_least_recently_used_first_out(self) -> None:
        size = 100_000
        one_table = SharedBlocks(size, 512).octets
        cache = SharedBlockCache(limit=2 * one_table + 10, clock=later)
        paths = [self.file(f"f{index}", content(size)) for index in range(3)]
        first = cache.blocks(self.open(paths[0]), 512)
        cache.blocks(self.open(paths[1]), 512)
        self.assertIs(cache.blocks(self.open(paths[0]), 512), first)  # used again: kept
        cache.blocks(self.open(paths[2]), 512)
        self.assertEqual(len(cache), 2)
        self.assertLessEqual(cache.octets, cache.limit)
        self.assertIs(cache.blocks(self.open(paths[0]), 512), first)
        self.assertEqual(len(cache), 2)  # f1 went, not f0


class SharedSessionTests(SynchronousTestCase):
    """The engine with a shared table: the same bytes as without, built once."""

    def test_the_second_transfer_sends_what_the_first_built_and_reads_nothing(self) -> None:
        data = content(10_000)
        request = ReadRequest("nbp", "octet", (("blksize", "1468"),))
        table = SharedBlocks(len(data), 1468)
        self.assertEqual(run_to_the_end(ReadSession(request, BytesSource(data), None, table)), data)
        self.assertEqual(table.built, len(table.datagrams))
        second = CountingSource(data)
        self.assertEqual(run_to_the_end(ReadSession(request, second, None, table)), data)
        self.assertEqual(second.reads, [])  # after the OACK, even DATA 1 comes from the table

    def test_wrapped_block_numbers_are_shared_as_sent(self) -> None:
        """protocol-reference §6.5: past block 65535 the wire number wraps to 0."""
        data = content(70_000 * 8 - 3)
        request = ReadRequest("nbp", "octet", (("blksize", "8"),))
        table = SharedBlocks(len(data), 8)
        run_to_the_end(ReadSession(request, BytesSource(data), None, table))
        block = table.datagrams[65_536]  # block 65537
        assert block is not None
        packet = decode(block)
        assert isinstance(packet, Data)
        self.assertEqual((packet.block, packet.payload), (1, data[65_536 * 8 : 65_537 * 8]))
        self.assertEqual(run_to_the_end(ReadSession(request, BytesSource(data), None, table)), data)

    def test_a_table_for_another_size_or_block_size_or_netascii_is_ignored(self) -> None:
        data = content(3000)
        for table, mode in (
            (SharedBlocks(2999, 512), "octet"),
            (SharedBlocks(3000, 1024), "octet"),
            (SharedBlocks(3000, 512), "netascii"),
        ):
            poisoned = SharedBlocks(table.size, table.blksize)
            poisoned.datagrams = [b"\0\3\0\1wrong"] * len(table.datagrams)
            session = ReadSession(ReadRequest("f", mode, ()), BytesSource(data), None, poisoned)
            self.assertNotIn(b"wrong", run_to_the_end(session))


class ServerTests(SynchronousTestCase):
    """Through the listener, on real loopback sockets, as machines download."""

    def harness(self) -> Harness:
        harness = Harness(self)
        harness.server.shared_blocks = SharedBlockCache(clock=later)
        return harness

    def test_two_machines_one_table_and_the_file_read_once(self) -> None:
        harness = self.harness()
        data = harness.file("undionly.kpxe", os.urandom(20_000))
        self.assertEqual(harness.download("undionly.kpxe", ("127.0.0.1", 40001)), data)
        reads: list[Any] = []
        real = FileSource.read

        def counting(source: FileSource, offset: int, length: int) -> bytes:
            reads.append(offset)
            return real(source, offset, length)

        self.patch(FileSource, "read", counting)
        self.assertEqual(harness.download("undionly.kpxe", ("127.0.0.1", 40002)), data)
        self.assertEqual(reads, [0])  # DATA 1 only: every later block came from the table
        self.assertEqual(len(harness.server.shared_blocks), 1)

    def test_a_file_rewritten_between_downloads_is_served_new(self) -> None:
        harness = self.harness()
        harness.file("undionly.kpxe", os.urandom(20_000))
        harness.download("undionly.kpxe", ("127.0.0.1", 40001))
        path = harness.root / "undionly.kpxe"
        stamp = path.stat().st_mtime_ns
        new = os.urandom(20_000)
        path.write_bytes(new)
        os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
        self.assertEqual(harness.download("undionly.kpxe", ("127.0.0.1", 40002)), new)

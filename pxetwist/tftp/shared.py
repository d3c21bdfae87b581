# -*- test-case-name: tests.tftp.test_shared -*-
"""DATA datagrams shared by every transfer of one file at one block size.

In a storm hundreds of machines fetch the same NBP at the same block size at once, and each
lockstep transfer would read its own copy of the file (a :data:`~pxetwist.tftp.files.READ_CHUNK`
buffer per transfer) and build the same DATA datagrams again.  A :class:`SharedBlocks` table
holds one file's datagrams at one block size, built by whichever transfer needs a block first
and then handed as is to every other: per block, a list lookup instead of a read, a header and
a copy, and one copy of the file in memory instead of one per transfer.  Lockstep transfers (a
PXE ROM's) take their blocks from it; windowed ones (RFC 7440) build their windows as before,
in one read each.

A table belongs to one version of a file: the key is the opened file's device, inode, size and
change times (``fstat`` of the descriptor the transfer reads), so a file replaced or rewritten
on disk gets a new table, as nginx's ``open_file_cache`` tells versions apart.  File systems
stamp those times at the kernel's tick, so a file rewritten in place within one tick of its
last change could keep them; a file changed less than :data:`SETTLED` ago is therefore not
shared yet (git's "racily clean" index entries, the same problem).  Only regular files up to
:data:`FILE_LIMIT` are shared, and the tables together are bounded by :data:`CACHE_LIMIT`
(least recently used first out); a table dropped from the cache lives on while transfers
still use it.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from pxetwist.tftp.files import FileSource

FILE_LIMIT: Final = 32 * 1024 * 1024
"""Largest file whose datagrams are shared (NBPs, GRUB and pxelinux images, most kernels)."""

CACHE_LIMIT: Final = 128 * 1024 * 1024
"""Most octets all tables together may come to once fully built."""

SETTLED: Final = 1.0
"""Seconds a file must have stood unchanged before its datagrams are shared."""

_DATAGRAM_OVERHEAD: Final = 4 + 40
"""Per block: the DATA header, and about what a ``bytes`` object and its list slot cost."""

FileKey = tuple[int, int, int, int, int, int]


class SharedBlocks:
    """One file's DATA datagrams at one block size; entry ``n - 1`` is block ``n`` (or None
    until a transfer has built it).

    Block numbers on the wire wrap at 65,536; entry ``n - 1`` holds the datagram of block ``n``
    as sent, with its wrapped number, so any transfer of the same file at the same block size
    sends exactly those bytes.
    """

    __slots__ = ("blksize", "datagrams", "size")

    def __init__(self, size: int, blksize: int) -> None:
        self.size = size
        self.blksize = blksize
        self.datagrams: list[bytes | None] = [None] * (size // blksize + 1)

    @property
    def octets(self) -> int:
        """What the table comes to once every block is built."""
        return self.size + len(self.datagrams) * _DATAGRAM_OVERHEAD

    @property
    def built(self) -> int:
        """Blocks built so far."""
        return sum(1 for datagram in self.datagrams if datagram is not None)


class SharedBlockCache:
    """The tables of the files being served, least recently used dropped first."""

    def __init__(
        self,
        limit: int = CACHE_LIMIT,
        file_limit: int = FILE_LIMIT,
        settled: float = SETTLED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.file_limit = min(file_limit, limit)
        self.settled = settled
        self._clock = clock
        """Wall-clock time, what file times are stamped in."""
        self._tables: OrderedDict[FileKey, SharedBlocks] = OrderedDict()
        self._octets = 0

    def __len__(self) -> int:
        return len(self._tables)

    @property
    def octets(self) -> int:
        """What the cached tables come to once fully built (never above ``limit``)."""
        return self._octets

    def blocks(self, source: object, blksize: int) -> SharedBlocks | None:
        """The table for ``source`` at ``blksize``, or None when it is not shared: not a plain
        file source (generated files, netascii), larger than ``file_limit``, changed less than
        ``settled`` seconds ago, or gone."""
        if type(source) is not FileSource or source.size > self.file_limit:
            return None
        fd = source.fileno()
        if fd < 0:
            return None
        try:
            info = os.fstat(fd)
        except OSError:
            return None
        changed = max(info.st_mtime_ns, info.st_ctime_ns) / 1e9
        if self._clock() - changed < self.settled:
            return None
        key = (
            info.st_dev,
            info.st_ino,
            source.size,
            info.st_mtime_ns,
            info.st_ctime_ns,
            blksize,
        )
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
            return table
        table = SharedBlocks(source.size, blksize)
        self._tables[key] = table
        self._octets += table.octets
        while self._octets > self.limit:
            _, dropped = self._tables.popitem(last=False)
            self._octets -= dropped.octets
        return table


__all__ = ["CACHE_LIMIT", "FILE_LIMIT", "SETTLED", "SharedBlockCache", "SharedBlocks"]

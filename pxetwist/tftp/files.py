# -*- test-case-name: tests.tftp.test_protocol -*-
"""What a TFTP name is served from: a file under the root, or a boot config rendered per machine.

Which file answers a name (:class:`FileResolver`): boot-loader config names
(:mod:`pxetwist.bootnames`: ``pxelinux.cfg/01-<mac>``, ``grub.cfg-<mac>``, ``*.ipxe``, ...)
are rendered for the asking machine *when its policy decision has something to say there* (a
kernel, "boot locally", an iPXE script); otherwise the name is looked up on disk like any other.
So generated configs win over files of the same name, and a site's hand-written
``pxelinux.cfg/default`` still serves every machine the policies have no kernel for.  Which
machine asks, what its policy decides and the rendering are worked out by
:class:`~pxetwist.bootconfig.BootConfigResolver`, the same as for HTTP.

Reading files: each transfer opens its file once and reads the blocks it is about to send with
``os.pread`` on that descriptor (:class:`FileSource`).  Nothing ever loads a whole file.  The
descriptor is what travels to a transfer worker process (:mod:`pxetwist.tftp.workers`), so
confinement is decided here, once, by the process that owns the policy.
"""

from __future__ import annotations

import errno
import os
import stat
from ipaddress import IPv4Address
from pathlib import Path
from typing import Final

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from pxetwist.bootconfig import BootConfig, BootConfigResolver, ConfigAsk, ConfigStatus
from pxetwist.bootnames import match_generated
from pxetwist.paths import PathRefused, normalize_request_path, resolve_path
from pxetwist.policy.render import LoaderKind, ServingContext
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import MacAddress, Stage
from pxetwist.tftp.packet import ErrorCode
from pxetwist.tftp.session import BlockSource, BytesSource

log = Logger()

READ_CHUNK: Final = 64 * 1024
"""Octets one ``pread`` fetches for small (lockstep) reads; at most one such buffer per file."""


class Refusal(Exception):
    """An RRQ answered with an ERROR: ``code``/``message`` go on the wire, ``reason`` to the log."""

    def __init__(self, code: ErrorCode, reason: str, message: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.message = code.default_message if message is None else message


class FileSource:
    """A :class:`BlockSource` over an open file descriptor, read with ``os.pread``.

    ``pread`` keeps no file position, so the same descriptor serves random-access window reads
    and retransmissions without seeking.  The size is fixed when the file is opened: a file that
    shrinks under a transfer yields a short read, which the session reports as an error instead
    of sending a short block the client would take for the end.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._chunk_start = 0
        self._chunk = b""

    @classmethod
    def open(cls, path: Path) -> FileSource:
        """Open a regular file read-only (not following a symlink swapped in since the check)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, info.st_size)

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int:
        """The open descriptor (-1 once closed): what a hand-off to a worker passes on."""
        return self._fd

    def read(self, offset: int, length: int) -> bytes:
        """``length`` octets at ``offset`` (fewer at the end of the file).

        Small reads (lockstep: one block per ACK) are served from a :data:`READ_CHUNK` buffer
        filled by one ``pread``, so a 512-octet transfer costs one system call per 128 blocks
        instead of one per block; larger reads (a window) go to the file directly.
        """
        # The hot path first: a lockstep block inside the buffer (which never extends past the
        # end of the file, so a read running past it falls through to be clipped below).
        position = offset - self._chunk_start
        if position >= 0 and position + length <= len(self._chunk):
            return self._chunk[position : position + length]
        length = min(length, self._size - offset)
        if length <= 0:
            return b""
        start = self._chunk_start
        if start <= offset and offset + length <= start + len(self._chunk):
            return self._chunk[offset - start : offset - start + length]
        if length < READ_CHUNK // 4:
            chunk = self._pread(offset, min(READ_CHUNK, self._size - offset))
            self._chunk_start, self._chunk = offset, chunk
            return chunk[:length]
        return self._pread(offset, length)

    def _pread(self, offset: int, length: int) -> bytes:
        if self._fd < 0:
            raise OSError(errno.EBADF, "source closed")
        data = os.pread(self._fd, length, offset)
        if len(data) == length or not data:
            return data
        parts = [data]  # a short read of a regular file: only at EOF, or interrupted
        got = len(data)
        while got < length:
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def close(self) -> None:
        self._chunk = b""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


@attrs.frozen
class Resolved:
    """What an RRQ will be served from, and who asked (for the transfer log)."""

    source: BlockSource
    path: str
    mac: MacAddress | None = None
    generated: LoaderKind | None = None


class FileResolver:
    """Turns a requested name into a :class:`Resolved` source, or fails with :class:`Refusal`.

    Boot-config names are worked out by :class:`~pxetwist.bootconfig.BootConfigResolver`; the
    root is the config's ``tftp.root`` in force.
    """

    def __init__(self, configs: BootConfigResolver) -> None:
        self.configs = configs

    @property
    def root(self) -> Path:
        return self.configs.context.config.tftp.root

    @property
    def sightings(self) -> SightingRegistry:
        return self.configs.context.sightings

    def resolve(
        self,
        filename: str,
        client: IPv4Address | None,
        context: ServingContext,
        interface: str | None = None,
    ) -> Deferred[Resolved]:
        """Resolve ``filename`` for the client at ``client``; the Deferred may fire at once."""
        try:
            relative = normalize_request_path(filename)
        except PathRefused as refused:
            return fail(Refusal(ErrorCode.ACCESS_VIOLATION, refused.reason))
        name = match_generated(relative, client)
        if name is None:
            return self._disk(relative, client, None)
        ask = ConfigAsk(
            kind=name.kind,
            path=relative,
            stage=Stage.TFTP,
            client=client,
            serving=context,
            interface=interface,
            mac=name.mac,
            absolute_paths=bool(name.directory),
        )

        def serve(config: BootConfig) -> Deferred[Resolved]:
            if config.status is ConfigStatus.RENDERED:
                assert config.text is not None
                source = BytesSource(config.text.encode())
                return succeed(Resolved(source, relative, config.mac, name.kind))
            if config.status is ConfigStatus.FAILED:
                assert config.error is not None
                log.error(
                    "tftp: cannot render {path} for {mac}: {error}",
                    path=relative,
                    mac=str(config.mac),
                    error=str(config.error),
                )
                return fail(Refusal(ErrorCode.NOT_DEFINED, str(config.error), "Config error"))
            return self._disk(relative, client, config.mac)

        return self.configs.resolve(ask).addCallback(serve)

    def _disk(
        self, relative: str, client: IPv4Address | None, mac: MacAddress | None
    ) -> Deferred[Resolved]:
        try:
            path = resolve_path(self.root, relative)
            source = FileSource.open(path)
        except PathRefused as refused:
            return fail(Refusal(ErrorCode.ACCESS_VIOLATION, refused.reason))
        except (FileNotFoundError, NotADirectoryError):
            return fail(Refusal(ErrorCode.FILE_NOT_FOUND, "no such file"))
        except PermissionError as error:
            return fail(Refusal(ErrorCode.ACCESS_VIOLATION, f"cannot open: {error.strerror}"))
        except OSError as error:
            if error.errno == errno.ELOOP:  # the final component became a symlink
                return fail(Refusal(ErrorCode.ACCESS_VIOLATION, "symlink swapped in"))
            return fail(Refusal(ErrorCode.NOT_DEFINED, f"cannot open: {error}", "Read error"))
        if mac is None and client is not None:
            mac = self.sightings.mac_at(client)
        return succeed(Resolved(source, relative, mac))


def close_source(source: BlockSource) -> None:
    """Close ``source`` if it holds a descriptor."""
    if isinstance(source, FileSource):
        source.close()


__all__ = ["READ_CHUNK", "FileResolver", "FileSource", "Refusal", "Resolved", "close_source"]

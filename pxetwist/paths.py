"""Confine requested file names to a served root (protocol-reference §6.6, §5 #16).

TFTP confines every RRQ with it, and boot-config rendering (:mod:`pxetwist.policy.render`) uses
it to tell whether a kernel path names a file under the TFTP or the HTTP root; so it belongs to
neither protocol package.

TFTP has no authentication, so the file name in an RRQ is attacker-controlled input.  Two steps:

1. :func:`normalize_request_path` cleans the name lexically: Windows separators become ``/``
   (WDS loaders ask for ``boot\\x64\\wdsmgfw.efi``), a leading ``/`` is dropped (PXE ROMs often ask
   for ``/pxelinux.0`` meaning the root), ``.`` and empty components vanish and ``..`` pops the
   previous component; a ``..`` with nothing left to pop would leave the root and is refused.  The
   result is also the key for generated files such as ``pxelinux.cfg/01-<mac>``.
2. :func:`resolve_path` joins it to the root and lets the OS resolve symlinks; whatever ends
   outside the root, is not a regular file, or does not exist is refused.

Percent signs are not special: TFTP names are not URLs, so ``%2e%2e`` is a file literally called
that.
"""

from __future__ import annotations

import errno
import os
import pathlib
import stat


class PathRefused(Exception):
    """A requested name that must not be served; ``reason`` is for the log, not for the client.

    The adapter answers ERROR 2 (access violation) or ERROR 1, as it prefers not to tell a
    scanner which names exist.
    """

    def __init__(self, requested: str, reason: str) -> None:
        super().__init__(f"{requested!r}: {reason}")
        self.requested = requested
        self.reason = reason


def _has_control_character(name: str) -> bool:
    return any(ord(character) < 0x20 or ord(character) == 0x7F for character in name)


def normalize_request_path(requested: str) -> str:
    """Return the cleaned relative path (``a/b/c``) a request names, or raise :class:`PathRefused`.

    Refused: NUL and other control characters (a NUL would truncate the name in any C library
    call, §6.6), names that are empty once cleaned, and ``..`` that would climb above the root.
    A ``..`` that stays inside (``bios/../images/vmlinuz``, as pxelinux builds from a path
    prefix) is resolved here, lexically, before any symlink is looked at.
    """
    if "\0" in requested:
        raise PathRefused(requested, "NUL in file name")
    if _has_control_character(requested):
        raise PathRefused(requested, "control character in file name")
    parts: list[str] = []
    for part in requested.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathRefused(requested, "'..' leaves the root")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise PathRefused(requested, "empty file name")
    return "/".join(parts)


def resolve_path(root: pathlib.Path, requested: str) -> pathlib.Path:
    """Map a requested name to a regular file under ``root``, following symlinks only inside it.

    Raises :class:`PathRefused` for names :func:`normalize_request_path` refuses, for anything
    that resolves (through symlinks) outside ``root``, for directories and for special files
    (a FIFO would block the reader, a device could be anything) and symlink loops; raises
    :class:`FileNotFoundError` when nothing is there.  Other ``OSError`` (permissions) propagate.

    The returned path is the resolved one, so the file opened is the file checked.
    """
    relative = normalize_request_path(requested)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, real]) != real_root:
        raise PathRefused(requested, "resolves outside the root")
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), requested) from None
    except OSError as failure:
        if failure.errno == errno.ELOOP:
            raise PathRefused(requested, "symlink loop") from None
        raise
    if stat.S_ISDIR(mode):
        raise PathRefused(requested, "is a directory")
    if not stat.S_ISREG(mode):
        raise PathRefused(requested, "not a regular file")
    return pathlib.Path(real)


__all__ = ["PathRefused", "normalize_request_path", "resolve_path"]

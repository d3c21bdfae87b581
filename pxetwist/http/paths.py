"""From URL path segments to a file below the served root, refusing anything that leaves it."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = ["PathRefused", "resolve_path"]

_OUTSIDE: Final = "outside the root"


class PathRefused(Exception):
    """A request path that must not be served: the HTTP status to answer and the reason to log.

    400 is for paths no honest client sends (``..``, encoded ``/``, NUL, backslash, non-UTF-8);
    404 for paths that are well formed but name nothing servable (missing, a directory, or a
    symlink out of the root), so that a refusal does not reveal what exists outside the root.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    @property
    def suspicious(self) -> bool:
        """Whether this looks like an attack rather than a typo; such refusals are warnings."""
        return self.code == 400 or self.reason == _OUTSIDE


def resolve_path(root: Path, segments: Sequence[bytes]) -> Path:
    """The real path of the file that URL path *segments* name below *root*, or :exc:`PathRefused`.

    *segments* are what twisted.web puts in ``request.postpath``: the path split on ``/`` and then
    percent-decoded one by one, so ``%2e%2e`` arrives as ``..`` and ``%2f`` as a ``/`` inside a
    segment. Both are refused here rather than trusted to the file system. Empty segments (``//``,
    common when boot scripts join ``${base}/`` and ``/file``) are skipped, except a trailing one,
    which names a directory. *root* must already be absolute and free of symlinks
    (``os.path.realpath``), because the final check compares against it.

    The result exists, is inside *root* once every symlink is resolved, and was a regular file
    when looked at; :func:`pxetwist.http.static.serve_file` checks the open file again, so a race
    leaves no gap.
    """
    if not segments or segments[-1] == b"":
        raise PathRefused(404, "directory")
    names: list[str] = []
    for segment in segments:
        if segment == b"":
            continue
        if segment in (b".", b".."):
            raise PathRefused(400, "dot segment")
        if b"/" in segment:
            raise PathRefused(400, "encoded slash")
        if b"\\" in segment:
            raise PathRefused(400, "backslash")
        if b"\x00" in segment:
            raise PathRefused(400, "NUL byte")
        try:
            names.append(segment.decode("utf-8"))
        except UnicodeDecodeError:
            raise PathRefused(400, "not UTF-8") from None
    if not names:
        raise PathRefused(404, "directory")
    try:
        real = root.joinpath(*names).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, ENOTDIR, EACCES, ELOOP (RuntimeError before 3.13)
        raise PathRefused(404, "not found") from None
    if not real.is_relative_to(root):
        raise PathRefused(404, _OUTSIDE)
    try:
        mode = real.stat().st_mode
    except OSError:
        raise PathRefused(404, "not found") from None
    if stat.S_ISDIR(mode):
        raise PathRefused(404, "directory")
    if not stat.S_ISREG(mode):
        # Opening a FIFO would block the reactor, a device could have side effects on open.
        raise PathRefused(404, "not a regular file")
    return real

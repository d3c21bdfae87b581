"""Room for a boot storm: the process's open-file limit, raised once at start.

Every TFTP transfer holds a socket and a file, every HTTP download a socket, a file and the
socket's duplicate for ``sendfile``: a rack powering on at once needs thousands of descriptors,
more than the usual soft limit of 1024.  The soft limit is raised towards what is wanted, up to
the hard limit (which only root or systemd's ``LimitNOFILE=`` can raise).
"""

from __future__ import annotations

import contextlib
import resource
from typing import Final

HEADROOM: Final = 512
"""Descriptors a process keeps besides its transfers: logs, listeners, the lease database."""


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted`` (up to the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


__all__ = ["HEADROOM", "raise_fd_limit"]

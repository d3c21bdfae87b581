"""The user the server runs as after ``twistd --uid/--gid`` drops root, and what that needs.

``twistd`` binds ports and calls ``privilegedStartService`` as root, then switches to the user
named by ``--uid/--gid``, then calls ``startService``.  Two things must happen in between, while
still root, or the server fails after the switch (issue 18):

* state in ``data_dir`` (leases, sessions, the overlay, the control socket) must belong to that
  user, or it cannot be opened or written afterwards (:func:`give_to`);
* processes the server starts later (TFTP transfer workers) must not need to read the
  interpreter again as that user, who may not be allowed to (a virtualenv under ``/root``): they
  are forked from a helper started as root, which drops to that user itself
  (:mod:`pxetwist.tftp.worker`).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any, Final

import attrs
from twisted.logger import Logger

log = Logger()


@attrs.frozen
class RunAs:
    """The user and group the server will run as."""

    uid: int
    gid: int

    def arguments(self) -> list[str]:
        """Command-line arguments that tell a helper process to become this user."""
        return ["--uid", str(self.uid), "--gid", str(self.gid)]


def from_twistd(options: Any) -> RunAs | None:
    """The ``--uid/--gid`` of the ``twistd`` command line ``options`` is a sub-command of, or
    None when there is none or this process is not root (then nothing is switched)."""
    parent = getattr(options, "parent", None)
    if parent is None or os.getuid() != 0:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    if uid is None:
        uid = os.getuid()
    if gid is None:  # as twistd does: the user's own group
        gid = pwd.getpwuid(uid).pw_gid
    return RunAs(int(uid), int(gid))


_SYSTEM_DIRECTORIES: Final = frozenset(
    Path(p) for p in ("/", "/etc", "/home", "/opt", "/root", "/run", "/srv", "/tmp", "/usr",
                      "/var", "/var/lib", "/var/tmp")
)  # fmt: skip


def give_to(path: Path, run_as: RunAs | None) -> None:
    """Make the directory ``path`` and what is directly in it (the state files: leases,
    sessions, the overlay, the control socket) belong to ``run_as``; symlinks not followed.

    Not recursive, and never a system directory: a ``data_dir`` set to ``/var/lib`` by
    mistake must not hand the whole of it to ``nobody``."""
    if run_as is None or not path.exists():
        return
    if path.resolve() in _SYSTEM_DIRECTORIES:
        log.warn(
            "data_dir {path} is a system directory: not giving it to uid {uid}; use a "
            "directory of pxetwist's own (e.g. /var/lib/pxetwist)",
            path=str(path),
            uid=run_as.uid,
        )
        return
    try:
        os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
        for entry in path.iterdir():
            os.chown(entry, run_as.uid, run_as.gid, follow_symlinks=False)
    except OSError as error:
        log.error(
            "cannot give {path} to uid {uid} gid {gid}: {error}",
            path=str(path),
            uid=run_as.uid,
            gid=run_as.gid,
            error=str(error),
        )


def become(run_as: RunAs) -> None:
    """Switch this process to ``run_as`` for good (supplementary groups dropped first)."""
    if os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(run_as.gid)
    os.setuid(run_as.uid)


__all__ = ["RunAs", "become", "from_twistd", "give_to"]

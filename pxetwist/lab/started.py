"""Waiting until a ``twistd`` server the lab spawned has finished starting, not just listening.

A test that counts a server's descriptors (to show that requests leave none behind) needs its
"before" count taken once start-up is over.  A listening port is not that: ``twistd`` binds its
ports in ``privilegedStartService``, before the reactor runs, and the reactor's own start-up
(which opens its SIGCHLD self-pipe) and the services' ``startService`` (a control socket, say)
follow later, seconds later on a loaded CI machine.  A count taken in between sees those three
descriptors appear during the test and blames the requests for them.

The reactor installs its SIGTERM handler when it starts running, after every service has
started (``twisted.internet.base.ReactorBase._reallyStartRunning``, the "during startup"
phase); ``twistd -n`` otherwise leaves SIGTERM alone.  That is visible from outside, in
``/proc/PID/status``, and is the point to wait for; the descriptor table is then given a moment
to settle, for what the same start-up step opens just after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from .netlab import LabError


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (``SigCgt``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def descriptors(pid: int) -> list[str]:
    """What each of ``pid``'s descriptors refers to, in descriptor order."""
    where = f"/proc/{pid}/fd"
    found = []
    for fd in sorted(os.listdir(where), key=int):
        try:
            found.append(f"{fd}: {os.readlink(os.path.join(where, fd))}")
        except OSError:  # closed while listed
            continue
    return found


def wait_started(
    pid: int,
    *,
    timeout: float = 30.0,
    settle: float = 0.3,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Return once ``pid`` handles SIGTERM and its descriptors stayed the same for ``settle`` s.

    Raises :class:`LabError` after ``timeout`` seconds, or at once if ``proc`` (the server's
    process) exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    seen: list[str] | None = None
    steady_since = 0.0
    while True:
        if proc is not None and proc.poll() is not None:
            raise LabError(f"process {pid} exited (rc {proc.returncode}) while starting")
        now = time.monotonic()
        try:
            if catches(pid, signal.SIGTERM):
                current = descriptors(pid)
                if current != seen:
                    seen, steady_since = current, now
                elif now - steady_since >= settle:
                    return
        except OSError as error:
            raise LabError(f"process {pid} is gone while starting: {error}") from error
        if now >= deadline:
            raise LabError(
                f"process {pid} had not finished starting after {timeout:g} s "
                f"(handles SIGTERM: {catches(pid, signal.SIGTERM)}; descriptors {seen})"
            )
        time.sleep(0.05)


__all__ = ["catches", "descriptors", "wait_started"]

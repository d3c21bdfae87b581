"""Which CPython a benchmark ran pxetwist on, for the line that heads its results.

pxetwist's cost is mostly the interpreter's, and CPython builds differ: Debian's ``python3``,
linked statically and optimised by Debian's build, ran the DHCP hot path in 15 % fewer
instructions than pyenv's build of 3.11 with its shared libpython (bench/README, "The
interpreter").  A figure without its interpreter cannot be compared with another.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def _libpython_mapped() -> bool | None:
    """Whether this process runs CPython from a shared libpython (``None``: cannot tell)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return "/libpython3" in maps


def describe_interpreter() -> str:
    """``CPython 3.11.2 /usr/bin/python3.11, static``: the version, the real binary the
    virtualenv was made from (the servers run on the same one) and how libpython is linked."""
    base = getattr(sys, "_base_executable", sys.executable)
    shared = _libpython_mapped()
    linking = {True: "shared libpython", False: "static", None: "linking unknown"}[shared]
    return (
        f"{platform.python_implementation()} {platform.python_version()} "
        f"{os.path.realpath(base)}, {linking}"
    )


__all__ = ["describe_interpreter"]

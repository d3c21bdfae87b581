"""``{server}``, ``{http_port}`` and ``{tftp_port}`` in operator-written boot values.

Boot table entries, kernel and initrd values, command lines and iPXE scripts may name the server
by these placeholders, filled in per interface: by DHCP in the boot file name it sends
(:mod:`pxetwist.dhcp.boot`) and by boot-config rendering (:mod:`pxetwist.policy.render`).  Both
use :func:`expand_placeholders`, so a value means the same wherever it is used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Final

_PLACEHOLDER: Final = re.compile(r"(?<!\$)\{(server|http_port|tftp_port)\}")


def expand_placeholders(
    text: str, *, server: str | IPv4Address, http_port: int, tftp_port: int
) -> str:
    """Fill ``{server}``, ``{http_port}`` and ``{tftp_port}``; leave everything else as it is.

    Unlike ``str.format`` this ignores other braces, so iPXE's ``${mac}`` and ``${net0/ip}``, a
    GRUB ``${root}`` or a literal ``{`` in a kernel command line pass through untouched, and so
    does ``${server}`` (an iPXE variable that happens to share the name).
    """
    if "{" not in text:  # most boot file names and paths name no placeholder
        return text
    values = {"server": str(server), "http_port": str(http_port), "tftp_port": str(tftp_port)}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


_NFS_PLACEHOLDER: Final = re.compile(r"(?<!\$)\{nfs([1-9][0-9]?)?\}")


def expand_nfs(text: str, locations: Sequence[str]) -> str:
    """Fill ``{nfs}`` (the first export; also ``{nfs1}``), ``{nfs2}``, ``{nfs3}``...

    ``locations`` are the machine's NFS exports as ``SERVER:/PSEUDO`` (see :mod:`pxetwist.nfs`),
    filled in by boot-config rendering.  A placeholder with no export behind it is a
    ``ValueError``: a command line that mounts nothing boots a machine that hangs in its initrd.
    iPXE's ``${...}`` is left alone.
    """

    def fill(match: re.Match[str]) -> str:
        index = int(match.group(1) or 1)
        if index > len(locations):
            count = len(locations)
            raise ValueError(
                f"{match.group(0)} names NFS export {index}, but the machine has {count} "
                f"export{'' if count == 1 else 's'}"
            )
        if not locations[index - 1]:
            raise ValueError(f"{match.group(0)}: that NFS export is refused (see the log)")
        return locations[index - 1]

    return _NFS_PLACEHOLDER.sub(fill, text)


__all__ = ["expand_nfs", "expand_placeholders"]

"""``{server}``, ``{http_port}`` and ``{tftp_port}`` in operator-written boot values.

Boot table entries, kernel and initrd values, command lines and iPXE scripts may name the server
by these placeholders, filled in per interface: by DHCP in the boot file name it sends
(:mod:`pxetwist.dhcp.boot`) and by boot-config rendering (:mod:`pxetwist.policy.render`).  Both
use :func:`expand_placeholders`, so a value means the same wherever it is used.
"""

from __future__ import annotations

import re
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
    values = {"server": str(server), "http_port": str(http_port), "tftp_port": str(tftp_port)}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


__all__ = ["expand_placeholders"]

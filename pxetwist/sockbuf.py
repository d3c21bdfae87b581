"""Receive buffers of the UDP listeners: as large as a storm needs.

A rack powering on sends its DHCP and TFTP requests within milliseconds; whatever the kernel
cannot queue while the reactor is busy is dropped before the server sees it.  Debian caps
``SO_RCVBUF`` at ``net.core.rmem_max`` (208 KiB, a few hundred small datagrams), so the
listeners ask with ``SO_RCVBUFFORCE``, which root may use past the cap (socket(7)).  Python's
``socket`` module does not export that option; its number comes from Linux's
``<asm-generic/socket.h>``, the only platform pxetwist serves on.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Final

from twisted.logger import Logger

log = Logger()

SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)

STORM_RECEIVE_BUFFER: Final = 4 << 20
"""Octets a listener asks to queue (the kernel doubles it for its own bookkeeping): about 6,500
DHCP requests or 3,000 full TFTP datagrams, a few seconds of a storm at full speed."""


def enlarge_receive_buffer(
    sock: socket.socket, size: int = STORM_RECEIVE_BUFFER, *, name: str = "udp"
) -> int:
    """Ask for a ``size``-octet receive buffer, past ``rmem_max`` if privileged; return the
    buffer the kernel granted, with a warning when it is smaller than asked."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:  # not privileged: the kernel caps SO_RCVBUF at rmem_max instead
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    if granted < size:  # Linux reports twice what was set: its bookkeeping is included
        log.warn(
            "{name}: receive buffer is {granted} octets of the {size} asked for; a burst of "
            "requests may be dropped by the kernel (run as root, or raise net.core.rmem_max)",
            name=name,
            granted=granted,
            size=size,
        )
    return granted


__all__ = ["STORM_RECEIVE_BUFFER", "enlarge_receive_buffer"]

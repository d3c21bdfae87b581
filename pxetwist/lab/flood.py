"""Sending a bounded flood of datagrams: what the DHCP and TFTP fuzzers share.

A flood must stop at its count and its deadline whatever the server does, keep to an asked rate,
and never spin forever on a full socket buffer (the network rule: every load loop bounded).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator

#: How often (in datagrams) the clock is read: often enough to keep the rate, cheap per datagram.
_CLOCK_EVERY = 64


def paced(datagrams: Iterable[bytes], rate: float, deadline: float) -> Iterator[bytes]:
    """``datagrams`` at most ``rate`` a second (0: no cap), until the monotonic ``deadline``."""
    began = time.monotonic()
    for sent, datagram in enumerate(datagrams):
        if sent % _CLOCK_EVERY == 0:
            now = time.monotonic()
            if now > deadline:
                return
            if rate > 0:
                ahead = began + sent / rate - now
                if ahead > 0:
                    time.sleep(ahead)
        yield datagram


def send_bounded(sock: socket.socket, datagram: bytes, address: tuple[str, int]) -> None:
    """Send on a non-blocking socket; a full buffer is waited out a little (at most ~0.1 s)."""
    for _ in range(200):
        try:
            sock.sendto(datagram, address)
            return
        except BlockingIOError:
            time.sleep(0.0005)
        except OSError:
            return

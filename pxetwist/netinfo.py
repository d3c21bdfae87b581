"""What the host's network interfaces are: names, IPv4 addresses and MTUs (Linux ioctls)."""

from __future__ import annotations

import fcntl
import socket
import struct
from ipaddress import AddressValueError, IPv4Address, IPv4Interface

import attrs

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_SIOCGIFMTU = 0x8921


@attrs.frozen
class InterfaceInfo:
    name: str
    index: int
    address: IPv4Interface | None
    mtu: int

    @property
    def ip(self) -> IPv4Address | None:
        return self.address.ip if self.address is not None else None


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name.encode()[:15]))


def interface_info(name: str) -> InterfaceInfo:
    """Look one interface up; raise ``OSError`` if it does not exist."""
    index = socket.if_nametoindex(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        mtu = struct.unpack_from("i", _ioctl(sock, _SIOCGIFMTU, name), 16)[0]
        try:
            address = socket.inet_ntoa(_ioctl(sock, _SIOCGIFADDR, name)[20:24])
            netmask = socket.inet_ntoa(_ioctl(sock, _SIOCGIFNETMASK, name)[20:24])
            interface: IPv4Interface | None = IPv4Interface(f"{address}/{netmask}")
        except OSError:
            interface = None
    return InterfaceInfo(name=name, index=index, address=interface, mtu=mtu)


def ipv4_interfaces() -> list[InterfaceInfo]:
    """Every interface with an IPv4 address except loopback: the default set to serve."""
    found = []
    for _, name in socket.if_nameindex():
        try:
            info = interface_info(name)
        except OSError:
            continue
        if info.address is not None and not info.address.ip.is_loopback:
            found.append(info)
    return found


def ipv4_host(address: object) -> IPv4Address | None:
    """The IPv4 address of a Twisted address (``IPv4Address`` from ``getPeer``, ``getHost``,
    ``getClientAddress``), or None for anything else (a UNIX socket, a test double, IPv6)."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    try:
        return IPv4Address(host)
    except AddressValueError:
        return None

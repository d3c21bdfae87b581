"""The boot part of a DHCP reply: turn a policy decision into the fields each firmware reads.

Rules from protocol-reference §2.2-§2.3 (PXE shapes A and B, proxyDHCP, port 4011), §3.1 (UEFI
HTTP Boot), §4 (iPXE) and §5 (quirks).  Pure: no I/O, no Twisted.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import attrs

from pxetwist.dhcp.exchange import address_text
from pxetwist.dhcp.options import OptionCode, encode_string
from pxetwist.dhcp.packet import DhcpPacket
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.placeholders import expand_placeholders
from pxetwist.policy.values import Firmware

#: Option 43 telling a PXE client to boot the file in this packet, no menu, no discovery
#: (PXE_DISCOVERY_CONTROL = 8, then PXE_END).
PXE_BOOT_THIS_FILE = bytes((6, 1, 8, 255))

_MAX_FILE = 127  # the 128-byte `file` field, NUL-terminated

#: Clients that get no 60 = PXEClient and no 43: plain DHCP clients, and U-Boot, which names
#: itself in 60 (U-Boot.armv8) and reads neither.
_NO_PXE_OPTIONS = frozenset({Firmware.PLAIN, Firmware.UBOOT})


@attrs.frozen
class BootFields:
    """What a reply carries for booting: header fields and options, in priority order."""

    siaddr: IPv4Address
    sname: bytes
    file: bytes
    options: tuple[tuple[int, bytes], ...]

    @property
    def option_codes(self) -> frozenset[int]:
        return frozenset(code for code, _ in self.options)


def program_for(decision: BootDecision) -> str | None:
    """The boot file name to send: the quirk override wins over the policy's choice."""
    return decision.quirks.boot_file or decision.program


def boot_fields(
    request: DhcpPacket,
    firmware: Firmware,
    decision: BootDecision,
    *,
    server: IPv4Address,
    http_port: int,
    tftp_port: int,
    discovery_control: bool = True,
) -> BootFields | None:
    """The boot fields for a reply to ``request``, or ``None`` if there is nothing to boot.

    A PXE client gets shape B (§2.2): ``PXEClient`` and, with ``discovery_control``, option
    ``43 = 06 01 08 ff`` (boot the file in this packet).  The port-4011 ACK leaves 43 out; it
    may carry the 43.71 echo instead.  ``file`` and option 67 are byte-identical, 67 and 66
    NUL-terminated (§5 quirk 9), ``siaddr`` always set (§5 quirk 1).
    """
    raw = program_for(decision)
    if raw is None:
        return None
    server_text = address_text(server)
    program = expand_placeholders(raw, server=server_text, http_port=http_port, tftp_port=tftp_port)
    next_server = decision.next_server or server
    next_server_text = server_text if next_server is server else address_text(next_server)
    name = program.encode()
    file = name if len(name) <= _MAX_FILE else b""  # too long for `file`: option 67 only
    options: list[tuple[int, bytes]] = []
    omit = decision.quirks.omit_pxe_options
    if firmware is Firmware.HTTP_BOOT:
        options.append((OptionCode.VENDOR_CLASS, b"HTTPClient"))
    elif firmware not in _NO_PXE_OPTIONS and not omit and _said_pxeclient(request):
        options.append((OptionCode.VENDOR_CLASS, b"PXEClient"))
        if discovery_control:
            options.append((OptionCode.VENDOR_SPECIFIC, PXE_BOOT_THIS_FILE))
    uuid = request.get(OptionCode.CLIENT_UUID)
    if uuid is not None:
        options.append((OptionCode.CLIENT_UUID, uuid))
    options.append((OptionCode.TFTP_SERVER, encode_string(next_server_text, nul_terminate=True)))
    options.append((OptionCode.BOOTFILE, encode_string(program, nul_terminate=True)))
    return BootFields(
        siaddr=next_server,
        sname=next_server_text.encode(),
        file=file,
        options=tuple(options),
    )


def _said_pxeclient(request: DhcpPacket) -> bool:
    vendor = request.vendor_class or b""
    return vendor.startswith(b"PXEClient") or request.client_arches != ()


def boot_item_echo(request: DhcpPacket) -> tuple[int, bytes] | None:
    """Option 43 with the request's PXE_BOOT_ITEM (43.71) echoed, for the port-4011 ACK."""
    item = request.pxe_boot_item
    if item is None:
        return None
    kind, layer = item
    value = bytes((71, 4)) + kind.to_bytes(2, "big") + layer.to_bytes(2, "big") + b"\xff"
    return (OptionCode.VENDOR_SPECIFIC, value)

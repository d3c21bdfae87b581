"""Which step of a boot an event shows: pure functions from a BootEvent to a :class:`BootStage`.

DHCP events are placed by the client's message and the kind of client (a PXE ROM, iPXE, UEFI
HTTP Boot, or an ordinary DHCP client: the booted OS).  File events (a TFTP transfer, an HTTP
response) are placed by the file: the machine's NBP, kernel and initrds as its boot decision
named them (:class:`BootFiles`), else the generated config names (``*.ipxe``, ``grub.cfg*``,
``pxelinux.cfg/``), else the usual names of kernels, initrds and boot programs.

The facts are read from the event's ``details`` with the keys the protocols use (``firmware``,
``reply``, ``decision``, ``file``/``path``, ``kind``, ``status``, ``method``, ``complete``);
everything tolerates a key being absent.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Final
from urllib.parse import unquote, urlsplit

import attrs

from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import BootAction, Firmware
from pxetwist.sessions.model import BootStage

_PLACEHOLDER = re.compile(r"\$?\{[^}]*\}")
_KERNEL_NAME = re.compile(r"^(vmlinu[xz].*|linux|bzimage|zimage|image|kernel.*|.*\.krn)$", re.I)
_INITRD_NAME = re.compile(r"^(initrd|initramfs).*|.*\.cpio(\.\w+)?$", re.I)
_NBP_NAME = re.compile(r"\.(efi|kpxe|kkpxe|kkkpxe|pxe|0|com|n12|lkrn|bin)$", re.I)
_SCRIPT_NAME = re.compile(r"(\.ipxe$|(^|/)grub\.cfg|(^|/)pxelinux\.cfg/|\.cfg$|\.conf$)", re.I)

#: ``details["kind"]`` values a protocol may set to say what a file is.
_KINDS: Final[Mapping[str, BootStage]] = {
    "nbp": BootStage.NBP,
    "program": BootStage.NBP,
    "script": BootStage.SCRIPT,
    "config": BootStage.SCRIPT,
    "kernel": BootStage.KERNEL,
    "initrd": BootStage.INITRD,
}


def normalize(name: str) -> str:
    """A file name or URL as a root-relative path, for comparing what was asked and what was told.

    ``http://{server}:{http_port}/debian/linux?x=1`` and ``/debian/linux`` both give
    ``debian/linux``; ``${...}`` and ``{...}`` placeholders are dropped with their segment.
    """
    text = name.strip()
    text = urlsplit(text).path if "://" in text else text.split("?", 1)[0]
    text = unquote(text).replace("\\", "/")
    if _PLACEHOLDER.search(text):
        text = "/".join(part for part in text.split("/") if not _PLACEHOLDER.search(part))
    return text.strip("/")


def same_file(asked: str, told: str) -> bool:
    """Is ``asked`` (from a request) the file ``told`` (from a decision)?  Both normalized."""
    if not asked or not told:
        return False
    return asked == told or asked.endswith("/" + told) or told.endswith("/" + asked)


@attrs.frozen
class BootFiles:
    """What one machine was told to fetch, as normalized paths (from its boot decision)."""

    program: str | None = None
    kernel: str | None = None
    initrds: tuple[str, ...] = ()

    @classmethod
    def from_decision(cls, decision: BootDecision) -> BootFiles:
        return cls(
            program=normalize(decision.program) if decision.program else None,
            kernel=normalize(decision.kernel) if decision.kernel else None,
            initrds=tuple(normalize(value) for value in decision.initrds),
        )

    def with_program(self, program: str | None) -> BootFiles:
        if not program:
            return self
        return attrs.evolve(self, program=normalize(program))


def file_stage(
    name: str, files: BootFiles | None = None, kind: object = None, *, generated: object = False
) -> BootStage:
    """The stage a request for ``name`` shows: the machine's own files first, then names.

    ``generated`` (the protocol rendered the file for this machine: an iPXE script, a GRUB or
    PXELINUX config) makes it the loader's config whatever it is called.
    """
    if isinstance(kind, str) and kind in _KINDS:
        return _KINDS[kind]
    if generated is True:
        return BootStage.SCRIPT
    path = normalize(name)
    if files is not None:
        if files.kernel is not None and same_file(path, files.kernel):
            return BootStage.KERNEL
        if any(same_file(path, initrd) for initrd in files.initrds):
            return BootStage.INITRD
        if files.program is not None and same_file(path, files.program):
            return BootStage.NBP
    if _SCRIPT_NAME.search(path):
        return BootStage.SCRIPT
    base = PurePosixPath(path).name
    if _INITRD_NAME.match(base):
        return BootStage.INITRD
    if _KERNEL_NAME.match(base):
        return BootStage.KERNEL
    if _NBP_NAME.search(base):
        return BootStage.NBP
    return BootStage.FILE


def firmware_of(details: Mapping[str, object]) -> str | None:
    """``pxe``, ``ipxe``, ``http-boot`` or ``plain`` (an ordinary client), if the event says."""
    value = details.get("firmware")
    if isinstance(value, Firmware):
        return value.value
    if isinstance(value, str) and value:
        return value
    request = details.get("request")
    if isinstance(request, BootRequest):
        return request.firmware.value
    pxe = details.get("pxe")
    if isinstance(pxe, bool):
        return Firmware.PXE_ROM.value if pxe else Firmware.PLAIN.value
    return None


def decision_of(details: Mapping[str, object]) -> BootDecision | None:
    decision = details.get("decision")
    return decision if isinstance(decision, BootDecision) else None


def reply_of(details: Mapping[str, object]) -> str | None:
    """The reply the server sent (``OFFER``, ``ACK``, ``NAK``...), upper case, if any."""
    reply = details.get("reply")
    if reply is None:
        return None
    if isinstance(reply, enum.Enum):
        return reply.name.upper()
    return str(reply).upper() or None


def event_file_stage(event: BootEvent, files: BootFiles | None) -> BootStage:
    """The stage of a TFTP or HTTP event, from its file and what the protocol said about it."""
    details = event.details
    return file_stage(
        file_of(event) or "", files, details.get("kind"), generated=details.get("generated")
    )


def file_of(event: BootEvent) -> str | None:
    for key in ("file", "path", "filename"):
        value = event.details.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, bytes) and value:
            return value.decode("utf-8", "replace")
    return None


_DHCP_STAGES: Final = frozenset(
    {
        EventStage.DISCOVER,
        EventStage.REQUEST,
        EventStage.DECLINE,
        EventStage.RELEASE,
        EventStage.INFORM,
        EventStage.BOOT_SERVER,
    }
)


def is_dhcp(event: BootEvent) -> bool:
    return event.protocol is EventProtocol.DHCP and event.stage in _DHCP_STAGES


def is_plain(firmware: str | None) -> bool:
    return firmware == Firmware.PLAIN.value


def dhcp_stage(event: BootEvent, firmware: str | None) -> BootStage:
    """A PXE-side DHCP event's stage: what the client asked and whether it was answered."""
    answered = event.outcome is Outcome.OK
    if event.stage is EventStage.BOOT_SERVER:
        return BootStage.BOOT_SERVER
    if firmware == Firmware.IPXE.value and event.stage in (EventStage.DISCOVER, EventStage.REQUEST):
        return BootStage.IPXE_DHCP
    if event.stage is EventStage.DISCOVER:
        return BootStage.DHCP_OFFER if answered else BootStage.DHCP_DISCOVER
    if event.stage is EventStage.REQUEST:
        return (
            BootStage.DHCP_ACK
            if answered and reply_of(event.details) != "NAK"
            else (BootStage.DHCP_REQUEST)
        )
    return BootStage.OTHER


def served_completely(event: BootEvent) -> bool:
    """Did this file event hand the client the whole file (not a HEAD, a range, or an abort)?"""
    if event.outcome is not Outcome.OK:
        return False
    details = event.details
    if details.get("complete") is False:
        return False
    if event.protocol is EventProtocol.HTTP:
        method = details.get("method")
        if isinstance(method, str) and method.upper() != "GET":
            return False
        status = details.get("status")
        if status is not None and status != 200:
            return False
        if details.get("range"):
            return False
    return event.protocol in (EventProtocol.HTTP, EventProtocol.TFTP)


def boots_network(decision: BootDecision) -> bool:
    """Does this decision network-boot the machine (not local, not ignore)?"""
    return decision.action is BootAction.BOOT

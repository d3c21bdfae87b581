"""What a policy answers: the :class:`BootDecision` every front end turns into its reply."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from ipaddress import IPv4Address

import attrs

from pxetwist.policy.values import BootAction


def _copy(files: Mapping[str, str]) -> Mapping[str, str]:
    return dict(files)


@attrs.frozen
class Quirks:
    """Per-machine workarounds for firmware that breaks on correct replies (reference §5)."""

    reply_delay: float = (
        0.0  # seconds; some ROMs drop instant replies (RPi 3, dnsmasq's reply-delay)
    )
    force_broadcast: bool = False  # answer broadcast although the client asked for unicast
    omit_pxe_options: bool = False  # leave out options 60 and 43 (Shape A replies, §2.2)
    boot_file: str | None = None  # send this boot-file name whatever the policy chose


class NfsAccess(enum.Enum):
    """What a machine may do on one of its NFS exports."""

    RO = "ro"  # every write refused
    RW = "rw"  # the machine's root writes as root (no root squash: a diskless root needs it)


@attrs.frozen
class NfsExport:
    """A directory under ``nfs.root`` exported to a machine while it holds an address.

    ``path`` is relative to ``nfs.root`` and may contain ``{mac}`` (dashed) and ``{name}``;
    pxetwist expands them per machine, confines the result under the root, makes it when
    ``create`` is set, and grants it to the machine's address only (see :mod:`pxetwist.nfs`).
    """

    path: str
    access: NfsAccess = NfsAccess.RO
    create: bool = False


@attrs.frozen
class BootDecision:
    """A policy's answer for one machine.

    Exactly one shape is used: ``program`` (an NBP path under the TFTP root, or a URL), an iPXE
    ``script``, or ``kernel``/``initrds``/``cmdline`` from which pxetwist renders the boot
    program's configuration (pxelinux, GRUB, iPXE).  ``files`` lets a policy hand over finished
    per-machine files by path.  ``nfs`` lists the machine's NFS exports, in the order
    ``{nfs}``, ``{nfs2}``... name them in command lines.  ``reason`` is for people: logs and
    ``pxetwist explain`` show it.
    """

    action: BootAction = BootAction.BOOT
    program: str | None = None
    next_server: IPv4Address | None = None
    script: str | None = None
    kernel: str | None = None
    initrds: tuple[str, ...] = ()
    cmdline: str | None = None
    files: Mapping[str, str] = attrs.field(factory=dict, converter=_copy)
    quirks: Quirks = Quirks()
    nfs: tuple[NfsExport, ...] = ()
    name: str | None = None  # the machine's name, when the policy knows it
    group: str | None = None
    reason: str = ""
    policy: str | None = None  # filled in by the chain: which policy decided
    # Network-boot once: after the server has seen this machine's boot go through (kernel and
    # initrd served completely, or the booted OS's call-back) it gets the local-boot answer
    # until ``pxetwist machines reset-boot``; see :mod:`pxetwist.sessions.bootonce`.
    boot_once: bool = False

    @classmethod
    def ignore(cls, reason: str) -> BootDecision:
        return cls(action=BootAction.IGNORE, reason=reason)

    @classmethod
    def local(cls, reason: str) -> BootDecision:
        return cls(action=BootAction.LOCAL, reason=reason)

"""Turn a machine's profile into a decision: the logic the built-in policies share.

Which boot program a client gets depends on what kind of client it is (protocol-reference §2.4
and §4): an iPXE client gets the ``ipxe`` entry (a script URL ends the chainload loop), a UEFI
HTTP Boot client an ``http-...`` URL, and a PXE ROM the NBP for its architecture.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.logger import Logger

from pxetwist.config.model import Config, Profile
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import (
    UBOOT_BOOT_KEYS,
    Arch,
    BootAction,
    Firmware,
    Isa,
    Stage,
    boot_key_isa,
)

log = Logger()

#: Stages whose answer is the boot program itself: without one there is nothing to say.
_BOOT_STAGES = frozenset({Stage.DHCP, Stage.PROXY, Stage.PROXY_4011})


def boot_key_for(request: BootRequest, arch_default: str | None) -> tuple[str | None, str]:
    """The ``boot`` table key for this client, and why (for the decision's reason).

    ``arch_default`` stands in for a client whose architecture has no key of its own, but only
    within the client's processor family (:class:`~pxetwist.policy.values.Isa`): an ARM or
    U-Boot client is never sent an x86 program, whatever the default says.  A client whose
    family is unknown (a new option 93 value) still gets the default, as before.
    """
    firmware = request.firmware
    if firmware is Firmware.IPXE:
        return "ipxe", "iPXE client"
    arch = request.arch
    isa = request.isa
    if firmware is Firmware.UBOOT:
        described = _describe(request, arch, isa)
        key = UBOOT_BOOT_KEYS.get(isa) if isa is not None else None
        if arch is not None and arch.is_http_boot and arch.boot_key is not None:
            key = arch.boot_key
        if key is not None:
            return key, described
    elif arch is not None and arch.boot_key is not None:
        return arch.boot_key, f"arch {int(arch)} ({arch.name})"
    else:
        described = _describe(request, arch, isa)
    if arch is not None and not arch.is_known and isa is None:
        log.warn(
            "unknown client architecture {arch} from {mac}; using the default {default}",
            arch=int(arch),
            mac=str(request.mac),
            default=arch_default,
            stage=request.stage.value,
        )
    default = arch_default
    if default is None:
        return None, f"{described}: no boot key of its own and policy.arch_default is ignore"
    if firmware is Firmware.HTTP_BOOT and not default.startswith("http-"):
        default = "http-efi-x86_64"
    program_isa = boot_key_isa(default)
    if isa is not None and program_isa is not None and program_isa is not isa:
        why = (
            f"{described}: no boot key of its own, and the default boot[{default}] is for "
            f"{program_isa.value}, not offered to an {isa.value} client"
        )
        log.warn("no boot program for {mac}: {why}", mac=str(request.mac), why=why, isa=isa.value)
        return None, why
    return default, f"{described}, configured default"


def _describe(request: BootRequest, arch: Arch | None, isa: Isa | None) -> str:
    parts = [f"arch {int(arch)} ({arch.name})" if arch is not None else "no arch"]
    if request.firmware is Firmware.UBOOT:
        vendor = (request.vendor_class or b"U-Boot").decode("ascii", "replace")
        parts.insert(0, vendor)
    if isa is not None:
        parts.append(isa.value)
    return ", ".join(parts)


def decide_from_profile(
    request: BootRequest,
    profile: Profile,
    config: Config,
    *,
    reason: str,
    name: str | None = None,
    group: str | None = None,
) -> BootDecision:
    """A decision from a resolved profile (defaults, group and machine already merged)."""
    quirks = profile.quirks if profile.quirks is not None else config.dhcp.quirks
    if profile.action is BootAction.IGNORE:
        return BootDecision.ignore(f"{reason}: action ignore")
    if profile.action is BootAction.LOCAL:
        return BootDecision(
            action=BootAction.LOCAL,
            program=_program(request, {**config.boot_table, **profile.boot}, config)[0],
            quirks=quirks,
            name=name,
            group=group,
            reason=f"{reason}: action local",
        )
    program, why = _program(request, {**config.boot_table, **profile.boot}, config)
    if (
        program is None
        and config.policy.arch_default is None
        and request.firmware is not Firmware.PLAIN
        and request.stage in _BOOT_STAGES
    ):
        # `arch_default: ignore` asks for no answer at all.  Otherwise a client with no
        # program still gets its address (authoritative mode) and its rendered configs, which
        # U-Boot's `dhcp; pxe get` needs; proxy mode has nothing to say to it and stays silent.
        return BootDecision.ignore(f"{reason}; {why}")
    return BootDecision(
        program=program,
        kernel=profile.kernel,
        initrds=profile.initrds or (),
        cmdline=profile.cmdline,
        quirks=quirks,
        nfs=profile.nfs or (),
        name=name,
        group=group,
        reason=f"{reason}; {why}",
        boot_once=bool(profile.boot_once),
    )


def _program(
    request: BootRequest, table: Mapping[str, str], config: Config
) -> tuple[str | None, str]:
    if request.firmware is Firmware.PLAIN:
        return None, "not a network-boot client"
    key, why = boot_key_for(request, config.policy.arch_default)
    if key is None:
        return None, f"{why}: nothing to boot"
    program = table.get(key)
    if program is None:
        return None, f"{why}: no boot[{key}] configured"
    if request.firmware is Firmware.HTTP_BOOT and "://" not in program:
        program = "http://{server}:{http_port}/" + program.lstrip("/")
    return program, f"{why} -> boot[{key}] = {program}"

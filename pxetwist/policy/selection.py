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
from pxetwist.policy.values import BootAction, Firmware, Stage

log = Logger()

#: Stages whose answer is the boot program itself: without one there is nothing to say.
_BOOT_STAGES = frozenset({Stage.DHCP, Stage.PROXY, Stage.PROXY_4011})


def boot_key_for(request: BootRequest, arch_default: str | None) -> tuple[str | None, str]:
    """The ``boot`` table key for this client, and why (for the decision's reason)."""
    firmware = request.firmware
    if firmware is Firmware.IPXE:
        return "ipxe", "iPXE client"
    arch = request.arch
    if arch is not None and arch.boot_key is not None:
        return arch.boot_key, f"arch {int(arch)} ({arch.name})"
    if arch is not None and not arch.is_known:
        log.warn(
            "unknown client architecture {arch} from {mac}; using the default {default}",
            arch=int(arch),
            mac=str(request.mac),
            default=arch_default,
            stage=request.stage.value,
        )
    default = arch_default
    if default is not None and firmware is Firmware.HTTP_BOOT and not default.startswith("http-"):
        default = "http-efi-x86_64"
    described = f"arch {int(arch)}" if arch is not None else "no arch"
    return default, f"{described}, configured default"


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
    if program is None and request.firmware is not Firmware.PLAIN and request.stage in _BOOT_STAGES:
        return BootDecision.ignore(f"{reason}; {why}")
    return BootDecision(
        program=program,
        kernel=profile.kernel,
        initrds=profile.initrds or (),
        cmdline=profile.cmdline,
        quirks=quirks,
        name=name,
        group=group,
        reason=f"{reason}; {why}",
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

"""Can the asking client fetch its kernel and initrd?  For ``explain`` and ``--check-config``.

Boot loaders fetch differently (see :mod:`pxetwist.policy.render`): iPXE and GRUB take HTTP and
TFTP from anywhere, PXELINUX takes paths and (``lpxelinux.0``) URLs, U-Boot's ``pxe`` command only
TFTP paths from its server.  A value one of them cannot fetch is rendered for the others but
fails that client at boot; this module finds such values before a machine powers on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath

import attrs

from pxetwist.config.model import Config, Profile
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.render import (
    ServingContext,
    config_directory,
    grub_location,
    ipxe_location,
    pxelinux_location,
    serving_context,
    uboot_location,
)
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import BootAction, Firmware

_Locate = Callable[[str, ServingContext], str]


def _pxelinux(value: str, context: ServingContext) -> str:
    return pxelinux_location(value, context)


#: The loaders each kind of client may run, with how each fetches a value.  A PXE ROM or HTTP
#: Boot client runs whatever program it was given (GRUB, PXELINUX, iPXE); U-Boot runs itself.
_LOADERS: dict[Firmware, tuple[tuple[str, _Locate], ...]] = {
    Firmware.UBOOT: (("u-boot", uboot_location),),
    Firmware.IPXE: (("ipxe", ipxe_location),),
    Firmware.PXE_ROM: (("grub", grub_location), ("pxelinux", _pxelinux), ("ipxe", ipxe_location)),
    Firmware.HTTP_BOOT: (("grub", grub_location), ("ipxe", ipxe_location)),
}


@attrs.frozen
class Fetch:
    """How one loader would fetch one value; ``problem`` is set when it cannot."""

    loader: str
    what: str  # "kernel", "initrd"
    value: str
    location: str | None
    problem: str | None = None


def _values(kernel: str | None, initrds: Sequence[str]) -> Iterator[tuple[str, str]]:
    if kernel is not None:
        yield "kernel", kernel
    for initrd in initrds:
        yield "initrd", initrd


def _fetch(loader: str, locate: _Locate, what: str, value: str, context: ServingContext) -> Fetch:
    try:
        return Fetch(loader, what, value, locate(value, context))
    except ValueError as error:
        return Fetch(loader, what, value, None, str(error))


def client_fetches(
    decision: BootDecision | None, request: BootRequest, context: ServingContext
) -> list[Fetch]:
    """How this client would fetch the decision's kernel and initrds, loader by loader."""
    if decision is None or decision.action is not BootAction.BOOT or decision.kernel is None:
        return []
    fetches = []
    for loader, locate in _LOADERS.get(request.firmware, ()):
        if loader == "u-boot":
            locate = functools.partial(
                uboot_location, directory=_uboot_directory(decision, request)
            )
            if len(decision.initrds) > 1:
                fetches.append(
                    Fetch(loader, "initrd", " ".join(decision.initrds), None, "one initrd only")
                )
        for what, value in _values(decision.kernel, decision.initrds):
            fetches.append(_fetch(loader, locate, what, value, context))
    return fetches


def _uboot_directory(decision: BootDecision, request: BootRequest) -> str:
    """U-Boot's path prefix: where its config was asked from, else its boot file's directory."""
    if request.path:
        return config_directory(request.path)
    program = decision.program
    if program is None or "://" in program:
        return ""
    parent = str(PurePosixPath(program.replace("\\", "/").lstrip("/")).parent)
    return "" if parent == "." else parent


def _profiles(config: Config) -> Iterator[tuple[str, Profile]]:
    yield "defaults", config.defaults
    for name, profile in config.groups.items():
        yield f"groups.{name}", profile
    for index, machine in enumerate(config.machines):
        label = f" ({machine.name})" if machine.name else ""
        yield f"machines[{index}]{label}", machine.profile


def unreachable_values(config: Config, servers: Sequence[str]) -> list[str]:
    """One line per kernel or initrd value that some kind of client cannot fetch.

    Each value is checked where the config writes it (``defaults``, a group, a machine), with
    every address pxetwist serves as "us"; a value is reported when no address makes it
    reachable.  The clients checked are those whose fetching is limited: U-Boot (TFTP paths).
    """
    lines = []
    candidates = list(dict.fromkeys(servers)) or ["{server}"]
    for where, profile in _profiles(config):
        for what, value in _values(profile.kernel, profile.initrds or ()):
            problems = []
            for server in candidates:
                try:
                    uboot_location(value, serving_context(config, server))
                    break
                except ValueError as error:
                    problems.append(str(error))
            else:
                lines.append(f"{where}: {what} unreachable for U-Boot clients: {problems[0]}")
        if profile.initrds is not None and len(profile.initrds) > 1:
            lines.append(f"{where}: U-Boot clients load one initrd, not {len(profile.initrds)}")
    return lines


__all__ = ["Fetch", "client_fetches", "serving_context", "unreachable_values"]

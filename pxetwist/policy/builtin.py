"""The two policies every config gets unless it says otherwise: ``static`` and ``arch``."""

from __future__ import annotations

from typing import Any

import attrs
from zope.interface import implementer, provider

from pxetwist.config.model import Config, Machine
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.interfaces import IBootPolicy, IBootPolicyFactory
from pxetwist.policy.overlay import MachineOverlay
from pxetwist.policy.request import BootRequest
from pxetwist.policy.selection import decide_from_profile
from pxetwist.policy.values import Firmware, Stage


@implementer(IBootPolicy)
@attrs.frozen
class StaticPolicy:
    """Machines the config lists, found by MAC and then by SMBIOS UUID (option 97).

    Machines defined through the operator API (:class:`MachineOverlay`) are asked first, so
    they take effect at once and replace a config entry with the same MAC.  A machine's settings
    fall back to its group's and then to ``defaults``; a machine the config does not list gets
    no opinion, so the next policy in the chain decides.
    """

    config: Config
    by_mac: dict[Any, Machine] = attrs.field(init=False)
    by_uuid: dict[Any, Machine] = attrs.field(init=False)
    overlay: MachineOverlay = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "overlay", MachineOverlay.for_config(self.config))
        object.__setattr__(self, "by_mac", {m.mac: m for m in self.config.machines})
        object.__setattr__(
            self, "by_uuid", {m.uuid: m for m in self.config.machines if m.uuid is not None}
        )

    def decide(self, request: BootRequest) -> BootDecision | None:
        overlay = self.overlay
        machine = overlay.get(request.mac) if overlay else None
        if machine is None:
            machine = self.by_mac.get(request.mac)
        how = "MAC"
        if machine is None and request.uuid is not None:
            machine = (overlay.get_by_uuid(request.uuid) if overlay else None) or self.by_uuid.get(
                request.uuid
            )
            how = "UUID"
        if machine is None:
            return None
        label = machine.name or str(machine.mac)
        reason = f"machine {label} (by {how}" + (
            f", group {machine.group})" if machine.group else ")"
        )
        return decide_from_profile(
            request,
            self.config.machine_profile(machine),
            self.config,
            reason=reason,
            name=machine.name,
            group=machine.group,
        )


@implementer(IBootPolicy)
@attrs.frozen
class ArchPolicy:
    """Any network-boot client: the ``boot`` table entry for its firmware and architecture.

    It is the catch-all at the end of the default chain.  Ordinary DHCP clients (no PXE, iPXE or
    HTTP Boot markers) get no opinion: there is nothing to boot them with.  The NFS stage is
    the exception: it asks for a machine's exports (``defaults.nfs``) whatever it sent last.
    """

    config: Config

    def decide(self, request: BootRequest) -> BootDecision | None:
        if request.firmware is Firmware.PLAIN and request.stage is not Stage.NFS:
            return None
        return decide_from_profile(
            request, self.config.defaults, self.config, reason="by architecture (defaults)"
        )


@provider(IBootPolicyFactory)
class StaticPolicyFactory:
    name = "static"
    description = "machines and groups from the config, matched by MAC, then UUID"

    @staticmethod
    def build(config: Config) -> StaticPolicy:
        return StaticPolicy(config)


@provider(IBootPolicyFactory)
class ArchPolicyFactory:
    name = "arch"
    description = "the boot table entry for the client's firmware and architecture (option 93)"

    @staticmethod
    def build(config: Config) -> ArchPolicy:
        return ArchPolicy(config)

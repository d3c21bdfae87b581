"""Helpers for people who write and test boot-policy plugins (public API, like ``treq.testing``).

from pxetwist.testing import make_request, assert_provides_policy, run_chain

request = make_request("52:54:00:12:34:56", arch=7)
assert_provides_policy(my_policy)
decision = run_chain([my_policy], request)
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

from twisted.internet.task import Clock
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from pxetwist.config import Config, parse_config
from pxetwist.policy.chain import PolicyChain, decide_offline
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.interfaces import IBootPolicy, IBootPolicyFactory
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import Arch, Firmware, MacAddress, Stage

_VENDOR = {
    Firmware.PXE_ROM: "PXEClient:Arch:{arch:05d}:UNDI:002001",
    Firmware.IPXE: "PXEClient:Arch:{arch:05d}:UNDI:002001",
    Firmware.HTTP_BOOT: "HTTPClient:Arch:{arch:05d}:UNDI:003000",
}
#: What U-Boot's ``dhcp`` sends in option 60 for its option-93 value (CONFIG_BOOTP_VCI_STRING).
_UBOOT_VENDOR = {21: "U-Boot.armv7", 22: "U-Boot.armv8"}


def make_request(
    mac: str | MacAddress = "52:54:00:12:34:56",
    *,
    arch: int | None = 0,
    firmware: Firmware | str = Firmware.PXE_ROM,
    stage: Stage | str = Stage.DHCP,
    uuid: str | uuid_module.UUID | None = None,
    user_class: bytes | None = None,
    client_address: str | None = None,
    path: str | None = None,
) -> BootRequest:
    """A :class:`BootRequest` like the one a real client of that kind produces, in one call.

    ``firmware`` sets the vendor class and user class the way the firmware would (``"ipxe"``
    adds user class ``iPXE``; ``"u-boot"`` sends ``U-Boot.armv8`` for arch 22; ``"plain"``
    sends nothing PXE-like).
    """
    kind = Firmware(firmware)
    arches = (Arch(arch),) if arch is not None and kind is not Firmware.PLAIN else ()
    vendor = _VENDOR[kind].format(arch=arch or 0).encode() if kind in _VENDOR else None
    if kind is Firmware.UBOOT:
        vendor = _UBOOT_VENDOR.get(arch or 0, "U-Boot").encode()
    user_classes: tuple[bytes, ...] = ()
    if user_class is not None:
        user_classes = (user_class,)
    elif kind is Firmware.IPXE:
        user_classes = (b"iPXE",)
    return BootRequest(
        mac=mac if isinstance(mac, MacAddress) else MacAddress.parse(mac),
        stage=Stage(stage),
        arches=arches,
        vendor_class=vendor,
        user_classes=user_classes,
        uuid=uuid_module.UUID(str(uuid)) if uuid is not None else None,
        client_address=IPv4Address(client_address) if client_address else None,
        path=path,
    )


def assert_provides_policy(policy: object) -> None:
    """Fail with zope's explanation unless ``policy`` fully provides :class:`IBootPolicy`."""
    try:
        verifyObject(IBootPolicy, policy)
    except Invalid as error:
        raise AssertionError(f"{policy!r} does not provide IBootPolicy: {error}") from error


def assert_provides_factory(factory: object) -> None:
    """Fail unless ``factory`` is a usable policy plugin (``IBootPolicyFactory``)."""
    try:
        verifyObject(IBootPolicyFactory, factory)
    except Invalid as error:
        raise AssertionError(f"{factory!r} does not provide IBootPolicyFactory: {error}") from error


def config_from_yaml(text: str, base_dir: Path | None = None) -> Config:
    """A validated :class:`Config` from YAML text, as the server would load it."""
    return parse_config(text, source="<test>", base_dir=base_dir)


def run_chain(
    policies: Sequence[IBootPolicy] | Iterable[tuple[str, IBootPolicy]],
    request: BootRequest,
    *,
    clock: Clock | None = None,
    timeout: float = 2.0,
) -> BootDecision | None:
    """Ask the policies as the server's chain would and return the winning decision.

    Asynchronous policies are given ``timeout`` seconds on ``clock`` (advanced for you); the
    result is returned synchronously either way.
    """
    named = [
        item if isinstance(item, tuple) else (type(item).__name__, item)
        for item in policies  # type: ignore[union-attr]
    ]
    clock = clock or Clock()
    try:
        return decide_offline(PolicyChain(named, clock, timeout), request, clock)
    except RuntimeError as error:
        raise AssertionError(str(error)) from error

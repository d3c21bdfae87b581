"""What the API reads and changes in the running server, as interfaces.

The API does not reach into services: it is handed one object per concern.  Each has an
implementation over the real parts (the DHCP lease table, the session registry, the reloader);
tests hand in their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface

from pxetwist.dhcp.leases import Lease
from pxetwist.policy.values import MacAddress


@attrs.frozen
class PoolUse:
    network: IPv4Network
    size: int  # addresses the pool can hand out
    held: int  # offered, bound or quarantined now


class ILeaseView(Interface):
    """The DHCP lease table (authoritative mode); empty when pxetwist owns no addresses."""

    def leases() -> Sequence[Lease]:
        """Every record, whatever its state."""

    def pools() -> Sequence[PoolUse]:
        """Size and use of each subnet's pool."""

    def release(address: IPv4Address) -> Deferred[Lease | None]:
        """Free an address as if its client had sent DHCPRELEASE; fires once it is on disk.

        ``None`` when no client holds the address.
        """

    def now() -> float:
        """Wall-clock seconds, as lease expiry times are written."""


class ISessionView(Interface):
    """Boot sessions (issue 13), as the JSON the ``pxetwist sessions --json`` contract gives."""

    def sessions(
        mac: MacAddress | None, limit: int
    ) -> Sequence[dict[str, Any]] | Deferred[Sequence[dict[str, Any]]]:
        """Sessions newest first (by their latest event), optionally of one machine."""

    def stuck() -> Sequence[dict[str, Any]]:
        """Sessions now marked stuck, longest stuck first."""

    def latest(limit: int) -> Sequence[dict[str, Any]]:
        """Each machine's latest session (from memory: cheap enough to poll), newest first."""


class IBootOnce(Interface):
    """Boot-once state (issue 13): a machine netboots once, then boots locally until reset."""

    def state(mac: MacAddress) -> dict[str, Any]:
        """``{"mac", "armed", "used", ...}`` for the machine."""

    def reset(mac: MacAddress) -> Deferred[dict[str, Any]] | dict[str, Any]:
        """Forget a completed boot so the machine netboots once more; its new state."""


class IReloader(Interface):
    """Reload the config and plugins as SIGHUP does (issue 13)."""

    def reload() -> Deferred[dict[str, Any]]:
        """Fires with a summary, or fails with ConfigError/PluginError (old config kept)."""


class INfsView(Interface):
    """The NFS export wrapper's grants: what Ganesha exports to which machine."""

    def exports() -> Sequence[dict[str, Any]]:
        """Each export: ``export_id``, ``mac``, ``client``, ``path``, ``pseudo``, ``access``,
        ``state`` (``active``, ``granting``: decided but not yet in Ganesha, ``withdrawing``)."""

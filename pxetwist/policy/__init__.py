"""The boot-policy vocabulary and contract shared by every protocol and plugin.

A front end (DHCP, TFTP, HTTP) builds a :class:`BootRequest`, asks a :class:`PolicyChain`, and
turns the :class:`BootDecision` into its own reply.
"""

from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision, NfsAccess, NfsExport, Quirks
from pxetwist.policy.interfaces import IBootPolicy, IBootPolicyFactory
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import Arch, BootAction, Firmware, MacAddress, Stage

__all__ = [
    "Arch",
    "BootAction",
    "BootDecision",
    "BootRequest",
    "Firmware",
    "IBootPolicy",
    "IBootPolicyFactory",
    "MacAddress",
    "NfsAccess",
    "NfsExport",
    "PolicyChain",
    "Quirks",
    "Stage",
]

"""Network-namespace lab harness for pxetwist integration tests and benchmarks.

See :mod:`pxetwist.lab.netlab` for the topology and :class:`NetLab` for the API.
"""

from .loss import add_loss, remove_loss
from .netlab import (
    BRIDGE,
    CLIENT_IF,
    RELAY_BRIDGE,
    SRV_IF,
    SRV_PEER_IF,
    LabError,
    NetLab,
    cpu_mask,
    exit_on_sigterm,
    in_ci,
    lab_available,
    remove_stale_labs,
    require_binary,
    require_lab,
)

__all__ = [
    "BRIDGE",
    "CLIENT_IF",
    "RELAY_BRIDGE",
    "SRV_IF",
    "SRV_PEER_IF",
    "LabError",
    "NetLab",
    "add_loss",
    "cpu_mask",
    "exit_on_sigterm",
    "in_ci",
    "lab_available",
    "remove_loss",
    "remove_stale_labs",
    "require_binary",
    "require_lab",
]

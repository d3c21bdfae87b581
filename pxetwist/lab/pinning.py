"""Servers and clients on CPUs of their own: the benchmarks' ``--pin SERVER_CPUS:CLIENT_CPUS``.

PXE clients are other machines.  On a benchmark host they share its CPUs with the servers
unless each side is pinned (``taskset``) to its own, and then a faster client charges the
server less for the same work.  The benchmarks report the pinned run as their headline and the
shared-CPU run beside it; this module turns the option into the ``taskset`` prefixes they put
before each command, and refuses a CPU list this process may not use before anything starts.
"""

from __future__ import annotations

import os

import attrs

from pxetwist.lab.netlab import cpu_mask


@attrs.frozen
class Pinning:
    """Where the servers and the clients run; empty lists mean anywhere (not pinned)."""

    server_cpus: str = ""
    client_cpus: str = ""

    @property
    def pinned(self) -> bool:
        return bool(self.server_cpus)

    @property
    def server_prefix(self) -> list[str]:
        """``taskset -c CPUS`` for a server command, or nothing."""
        return ["taskset", "-c", self.server_cpus] if self.server_cpus else []

    @property
    def client_prefix(self) -> list[str]:
        """``taskset -c CPUS`` for a client command, or nothing."""
        return ["taskset", "-c", self.client_cpus] if self.client_cpus else []

    def describe(self) -> str:
        """For a results header: ``pinned 0:1`` or ``not pinned``."""
        if not self.pinned:
            return "not pinned"
        return f"pinned {self.server_cpus}:{self.client_cpus}"


NOT_PINNED = Pinning()


def parse_pin(spec: str | None, available: frozenset[int] | None = None) -> Pinning:
    """``"0:1"`` -> servers on CPU 0, clients on CPU 1; ``"0"`` -> both on CPU 0; None -> free.

    Raises :class:`ValueError` with the reason for a list ``taskset`` would reject or that
    names a CPU outside ``available`` (this process's affinity by default).
    """
    if not spec:
        return NOT_PINNED
    server, _, client = spec.partition(":")
    server, client = server.strip(), client.strip() or server.strip()
    usable = frozenset(os.sched_getaffinity(0)) if available is None else available
    for side, cpus in (("server", server), ("client", client)):
        try:
            mask = cpu_mask(cpus)
        except ValueError as error:
            raise ValueError(f"--pin {spec!r}: the {side} CPU list {cpus!r} is not one") from error
        missing = [cpu for cpu in range(mask.bit_length()) if mask >> cpu & 1 and cpu not in usable]
        if missing:
            raise ValueError(
                f"--pin {spec!r}: the {side} CPUs {missing} are not among this machine's "
                f"usable CPUs {sorted(usable)}"
            )
    return Pinning(server, client)


__all__ = ["NOT_PINNED", "Pinning", "parse_pin"]

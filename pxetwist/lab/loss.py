"""Random packet loss on a lab interface, with or without the kernel's netem."""

from __future__ import annotations

from .netlab import NetLab


def add_loss(lab: NetLab, namespace: str, device: str, percent: int) -> str:
    """Drop ``percent`` % of the packets leaving ``device``, at random; return how.

    ``tc qdisc add dev DEV root netem loss N%`` where the kernel has netem.  Kernels built
    without it (this lab's) get the same effect from iproute2 alone: a ``clsact`` qdisc and a
    classic-BPF egress filter in direct-action mode that loads a random number
    (``ld rand``, SKF_AD_RANDOM) and answers TC_ACT_SHOT (2) below the threshold, else
    TC_ACT_OK (0).
    """
    netem = lab.run(
        namespace,
        ["tc", "qdisc", "add", "dev", device, "root", "netem", "loss", f"{percent}%"],
        timeout=10,
    )
    if netem.returncode == 0:
        return "netem"
    threshold = (1 << 32) * percent // 100
    program = f"4,32 0 0 {0xFFFFF000 + 56},53 1 0 {threshold},6 0 0 2,6 0 0 0"
    for argv in (
        ["tc", "qdisc", "add", "dev", device, "clsact"],
        ["tc", "filter", "add", "dev", device, "egress", "bpf", "da", "bytecode", program],
    ):
        result = lab.run(namespace, argv, timeout=10)
        if result.returncode != 0:
            raise AssertionError(
                f"cannot add packet loss: netem: {netem.stderr.strip()}; "
                f"{' '.join(argv)}: {result.stderr.strip()}"
            )
    return "bpf"


def remove_loss(lab: NetLab, namespace: str, device: str) -> None:
    for qdisc in ("root", "clsact"):
        lab.run(namespace, ["tc", "qdisc", "del", "dev", device, qdisc], timeout=10)

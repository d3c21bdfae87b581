"""How the server runs Python's cycle collector: what it built at start-up is never scanned again,
and the young generation is collected every 10,000 allocations rather than every 700.

Why: the collector scans every container object of a generation each time it runs, and a PXE
server is a large, long-lived heap (the config, the policy chain, Twisted, a lease table of up to
100,000 records, the boot sessions) with a hot path that allocates a handful of small frozen
values per packet.  With CPython's defaults (700, 10, 10) the DHCP hot path spent about 10 % of
its CPU in the collector, most of it in full collections that walked the whole heap to free
nothing (``bench/dhcp/hotpath.py``, measured with ``gc.callbacks``; see bench/README).

* ``gc.freeze()`` moves every object alive once the services have started into the permanent
  generation, which collections skip.  Those objects are still freed by reference counting when
  the last reference goes; a reference cycle among them would stay until exit.  What a reload
  replaces (the config, the policy chain, plugins' objects) is such a case, so after each
  reload :func:`resettle_garbage_collector` thaws the heap, collects it whole once and freezes
  it again: an operator who reloads every minute does not leak a config a minute.
* A young-generation threshold of 10,000 makes collections 14 times rarer; each finds more of
  its objects already freed by reference counting, and the garbage cycles waiting for it are at
  most ten thousand small objects.  The older thresholds stay at CPython's 10 and 10.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG_THRESHOLD: Final = 10_000
OLDER_THRESHOLDS: Final = (10, 10)


def settle_garbage_collector() -> None:
    """Freeze what start-up built and set the thresholds above; safe to call more than once."""
    gc.collect()  # free start-up's own garbage cycles first, so that they are not frozen
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


def resettle_garbage_collector() -> None:
    """After a reload: collect what it left behind, the frozen part of the heap included, and
    freeze the rest again (one full collection, tens of milliseconds on a large heap)."""
    gc.unfreeze()
    settle_garbage_collector()


__all__ = [
    "OLDER_THRESHOLDS",
    "YOUNG_THRESHOLD",
    "resettle_garbage_collector",
    "settle_garbage_collector",
]

"""An :class:`enum.Enum` built for the values looked up on every packet.

Two things of ``enum.Enum`` are Python-level calls in Python 3.11, and both happen per packet
and per boot event (dict lookups keyed by the event's stage and outcome, the verdict, the
firmware; ``.value`` when an event becomes JSON or a log line):

* ``__hash__`` is ``hash(self._name_)``.  A plain ``Enum`` member is only ever equal to itself,
  so the object's identity hash is just as correct and runs in C.
* ``.value`` and ``.name`` are ``enum.property`` descriptors that run Python code on each read.
  A ``property`` over :func:`operator.attrgetter` reads the same attribute in C, three times
  faster.

Not for ``IntEnum``/``StrEnum``: their members equal plain ints and strings and must hash like
them (they already do, in C).
"""

from __future__ import annotations

import enum
from operator import attrgetter
from typing import TYPE_CHECKING


class IdentityEnum(enum.Enum):
    """A plain enum whose members hash by identity and read ``value``/``name`` in C."""

    __hash__ = object.__hash__

    if not TYPE_CHECKING:  # to a type checker these stay the usual, typed Enum attributes
        value = property(attrgetter("_value_"))
        name = property(attrgetter("_name_"))

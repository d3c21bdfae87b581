"""An :class:`enum.Enum` that hashes by identity, for the values looked up on every packet.

``enum.Enum.__hash__`` is a Python function (``hash(self._name_)``), so each dict lookup keyed
by a member (the event's stage and outcome, the verdict, the firmware) is a Python call on the
DHCP hot path.  A plain ``Enum`` member is only ever equal to itself, so the object's own
identity hash is just as correct and runs in C.  Not for ``IntEnum``/``StrEnum``: their members
equal plain ints and strings and must hash like them (they already do, in C).
"""

from __future__ import annotations

import enum


class IdentityEnum(enum.Enum):
    """A plain enum whose members hash by identity (equality is identity already)."""

    __hash__ = object.__hash__

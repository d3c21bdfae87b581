"""The one server context every protocol service is built from.

:class:`ServerContext` is what ``twistd pxe`` hands each protocol service (DHCP, TFTP, HTTP, and
whatever comes next): the config and policy chain in force, the served interfaces, the sighting
registry that ties later stages to what DHCP saw, the :class:`~pxetwist.events.BootEventBus`
protocols report into, and the reactor.  A service's constructor takes the context and nothing
else, so adding a protocol is a new package plus one line in :mod:`pxetwist.service`.

**Hot reload.**  The context is frozen, but the config, the policy chain and the served
interfaces are not fields of it: they sit together in one :class:`LiveSettings`, a small holder
whose :class:`Settings` value (one frozen triple) a reload (:mod:`pxetwist.reload`) replaces in a
single assignment.  So the rule for services is: read ``context.config``, ``context.chain`` and
``context.interfaces`` when you need them, per request, and never keep them in an attribute of
your own.  A request that started under the old config finishes with the values it already read;
the next one sees the new triple, never a new config with an old chain.  What a service *derives*
from them (bound sockets, TFTP limits, lease pools) it rebuilds in a callback given to
:meth:`LiveSettings.subscribe`, which a reload calls with the old and new settings after the
swap.  The sighting registry, the event bus and the reactor are not reloaded: they live as long
as the process.

**Where clients reach us.**  :meth:`Config.reachable_address
<pxetwist.config.model.Config.reachable_address>` is the one rule (``server_address`` when the
config names one, else the local address the request came in on); :meth:`ServerContext.
reachable_address` applies it to the live config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from typing import Final, cast

import attrs
from twisted.internet.interfaces import (
    IReactorFDSet,
    IReactorFromThreads,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
)
from twisted.logger import Logger

from pxetwist.config.model import Config
from pxetwist.events import BootEventBus
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.privileges import RunAs

__all__ = [
    "IServerReactor",
    "LiveSettings",
    "ServerContext",
    "Settings",
    "server_reactor",
]


class ITransferReactor(IReactorTime, IReactorFDSet):
    """What TFTP transfers use of a reactor: timers and descriptors.

    The main process's reactor and a transfer worker's own epoll reactor both serve as one.
    ``timeout`` is not in a Twisted interface but every Twisted reactor has it
    (``ReactorBase.timeout``): the lone-transfer spin loop reads it to wake for timed calls.
    """

    def timeout() -> float | None:
        """Seconds until the reactor's next timed call, or ``None`` if there is none."""


class IServerReactor(ITransferReactor, IReactorUDP, IReactorTCP, IReactorFromThreads):
    """The reactor as the protocol services use it, as one type (Twisted has no intersections).

    ``IReactorTime`` for timers, the chain's timeouts and the sighting clock; ``IReactorUDP``
    for TFTP listeners; ``IReactorTCP`` for HTTP; ``IReactorFDSet`` for DHCP's raw sockets and
    TFTP's transfer sockets; ``IReactorFromThreads`` for the lease store's writer thread.
    Every reactor Twisted ships on Linux provides all five, but none declares this combined
    interface: :func:`server_reactor` checks the parts and gives the reactor this type.
    Optional features (``IReactorProcess`` for TFTP workers) are checked with ``providedBy``
    where they are used, not required here.
    """


_log = Logger()

_REACTOR_PARTS: Final = (IReactorTime, IReactorUDP, IReactorTCP, IReactorFDSet, IReactorFromThreads)


def server_reactor(reactor: object) -> IServerReactor:
    """``reactor`` as an :class:`IServerReactor`, or ``TypeError`` naming what it lacks."""
    missing = [part.__name__ for part in _REACTOR_PARTS if not part.providedBy(reactor)]
    if missing:
        raise TypeError(f"{reactor!r} does not provide {', '.join(missing)}")
    return cast(IServerReactor, reactor)


@attrs.frozen
class Settings:
    """The config, the policy chain built from it and the interfaces it serves: replaced
    together, never one alone."""

    config: Config
    chain: PolicyChain
    #: The served interfaces (command line, else config, else every IPv4 one): a reload may
    #: add or remove some, and each service binds or closes its sockets to match.
    interfaces: tuple[InterfaceInfo, ...]


SettingsListener = Callable[[Settings, Settings], None]


class LiveSettings:
    """The :class:`Settings` in force; a reload swaps them whole (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._current = settings
        self._listeners: tuple[SettingsListener, ...] = ()

    @property
    def current(self) -> Settings:
        return self._current

    def subscribe(self, listener: SettingsListener) -> None:
        """Call ``listener(old, new)`` after each :meth:`replace`."""
        self._listeners = (*self._listeners, listener)

    def replace(self, settings: Settings) -> None:
        """Put ``settings`` in force, then tell the listeners (in the order they subscribed).

        A listener that raises is logged and the others still run: the new settings are in
        force either way, and one service failing to follow them must not leave the rest behind.
        """
        old, self._current = self._current, settings
        for listener in self._listeners:
            try:
                listener(old, settings)
            except Exception:
                _log.failure(
                    "a service failed to take the new settings: {listener!r}", listener=listener
                )


@attrs.frozen
class ServerContext:
    """What every protocol service is built from (see the module docstring)."""

    live: LiveSettings
    sightings: SightingRegistry
    events: BootEventBus
    reactor: IServerReactor
    run_as: RunAs | None = None
    """The user ``twistd --uid/--gid`` switches to after ``privilegedStartService`` (None: no
    switch): what state and helper processes made before the switch must belong to."""

    @classmethod
    def build(
        cls,
        config: Config,
        chain: PolicyChain,
        reactor: IServerReactor,
        *,
        interfaces: Sequence[InterfaceInfo] = (),
        sightings: SightingRegistry | None = None,
        events: BootEventBus | None = None,
        run_as: RunAs | None = None,
    ) -> ServerContext:
        """A context from its parts; a new sighting registry on the reactor's clock and an
        event bus with no observers unless given."""
        return cls(
            live=LiveSettings(Settings(config, chain, tuple(interfaces))),
            sightings=sightings if sightings is not None else SightingRegistry(reactor.seconds),
            events=events if events is not None else BootEventBus(),
            reactor=reactor,
            run_as=run_as,
        )

    @property
    def config(self) -> Config:
        """The config in force now: read it per use, do not keep it."""
        return self.live.current.config

    @property
    def chain(self) -> PolicyChain:
        """The policy chain in force now: read it per use, do not keep it."""
        return self.live.current.chain

    @property
    def interfaces(self) -> tuple[InterfaceInfo, ...]:
        """The interfaces served now (a reload may change them): read per use."""
        return self.live.current.interfaces

    @property
    def served(self) -> tuple[InterfaceInfo, ...]:
        """The interfaces that have an IPv4 address (the ones a service can bind)."""
        return tuple(info for info in self.interfaces if info.ip is not None)

    def reachable_address(self, local: IPv4Address) -> IPv4Address:
        """The address clients reach us at when their request came in on ``local``."""
        return self.config.reachable_address(local)

    def interface_named_by(self, local: IPv4Address) -> str | None:
        """The name of the served interface with address ``local``, if any."""
        for info in self.interfaces:
            if info.ip == local:
                return info.name
        return None

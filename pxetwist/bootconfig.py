"""The one place a machine's boot config is worked out, for every protocol that serves one.

A boot loader asks for its config by name: PXELINUX and GRUB over TFTP, iPXE over TFTP or HTTP,
GRUB over HTTP.  The front ends (:mod:`pxetwist.tftp.files`, :mod:`pxetwist.http.scripts`) only
read the name (which loader, which MAC if the name has one) and what reached them (client
address, the address and ports they were reached at) into a :class:`ConfigAsk`; from there the
steps are the same for both and happen here, in this order:

1. **Identify the machine** (:meth:`BootConfigResolver.identify`): the MAC in the name or URL,
   else whoever the sighting registry says is at the client's address (what DHCP saw, then the
   neighbour table).  The firmware details come from that machine's last DHCP request; what the
   URL says (``arch=``, ``uuid=``) fills in what DHCP never told us.  A loader that reads an
   iPXE script *is* iPXE, so such a request always carries an iPXE user class and policies
   answer it as they answer iPXE's own DHCP request.
2. **Serving context**: the request records the address the client reached us at and the
   interface it came in on, so a policy can tell segments apart.
3. **Decide**: the policy chain in force (read from the live context per request, so a reload
   takes effect for the next request).
4. **Has it a boot config?**  A kernel, "boot locally", an iPXE script, or, for an iPXE asker
   whose front end allows it (:attr:`ConfigAsk.may_chain`), a boot program to ``chain`` to.
5. **Render or fall back**: the whole text from the loader's template, or a :class:`BootConfig`
   saying why not, so that each front end answers in its protocol's words (TFTP serves the file
   of that name from disk; HTTP sends the file or a 404 that says why).

The result carries the :class:`BootRequest`, whose firmware and architecture say what kind of
client asked, so rendering can be made to fit the asker (a U-Boot gets paths, not URLs) here,
once, for both protocols.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed

from pxetwist.context import ServerContext
from pxetwist.nfs.exports import ExportPlanner, planner_for
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.render import (
    LoaderKind,
    Renderer,
    RenderError,
    ServingContext,
    has_boot_config,
)
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import Arch, BootAction, Firmware, MacAddress, Stage

__all__ = ["BootConfig", "BootConfigResolver", "ConfigAsk", "ConfigStatus"]


@attrs.frozen
class ConfigAsk:
    """A boot loader asking for its config, as its front end read the request.

    ``stage`` is the protocol it came by (``Stage.TFTP`` or ``Stage.HTTP``); ``mac`` the machine
    the name or URL names, if any; ``arch`` and ``uuid`` what the URL says (iPXE's
    ``${buildarch}`` and ``${uuid}``), used where DHCP told us nothing.  ``absolute_paths`` is
    for PXELINUX configs asked for below a directory.  ``may_chain`` (iPXE only) says whether a
    decision naming nothing but a boot program may be answered with a script that chains to it;
    None means it may not (the name is then looked up as a file).
    """

    kind: LoaderKind
    path: str
    stage: Stage
    client: IPv4Address | None
    serving: ServingContext
    interface: str | None = None
    mac: MacAddress | None = None
    arch: Arch | None = None
    uuid: uuid.UUID | None = None
    absolute_paths: bool = False
    may_chain: Callable[[str, ServingContext], bool] | None = None


class ConfigStatus(enum.Enum):
    """How a boot-config request ended; each front end answers each in its own words."""

    UNIDENTIFIED = "unidentified"  # no MAC in the name and nobody known at the client's address
    UNDECIDED = "undecided"  # no policy decided for the machine
    IGNORED = "ignored"  # the policy said to ignore the machine
    NOTHING = "nothing"  # the decision has nothing this loader's config can say
    RENDERED = "rendered"  # ``text`` is the whole config
    FAILED = "failed"  # rendering failed: ``error`` names the template and line


@attrs.frozen
class BootConfig:
    """The answer to a :class:`ConfigAsk`."""

    status: ConfigStatus
    request: BootRequest | None = None
    decision: BootDecision | None = None
    text: str | None = None
    error: RenderError | None = None

    @property
    def mac(self) -> MacAddress | None:
        return self.request.mac if self.request is not None else None


class BootConfigResolver:
    """Works out boot configs for one server context (see the module docstring).

    Templates are the config's ``templates`` directory (or the given renderer's); the renderer
    is rebuilt when a reload names another directory.
    """

    def __init__(self, context: ServerContext, renderer: Renderer | None = None) -> None:
        self.context = context
        self._templates = context.config.templates
        self._renderer = renderer if renderer is not None else Renderer(self._templates)
        self._planner: tuple[tuple[Path, Path], ExportPlanner | None] | None = None

    @property
    def renderer(self) -> Renderer:
        templates = self.context.config.templates
        if templates != self._templates:  # a reload named another templates directory
            self._templates, self._renderer = templates, Renderer(templates)
        return self._renderer

    def identify(self, ask: ConfigAsk) -> BootRequest | None:
        """Steps 1 and 2: the request the policies are asked, or None for an unknown machine."""
        sightings = self.context.sightings
        request = sightings.request_for(
            stage=ask.stage, address=ask.client, mac=ask.mac, path=ask.path
        )
        if request is None:
            return None
        changes: dict[str, Any] = {"server_address": IPv4Address(ask.serving.server)}
        if ask.interface is not None:
            changes["interface"] = ask.interface
        if sightings.by_mac(request.mac) is None:
            # DHCP never saw it: what the name or URL says is all there is.
            changes["ipxe_user_classes"] = self.context.config.dhcp.ipxe_user_classes
            if ask.arch is not None:
                changes["arches"] = (ask.arch,)
        if request.uuid is None and ask.uuid is not None:
            changes["uuid"] = ask.uuid
        request = attrs.evolve(request, **changes)
        if ask.kind is LoaderKind.IPXE and request.firmware is not Firmware.IPXE:
            classes = request.ipxe_user_classes or (b"iPXE",)
            request = attrs.evolve(request, user_classes=(*request.user_classes, classes[0]))
        return request

    def resolve(self, ask: ConfigAsk) -> Deferred[BootConfig]:
        """All five steps; the Deferred has already fired when every policy answers at once."""
        request = self.identify(ask)
        if request is None:
            return succeed(BootConfig(ConfigStatus.UNIDENTIFIED))
        return self.answer(ask, request)

    def answer(self, ask: ConfigAsk, request: BootRequest) -> Deferred[BootConfig]:
        """Steps 3 to 5 for a request :meth:`identify` made."""
        decided: Deferred[BootDecision | None] = self.context.chain.decide(request)
        return decided.addCallback(lambda decision: self.render(ask, request, decision))

    def render(
        self, ask: ConfigAsk, request: BootRequest, decision: BootDecision | None
    ) -> BootConfig:
        """Steps 4 and 5 for a decision."""
        if decision is None:
            return BootConfig(ConfigStatus.UNDECIDED, request)
        if decision.action is BootAction.IGNORE:
            return BootConfig(ConfigStatus.IGNORED, request, decision)
        if not _expressible(ask, decision):
            return BootConfig(ConfigStatus.NOTHING, request, decision)
        try:
            text = self.renderer.render(
                ask.kind,
                decision,
                request,
                ask.serving,
                absolute_paths=ask.absolute_paths,
                nfs=self._nfs_locations(decision, request, ask.serving.server),
            )
        except RenderError as error:
            return BootConfig(ConfigStatus.FAILED, request, decision, error=error)
        return BootConfig(ConfigStatus.RENDERED, request, decision, text=text)

    def _nfs_locations(
        self, decision: BootDecision, request: BootRequest, server: str
    ) -> list[str]:
        """The machine's NFS exports as ``SERVER:/PSEUDO``, for ``{nfs}``, ``{nfs2}``..."""
        config = self.context.config
        if not decision.nfs or not config.nfs.enabled:
            return []
        key = (config.nfs.root, config.data_dir)
        if self._planner is None or self._planner[0] != key:
            self._planner = (key, planner_for(config, create_key=True))
        planner = self._planner[1]
        return planner.locations(decision, request.mac, server) if planner is not None else []


def _expressible(ask: ConfigAsk, decision: BootDecision) -> bool:
    """Can this loader's config say what the decision says (without looping back to us)?"""
    if has_boot_config(ask.kind, decision):
        return True
    if ask.kind is not LoaderKind.IPXE or decision.program is None or ask.may_chain is None:
        return False
    return ask.may_chain(decision.program, ask.serving)

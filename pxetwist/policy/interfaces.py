"""The boot-policy contract: one question every protocol asks, "what does this machine boot?"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from pxetwist.config.model import Config
    from pxetwist.policy.decision import BootDecision
    from pxetwist.policy.request import BootRequest


class IBootPolicy(Interface):
    """Decides what one machine boots.

    Policies are small and composable, like ``twisted.names`` resolvers: a chain asks each in
    turn and the first decision wins, so a policy answers ``None`` for machines it has no
    opinion about.
    """

    def decide(
        request: BootRequest,
    ) -> BootDecision | Deferred[BootDecision | None] | None:
        """Return a decision, ``None`` (no opinion), or a Deferred firing with either."""


class IBootPolicyFactory(IPlugin):
    """A Twisted plugin that builds a named policy from the loaded configuration.

    Factories are found with ``twisted.plugin.getPlugins`` in ``twisted.plugins`` (installed
    packages) and in the configured plugin directories; ``policy.chain`` picks them by name.
    """

    name: str = Attribute("The name ``policy.chain`` uses to pick this policy.")
    description: str = Attribute("One line for --check-config and logs.")

    def build(config: Config) -> IBootPolicy:
        """Make the policy; raise ``ValueError`` with a clear message if the config is unusable."""

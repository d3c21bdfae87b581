"""Ask policies in order; the first decision wins, and a broken policy never breaks a boot."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.policy.decision import BootDecision
from pxetwist.policy.interfaces import IBootPolicy
from pxetwist.policy.request import BootRequest

log = Logger()


@implementer(IBootPolicy)
@attrs.frozen
class PolicyChain:
    """Named policies asked in order, like ``twisted.names``' resolver chain.

    A policy that raises, answers something that is not a decision, or takes longer than
    ``timeout`` seconds is logged and skipped.  When every policy has answered synchronously the
    returned Deferred has already fired, so the DHCP fast path pays no reactor turn.
    """

    policies: Sequence[tuple[str, IBootPolicy]]
    clock: IReactorTime
    timeout: float = 2.0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.policies)

    def decide(self, request: BootRequest) -> Deferred[BootDecision | None]:
        return self._ask(request, 0)

    def _ask(self, request: BootRequest, index: int) -> Deferred[BootDecision | None]:
        if index >= len(self.policies):
            log.debug(
                "no policy decided for {mac}",
                mac=str(request.mac),
                stage=request.stage.value,
                policy=None,
            )
            return succeed(None)
        name, policy = self.policies[index]
        try:
            result = policy.decide(request)
        except Exception:
            log.failure(
                "policy {policy} raised for {mac}; skipping it",
                policy=name,
                mac=str(request.mac),
                stage=request.stage.value,
            )
            return self._ask(request, index + 1)
        if isinstance(result, Deferred):
            result.addTimeout(self.timeout, self.clock)
            outcome: Deferred[BootDecision | None] = result.addCallbacks(
                lambda answer: self._answered(request, index, name, answer),
                lambda failure: self._failed(request, index, name, failure),
            )
            return outcome
        return self._answered(request, index, name, result)

    def _failed(
        self, request: BootRequest, index: int, name: str, failure: Failure
    ) -> Deferred[BootDecision | None]:
        log.failure(
            "policy {policy} failed or timed out for {mac}; skipping it",
            failure=failure,
            policy=name,
            mac=str(request.mac),
            stage=request.stage.value,
        )
        return self._ask(request, index + 1)

    def _answered(
        self, request: BootRequest, index: int, name: str, answer: object
    ) -> Deferred[BootDecision | None]:
        if answer is None:
            return self._ask(request, index + 1)
        if not isinstance(answer, BootDecision):
            log.error(
                "policy {policy} answered {answer!r}, not a BootDecision; skipping it",
                policy=name,
                answer=answer,
                mac=str(request.mac),
            )
            return self._ask(request, index + 1)
        decision = attrs.evolve(answer, policy=name)
        arch = request.arch
        log.info(
            "{policy} decided {action} for {mac} at {stage}: {reason}",
            policy=name,
            action=decision.action.value,
            mac=str(request.mac),
            arch=int(arch) if arch is not None else None,
            stage=request.stage.value,
            reason=decision.reason,
            program=decision.program,
        )
        return succeed(decision)

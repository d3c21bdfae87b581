"""Ask policies in order; the first decision wins, and a broken policy never breaks a boot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.policy.decision import BootDecision
from pxetwist.policy.interfaces import IBootPolicy
from pxetwist.policy.request import BootRequest

log = Logger()


def _answer_kind(answer: object) -> str:
    if answer is None:
        return "none"
    if isinstance(answer, BootDecision):
        return answer.action.value
    return "error"


def _timed(
    answer: object, monitor: Callable[[str, str, float], None], name: str, started: float
) -> object:
    monitor(
        name,
        "error" if isinstance(answer, Failure) else _answer_kind(answer),
        perf_counter() - started,
    )
    return answer


@implementer(IBootPolicy)
@attrs.frozen
class PolicyChain:
    """Named policies asked in order, like ``twisted.names``' resolver chain.

    A policy that raises, answers something that is not a decision, or takes longer than
    ``timeout`` seconds is logged and skipped.  When every policy has answered synchronously the
    returned Deferred has already fired, so the DHCP fast path pays no reactor turn;
    :meth:`decide_now` even skips the Deferred.
    """

    policies: Sequence[tuple[str, IBootPolicy]]
    clock: IReactorTime
    timeout: float = 2.0
    #: Applied to every decision before it is returned, whichever policy made it: state kept
    #: beside the policies, such as boot once (:meth:`pxetwist.sessions.bootonce.BootOnce.gate`).
    gate: Callable[[BootRequest, BootDecision], BootDecision] | None = None
    #: Told each policy's answer as it comes: its name, the action (``none`` for no opinion,
    #: ``error`` for a failure, a timeout or an odd answer) and the seconds it took (metrics).
    monitor: Callable[[str, str, float], None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.policies)

    def decide(self, request: BootRequest) -> Deferred[BootDecision | None]:
        answer = self._ask(request, 0, True)
        if isinstance(answer, Deferred):
            return answer
        return succeed(answer)

    def decide_now(
        self, request: BootRequest, *, log_decision: bool = True
    ) -> BootDecision | Deferred[BootDecision | None] | None:
        """The decision itself while every policy answers synchronously, else a Deferred.

        The hot path of a busy DHCP server: no Deferred, no reactor turn.  With
        ``log_decision=False`` the chain does not log which policy decided (nor that none did):
        for a caller whose own log line already carries the decision.  Failures and odd
        answers are always logged.
        """
        return self._ask(request, 0, log_decision)

    def _ask(
        self, request: BootRequest, index: int, log_decision: bool
    ) -> BootDecision | Deferred[BootDecision | None] | None:
        policies = self.policies
        monitor = self.monitor
        while index < len(policies):
            name, policy = policies[index]
            started = perf_counter() if monitor is not None else 0.0
            try:
                result = policy.decide(request)
            except Exception:
                if monitor is not None:
                    monitor(name, "error", perf_counter() - started)
                log.failure(
                    "policy {policy} raised for {mac}; skipping it",
                    policy=name,
                    mac=str(request.mac),
                    stage=request.stage.value,
                )
                index += 1
                continue
            if isinstance(result, Deferred):
                result.addTimeout(self.timeout, self.clock)
                if monitor is not None:
                    result.addBoth(_timed, monitor, name, started)
                outcome: Deferred[BootDecision | None] = result.addCallbacks(
                    self._answered_later,
                    self._failed,
                    callbackArgs=(request, index, name, log_decision),
                    errbackArgs=(request, index, name, log_decision),
                )
                return outcome
            if monitor is not None:
                monitor(name, _answer_kind(result), perf_counter() - started)
            if result is None:
                index += 1
                continue
            if not isinstance(result, BootDecision):
                self._odd(request, name, result)
                index += 1
                continue
            return self._decided(request, name, result, log_decision)
        if log_decision:
            log.debug(
                "no policy decided for {mac}",
                mac=str(request.mac),
                stage=request.stage.value,
                policy=None,
            )
        return None

    def _failed(
        self, failure: Failure, request: BootRequest, index: int, name: str, log_decision: bool
    ) -> Deferred[BootDecision | None]:
        log.failure(
            "policy {policy} failed or timed out for {mac}; skipping it",
            failure=failure,
            policy=name,
            mac=str(request.mac),
            stage=request.stage.value,
        )
        return self._later(self._ask(request, index + 1, log_decision))

    def _answered_later(
        self, answer: object, request: BootRequest, index: int, name: str, log_decision: bool
    ) -> Deferred[BootDecision | None]:
        if answer is None:
            return self._later(self._ask(request, index + 1, log_decision))
        if not isinstance(answer, BootDecision):
            self._odd(request, name, answer)
            return self._later(self._ask(request, index + 1, log_decision))
        return succeed(self._decided(request, name, answer, log_decision))

    @staticmethod
    def _later(
        answer: BootDecision | Deferred[BootDecision | None] | None,
    ) -> Deferred[BootDecision | None]:
        return answer if isinstance(answer, Deferred) else succeed(answer)

    @staticmethod
    def _odd(request: BootRequest, name: str, answer: object) -> None:
        log.error(
            "policy {policy} answered {answer!r}, not a BootDecision; skipping it",
            policy=name,
            answer=answer,
            mac=str(request.mac),
        )

    def _decided(
        self, request: BootRequest, name: str, answer: BootDecision, log_decision: bool
    ) -> BootDecision:
        decision = attrs.evolve(answer, policy=name)
        if self.gate is not None:
            decision = self.gate(request, decision)
        if log_decision:
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
        return decision


def decide_offline(chain: PolicyChain, request: BootRequest, clock: Clock) -> BootDecision | None:
    """The chain's decision without a running reactor (``pxetwist explain``, plugin tests).

    ``clock`` must be the chain's: asynchronous policies get their ``timeout`` on it, advanced
    here until the answer is in.  Raises ``RuntimeError`` if the chain fails or never answers.
    """
    results: list[BootDecision | None] = []
    failures: list[Failure] = []
    chain.decide(request).addCallbacks(results.append, failures.append)
    while not results and not failures and clock.getDelayedCalls():
        clock.advance(min(call.getTime() for call in clock.getDelayedCalls()) - clock.seconds())
    if failures:
        raise RuntimeError(f"the policy chain failed: {failures[0].getErrorMessage()}")
    if not results:
        raise RuntimeError("the policy chain never answered (a Deferred that never fires?)")
    return results[0]

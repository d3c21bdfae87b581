"""PolicyChain: first decision wins; a broken or slow policy is skipped, never fatal."""

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pxetwist.policy import BootDecision, BootRequest, IBootPolicy, PolicyChain
from pxetwist.testing import make_request


@implementer(IBootPolicy)
class Fixed:
    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.asked: list[BootRequest] = []

    def decide(self, request: BootRequest) -> Any:
        self.asked.append(request)
        return self.answer


@implementer(IBootPolicy)
class Raising:
    def decide(self, request: BootRequest) -> BootDecision | None:
        raise RuntimeError("database down")


def result_of(deferred: Deferred[BootDecision | None]) -> object:
    results: list[object] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


class PolicyChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.request = make_request()

    def test_provides_the_interface(self) -> None:
        verifyObject(IBootPolicy, PolicyChain([], self.clock))

    def test_first_decision_wins_and_is_labelled(self) -> None:
        first = Fixed(None)
        second = Fixed(BootDecision(program="a.efi", reason="second"))
        third = Fixed(BootDecision(program="b.efi"))
        chain = PolicyChain([("one", first), ("two", second), ("three", third)], self.clock)
        decision = result_of(chain.decide(self.request))
        assert isinstance(decision, BootDecision)
        self.assertEqual((decision.program, decision.policy), ("a.efi", "two"))
        self.assertEqual(len(first.asked), 1)
        self.assertEqual(third.asked, [])

    def test_no_decision(self) -> None:
        chain = PolicyChain([("one", Fixed(None))], self.clock)
        self.assertIsNone(result_of(chain.decide(self.request)))

    def test_raising_policy_is_logged_and_skipped(self) -> None:
        chain = PolicyChain(
            [("bad", Raising()), ("good", Fixed(BootDecision(program="x")))], self.clock
        )
        decision = result_of(chain.decide(self.request))
        assert isinstance(decision, BootDecision)
        self.assertEqual(decision.policy, "good")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_wrong_answer_type_is_skipped(self) -> None:
        chain = PolicyChain(
            [("odd", Fixed("pxelinux.0")), ("good", Fixed(BootDecision(program="x")))], self.clock
        )
        decision = result_of(chain.decide(self.request))
        assert isinstance(decision, BootDecision)
        self.assertEqual(decision.policy, "good")

    def test_async_answer(self) -> None:
        pending: Deferred[BootDecision | None] = Deferred()
        chain = PolicyChain([("slow", Fixed(pending))], self.clock, timeout=2.0)
        outcome = chain.decide(self.request)
        self.clock.advance(1.0)
        pending.callback(BootDecision(program="late.efi"))
        decision = result_of(outcome)
        assert isinstance(decision, BootDecision)
        self.assertEqual(decision.program, "late.efi")

    def test_slow_policy_times_out_and_is_skipped(self) -> None:
        pending: Deferred[BootDecision | None] = Deferred()
        fallback = Fixed(succeed(BootDecision(program="fallback")))
        chain = PolicyChain([("slow", Fixed(pending)), ("next", fallback)], self.clock, timeout=2.0)
        outcome = chain.decide(self.request)
        self.assertNoResult(outcome)
        self.clock.advance(2.0)
        decision = result_of(outcome)
        assert isinstance(decision, BootDecision)
        self.assertEqual(decision.policy, "next")
        self.flushLoggedErrors()

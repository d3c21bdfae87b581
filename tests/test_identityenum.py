"""IdentityEnum: a plain enum that hashes by identity and reads value/name in C."""

from __future__ import annotations

import copy
import pickle

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.identityenum import IdentityEnum
from pxetwist.policy.values import Firmware


class Colour(IdentityEnum):
    RED = "red"
    BLUE = "blue"


class IdentityEnumTests(SynchronousTestCase):
    def test_behaves_as_an_enum(self) -> None:
        self.assertEqual(list(Colour), [Colour.RED, Colour.BLUE])
        self.assertIs(Colour("blue"), Colour.BLUE)
        self.assertIs(Colour["RED"], Colour.RED)
        self.assertEqual((Colour.RED.value, Colour.RED.name), ("red", "RED"))
        self.assertEqual(list(Colour.__members__), ["RED", "BLUE"])
        with self.assertRaises(ValueError):
            Colour("green")

    def test_hash_is_identity_and_lookups_work(self) -> None:
        self.assertEqual(hash(Colour.RED), object.__hash__(Colour.RED))
        table = {Colour.RED: 1, Colour.BLUE: 2}
        self.assertEqual(table[Colour.BLUE], 2)
        self.assertNotIn("red", table)  # a member is not its value
        self.assertIn(Colour.RED, frozenset(Colour))

    def test_survives_pickle_and_copy(self) -> None:
        self.assertIs(pickle.loads(pickle.dumps(Colour.BLUE)), Colour.BLUE)
        self.assertIs(copy.deepcopy(Colour.RED), Colour.RED)

    def test_value_and_name_are_not_settable(self) -> None:
        with self.assertRaises(AttributeError):
            Colour.RED.value = "pink"  # type: ignore[misc]

    def test_the_project_enums_use_it(self) -> None:
        self.assertEqual(Firmware("ipxe").value, "ipxe")
        self.assertIs(Firmware["PLAIN"], Firmware.PLAIN)

"""``sessions.sqlite``: a session's columns and compact body, read back as the CLI prints it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.sessions.model import (
    Session,
    SessionEvent,
    compact_json,
    session_from_json,
    session_from_stored,
)
from pxetwist.sessions.store import SessionRow, SessionStore
from tests.sessions.events import MAC, full_boot
from tests.sessions.test_registry import Harness


def booted_session() -> Session:
    harness = Harness()
    harness.feed(*full_boot())
    (session,) = harness.registry.sessions(MAC)
    return session


class StoredFormTests(SynchronousTestCase):
    def setUp(self) -> None:
        path = Path(tempfile.mkdtemp(prefix="pxt-store-")) / "sessions.sqlite"
        self.store = SessionStore(path)
        self.addCleanup(self.store.close)

    def test_round_trip_is_what_the_cli_prints(self) -> None:
        session = booted_session()
        self.store.save([SessionRow.of(session)], keep=5, max_sessions=100)
        (stored,) = self.store.sessions(str(MAC))
        self.assertEqual(stored, session.as_json())
        self.assertEqual(stored["state"], "booted")
        self.assertEqual([e["stage"] for e in stored["events"]][:2], ["dhcp-offer", "dhcp-ack"])

    def test_body_leaves_the_columns_and_empty_fields_out(self) -> None:
        session = booted_session()
        row = SessionRow.of(session)
        body = json.loads(row.body)
        self.assertEqual(body["v"], 2)
        for column in ("id", "mac", "started", "updated", "state", "stage"):
            self.assertNotIn(column, body)
        self.assertNotIn("hint", body)  # None: reads back as None
        self.assertEqual(len(body["events"]), len(session.events))
        self.assertEqual(
            body["events"][0][:5], [session.events[0].time, "dhcp", "dhcp-offer", "discover", "ok"]
        )
        again = session_from_stored(*row.as_tuple())
        self.assertEqual(again.as_json(), session.as_json())

    def test_a_write_encodes_no_earlier_event_again(self) -> None:
        session = booted_session()
        with mock.patch("pxetwist.sessions.model.compact_json", side_effect=compact_json) as encode:
            first = SessionRow.of(session)
            self.assertEqual(encode.call_count, 1 + len(session.events))  # the head and each
            session.events.append(
                SessionEvent.from_json({**session.events[-1].as_json(), "time": 99.0})
            )
            encode.reset_mock()
            second = SessionRow.of(session)
            self.assertEqual(encode.call_count, 2)  # the head and the new event only
        self.assertEqual(second.body[: len(first.body) - 2], first.body[:-2])  # earlier text kept

    def test_rows_of_the_older_whole_json_form_still_read(self) -> None:
        session = booted_session()
        value = session.as_json()
        self.store.save([SessionRow.from_json(value)], keep=5, max_sessions=100)
        (stored,) = self.store.sessions()
        self.assertEqual(stored, session_from_json(value).as_json())
        self.assertEqual(stored["events"], value["events"])

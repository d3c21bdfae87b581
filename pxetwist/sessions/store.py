# -*- test-case-name: tests.sessions.test_store -*-
"""Where sessions and boot-once state survive a restart: one SQLite file in ``data_dir``.

``sessions.sqlite`` holds each session as the columns it is looked up by (id, mac, start, last
change, state, stage) and a JSON body with the rest (:meth:`Session.stored_body`: each event as
an array, encoded once when first written), and the machines that have used up their boot once.
Readers get every session as ``pxetwist sessions --json`` prints it; bodies written by an older
version (a whole ``as_json`` value, no ``v``) read the same way.
The server writes it from one thread of its own (:mod:`pxetwist.sessions.persistence`), never
from the reactor; ``pxetwist sessions`` and ``pxetwist machines reset-boot`` open it from
another process while the server runs (WAL mode: readers never wait for the writer).

Bounded: every ``PRUNE_EVERY`` writes (the first one included) only the newest ``keep`` sessions
of each machine remain, and the oldest beyond ``max_sessions`` in all are deleted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from pxetwist.sessions.model import Session, compact_json, session_from_stored

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sessions (
    id      TEXT PRIMARY KEY,  -- <mac hex>-<start in microseconds>
    mac     TEXT NOT NULL,     -- 52:54:00:12:34:56
    started REAL NOT NULL,     -- Unix time
    updated REAL NOT NULL,
    state   TEXT NOT NULL,     -- in-progress, booted, stuck, failed
    stage   TEXT NOT NULL,
    body    TEXT NOT NULL      -- the rest as JSON (Session.stored_body)
);
CREATE INDEX IF NOT EXISTS sessions_by_mac ON sessions (mac, started);
CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (started);
CREATE TABLE IF NOT EXISTS boot_once (
    mac     TEXT PRIMARY KEY,  -- a machine that has used up its one network boot
    used_at REAL NOT NULL,
    how     TEXT NOT NULL,     -- what showed the boot went through
    session TEXT               -- the session that did
);
"""


@attrs.frozen
class SessionRow:
    """One session to store: its key columns and its JSON body."""

    id: str
    mac: str
    started: float
    updated: float
    state: str
    stage: str
    body: str

    @classmethod
    def of(cls, session: Session) -> SessionRow:
        """The row of a session (on the reactor: the session changes there)."""
        return cls(
            session.id,
            str(session.mac),
            session.started,
            session.updated,
            session.state.value,
            session.stage.value,
            session.stored_body(),
        )

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SessionRow:
        """A row whose body is a whole ``as_json`` value (the form before ``v`` 2)."""
        return cls(
            id=str(value["id"]),
            mac=str(value["mac"]),
            started=float(value["started"]),
            updated=float(value["updated"]),
            state=str(value["state"]),
            stage=str(value["stage"]),
            body=compact_json(value),
        )

    def as_tuple(self) -> tuple[str, str, float, float, str, str, str]:
        """The row's columns, in the order of the table (``attrs.astuple`` is far slower)."""
        return (self.id, self.mac, self.started, self.updated, self.state, self.stage, self.body)


@attrs.frozen
class UsedBoot:
    """A machine's used-up boot once."""

    mac: str
    used_at: float
    how: str
    session: str | None = None


#: Saves between two prunes (sessions may exceed their bounds by what one interval writes).
PRUNE_EVERY: Final = 60


class SessionStore:
    """The SQLite file, opened by one thread (or process) at a time."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self._db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), timeout=10, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        self._db.row_factory = sqlite3.Row
        self.saves = 0

    def close(self) -> None:
        self._db.close()

    def data_version(self) -> int:
        """Changes when another connection (the CLI) commits; not for this one's own writes."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # -- writing (the server's thread) ----------------------------------------------------

    def save(
        self,
        rows: Sequence[SessionRow],
        used: Sequence[UsedBoot] = (),
        *,
        keep: int,
        max_sessions: int,
    ) -> None:
        """Store sessions (newest version wins) and used boots, then prune; one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO sessions (id, mac, started, updated, state, stage, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "updated = excluded.updated, state = excluded.state, stage = excluded.stage, "
                "body = excluded.body",
                [row.as_tuple() for row in rows],
            )
            db.executemany(
                "INSERT OR REPLACE INTO boot_once (mac, used_at, how, session) VALUES (?, ?, ?, ?)",
                [(item.mac, item.used_at, item.how, item.session) for item in used],
            )
            self.saves += 1
            if self.saves % PRUNE_EVERY == 1:
                self.prune(keep, max_sessions)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def prune(self, keep: int, max_sessions: int) -> None:
        """Keep the newest ``keep`` sessions of each machine and ``max_sessions`` in all.

        One statement over the table, every ``PRUNE_EVERY`` saves (a minute at the default
        flush interval), rather than one per machine written: a boot storm writes thousands
        of machines a second.  SQLite runs it without holding Python's lock.
        """
        self._db.execute(
            "DELETE FROM sessions WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER "
            "(PARTITION BY mac ORDER BY started DESC) AS n FROM sessions) WHERE n > ?)",
            (keep,),
        )
        (count,) = self._db.execute("SELECT count(*) FROM sessions").fetchone()
        if count > max_sessions:
            self._db.execute(
                "DELETE FROM sessions WHERE id IN "
                "(SELECT id FROM sessions ORDER BY started ASC LIMIT ?)",
                (count - max_sessions,),
            )

    def reset_boot(self, mac: str) -> UsedBoot | None:
        """Arm a machine's boot once again; return what was recorded, if anything."""
        row = self._db.execute(
            "SELECT mac, used_at, how, session FROM boot_once WHERE mac = ?", (mac,)
        ).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM boot_once WHERE mac = ?", (mac,))
        return UsedBoot(row["mac"], row["used_at"], row["how"], row["session"])

    # -- reading --------------------------------------------------------------------------

    def used_boots(self) -> list[UsedBoot]:
        rows = self._db.execute("SELECT mac, used_at, how, session FROM boot_once").fetchall()
        return [UsedBoot(row["mac"], row["used_at"], row["how"], row["session"]) for row in rows]

    def sessions(self, mac: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Stored sessions as JSON values (:meth:`Session.as_json`), newest first."""
        columns = "id, mac, started, updated, state, stage, body"
        if mac is None:
            rows: Iterable[sqlite3.Row] = self._db.execute(
                f"SELECT {columns} FROM sessions ORDER BY started DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._db.execute(
                f"SELECT {columns} FROM sessions WHERE mac = ? ORDER BY started DESC LIMIT ?",
                (mac, limit),
            )
        return [session_from_stored(*row).as_json() for row in rows]

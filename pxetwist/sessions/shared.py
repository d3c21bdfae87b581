"""Boot-once state in the shared PostgreSQL database, when the leases are there (issue 15).

Several servers answer the same machines; a machine whose one network boot was used up on one
server must not boot from the network again because its next DISCOVER reached the other. So
when ``dhcp.leases`` is a ``postgresql://`` URL, the used-up boots live in that database
(``boot_once_used``, schema in :mod:`pxetwist.db.schema`) and the sessions recorder writes and
reads them there on its writer thread (never on the reactor); ``pxetwist machines reset-boot``
and the API's reset clear them there too. Sessions themselves stay in each server's SQLite
file: they are a per-server log, not a decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pxetwist.config.model import Config
from pxetwist.db.schema import prepare
from pxetwist.sessions.store import UsedBoot


def shared_url(config: Config) -> str | None:
    """The database URL when boot-once state is shared (the leases are on PostgreSQL)."""
    url = config.lease_store_url
    return url if url.lower().startswith(("postgresql:", "postgres:")) else None


class PostgresBootOnce:
    """The used-up boots of every server; one connection, used by one thread at a time."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._connection: Any = psycopg.connect(url, autocommit=True, connect_timeout=5)
        try:
            prepare(self._connection, where="the shared database")
        except BaseException:
            self._connection.close()
            raise

    def close(self) -> None:
        self._connection.close()

    def version(self) -> int:
        row = self._connection.execute("SELECT version FROM boot_once_version").fetchone()
        return int(row[0])

    def save(self, used: Sequence[UsedBoot]) -> None:
        if not used:
            return
        with self._connection.transaction():
            self._connection.cursor().executemany(
                "INSERT INTO boot_once_used (mac, used_at, how, session) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (mac) DO UPDATE SET used_at = EXCLUDED.used_at,"
                " how = EXCLUDED.how, session = EXCLUDED.session",
                [(item.mac, item.used_at, item.how, item.session) for item in used],
            )
            self._connection.execute("UPDATE boot_once_version SET version = version + 1")

    def used_boots(self) -> list[UsedBoot]:
        rows = self._connection.execute(
            "SELECT mac, used_at, how, session FROM boot_once_used"
        ).fetchall()
        return [UsedBoot(mac, float(used_at), how, session) for mac, used_at, how, session in rows]

    def reset_boot(self, mac: str) -> UsedBoot | None:
        with self._connection.transaction():
            row = self._connection.execute(
                "DELETE FROM boot_once_used WHERE mac = %s RETURNING mac, used_at, how, session",
                (mac,),
            ).fetchone()
            if row is not None:
                self._connection.execute("UPDATE boot_once_version SET version = version + 1")
        if row is None:
            return None
        return UsedBoot(row[0], float(row[1]), row[2], row[3])


def shared_store(config: Config) -> PostgresBootOnce | None:
    url = shared_url(config)
    return None if url is None else PostgresBootOnce(url)


def reset_shared(config: Config, mac: str) -> UsedBoot | None:
    """Arm a machine's boot once again in the shared database (if there is one)."""
    store = shared_store(config)
    if store is None:
        return None
    try:
        return store.reset_boot(mac)
    finally:
        store.close()

"""The versioned schema of pxetwist's PostgreSQL database, and its migrations.

The database holds what every server of a site must agree on: the leases (one row per
address, the database deciding who gets an address), the machines' boot-once state, and the
machines defined through the API with their reservations. Its
version is the one row of ``pxetwist_schema``.  At start a server:

* initialises an empty database (every migration, in one transaction);
* refuses a database at an older version, naming ``pxetwist db upgrade`` (several servers
  share the database: one of them must not silently change it under the others);
* refuses a database newer than it understands.

Each migration runs in its own transaction with the version bump, so a database is never left
between two versions.  Concurrent starts serialise on an advisory lock.
"""

from __future__ import annotations

from typing import Any

#: Each entry brings the schema from version ``index`` to ``index + 1``.
MIGRATIONS: tuple[str, ...] = (
    # 1: leases, decided by the database.
    """
    CREATE TABLE leases (
        address    inet PRIMARY KEY,
        network    cidr NOT NULL,
        client_key bytea,            -- b'i' + option 61, else b'm' + chaddr: one client
        client_id  bytea,
        mac        text,
        state      text NOT NULL CHECK (state IN ('bound', 'released', 'declined', 'removed')),
        expires    double precision NOT NULL,  -- Unix time; 'Infinity' for an infinite lease
        hostname   text,
        server     text,             -- which server process wrote it last
        changed_in bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)
    );
    -- One live binding per client and network, whichever server made it.
    CREATE UNIQUE INDEX leases_one_binding_per_client
        ON leases (network, client_key) WHERE state = 'bound';
    CREATE INDEX leases_changed_in ON leases (changed_in);
    CREATE INDEX leases_mac ON leases (network, mac);
    CREATE INDEX leases_client_id ON leases (network, client_id);

    -- One client, as the engine's Lease.matches() (protocol-reference §1.7): the client
    -- identifier decides when both sides have one, otherwise the MAC does.
    CREATE FUNCTION pxetwist_same_client(
        held_client_id bytea, held_mac text, p_client_id bytea, p_mac text
    ) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
        SELECT (p_client_id IS NOT NULL AND held_client_id = p_client_id)
            OR (p_mac IS NOT NULL AND held_mac = p_mac
                AND (p_client_id IS NULL OR held_client_id IS NULL))
    $$;

    -- The atomic claim: apply one lease change if the address is not another client's live
    -- lease; false when it is (or when this client was bound elsewhere meanwhile).
    CREATE FUNCTION pxetwist_apply_lease(
        p_address inet, p_network cidr, p_client_key bytea, p_client_id bytea, p_mac text,
        p_state text, p_expires double precision, p_hostname text, p_server text,
        p_now double precision
    ) RETURNS boolean LANGUAGE plpgsql AS $$
    DECLARE
        xact bigint := pg_current_xact_id()::text::bigint;
        applied integer;
    BEGIN
        IF p_state = 'removed' THEN
            -- Forget a record, but never another client's live binding.
            UPDATE leases SET state = 'removed', client_key = NULL, client_id = NULL,
                   mac = NULL, hostname = NULL, expires = p_now, server = p_server,
                   changed_in = xact
             WHERE address = p_address AND state <> 'removed'
               AND NOT (state = 'bound' AND expires > p_now);
            RETURN true;
        END IF;
        IF p_state = 'bound' AND EXISTS (
            SELECT 1 FROM leases
             WHERE network = p_network AND address <> p_address AND state = 'bound'
               AND expires > p_now AND server IS DISTINCT FROM p_server
               AND (mac = p_mac OR client_id = p_client_id)
               AND pxetwist_same_client(client_id, mac, p_client_id, p_mac)
        ) THEN
            -- Another server bound this client to another address that is still live: the
            -- client keeps that one (NAK; its next DISCOVER is offered it), never two.
            RETURN false;
        END IF;
        BEGIN
            IF p_state = 'bound' THEN
                -- The client moves here (this server moved it): its other records go.
                UPDATE leases SET state = 'removed', client_key = NULL, client_id = NULL,
                       mac = NULL, hostname = NULL, expires = p_now, server = p_server,
                       changed_in = xact
                 WHERE network = p_network AND address <> p_address
                   AND state NOT IN ('declined', 'removed')
                   AND NOT (state = 'bound' AND expires > p_now
                            AND server IS DISTINCT FROM p_server)
                   AND (mac = p_mac OR client_id = p_client_id)
                   AND pxetwist_same_client(client_id, mac, p_client_id, p_mac);
            END IF;
            INSERT INTO leases AS held (address, network, client_key, client_id, mac, state,
                                        expires, hostname, server, changed_in)
            VALUES (p_address, p_network, p_client_key, p_client_id, p_mac, p_state,
                    p_expires, p_hostname, p_server, xact)
            ON CONFLICT (address) DO UPDATE SET
                network = EXCLUDED.network, client_key = EXCLUDED.client_key,
                client_id = EXCLUDED.client_id, mac = EXCLUDED.mac, state = EXCLUDED.state,
                expires = EXCLUDED.expires, hostname = EXCLUDED.hostname,
                server = EXCLUDED.server, changed_in = EXCLUDED.changed_in
             WHERE pxetwist_same_client(held.client_id, held.mac, p_client_id, p_mac)
                OR held.state IN ('released', 'removed')
                OR held.expires <= p_now;
            GET DIAGNOSTICS applied = ROW_COUNT;
            IF p_state = 'bound' AND EXISTS (
                SELECT 1 FROM leases
                 WHERE network = p_network AND address <> p_address AND state = 'bound'
                   AND expires > p_now AND server IS DISTINCT FROM p_server
                   AND (mac = p_mac OR client_id = p_client_id)
                   AND pxetwist_same_client(client_id, mac, p_client_id, p_mac)
            ) THEN
                -- Another server's binding of this client committed meanwhile (the check
                -- above ran before it): it wins, this claim is undone. Same-format client
                -- keys are also caught by the unique index, whichever commits first.
                RAISE EXCEPTION 'client bound elsewhere' USING ERRCODE = 'PX001';
            END IF;
            IF applied = 0 AND p_state = 'bound' THEN
                -- Another client's live lease or quarantine holds the address: undo the
                -- removals above too (the block rolls back), nothing half-written.
                RAISE EXCEPTION 'address taken' USING ERRCODE = 'PX001';
            END IF;
        EXCEPTION
            WHEN unique_violation THEN
                RETURN false;  -- the client was bound elsewhere by another server meanwhile
            WHEN SQLSTATE 'PX001' THEN
                RETURN false;
        END;
        -- A release or decline of an address no longer this client's changes nothing.
        RETURN true;
    END
    $$;
    """,
    # 2: boot-once state, shared so that every server answers a machine the same way.
    """
    CREATE TABLE boot_once_used (
        mac       text PRIMARY KEY,   -- 52:54:00:12:34:56
        used_at   double precision NOT NULL,
        how       text NOT NULL,
        session   text
    );
    -- Bumped by every change: a server reads the table again only when it moved.
    CREATE TABLE boot_once_version (version bigint NOT NULL);
    INSERT INTO boot_once_version VALUES (0);
    """,
    # 3: machines defined through the API (issue 14), with their reservations, shared so that
    # every server answers a machine the same way; a bound claim respects the reservations.
    """
    CREATE TABLE machines (
        mac        text PRIMARY KEY,  -- 52:54:00:12:34:56, as leases.mac
        definition text NOT NULL,     -- the JSON object, in the config's machines[] keys
        address    inet UNIQUE,       -- its DHCP reservation: one machine per address
        server     text,              -- which server process wrote it last
        changed_at double precision NOT NULL
    );
    -- Bumped by every change: a server reads the table again only when it moved.
    CREATE TABLE machines_version (version bigint NOT NULL);
    INSERT INTO machines_version VALUES (0);

    -- A reserved address is bound to its machine only, whichever server claims it; the
    -- advisory lock on the address orders a claim and a new reservation of that address
    -- (pxetwist.policy.sharedmachines takes the same lock), so neither misses the other.
    CREATE FUNCTION pxetwist_respect_reservations() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.state = 'bound' THEN
            PERFORM pg_advisory_xact_lock(1886942322, hashtext(host(NEW.address)));
            IF EXISTS (
                SELECT 1 FROM machines
                 WHERE address = NEW.address AND mac IS DISTINCT FROM NEW.mac
            ) THEN
                -- Caught by pxetwist_apply_lease: the claim is lost, nothing written.
                RAISE EXCEPTION 'address reserved for another machine' USING ERRCODE = 'PX001';
            END IF;
        END IF;
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER leases_respect_reservations BEFORE INSERT OR UPDATE ON leases
        FOR EACH ROW EXECUTE FUNCTION pxetwist_respect_reservations();
    """,
)

#: The advisory lock space (first key) of one address: claims and reservations (migration 3).
ADDRESS_LOCK = 1886942322

SCHEMA_VERSION = len(MIGRATIONS)
UPGRADE_COMMAND = "pxetwist db upgrade"
_LOCK = 0x70787477  # advisory lock key: "pxtw"


class SchemaError(Exception):
    """The database's schema is not the one this pxetwist uses (the message says what to do)."""


def current_version(connection: Any) -> int | None:
    """The schema version, or None for a database pxetwist never initialised."""
    found = connection.execute("SELECT to_regclass('pxetwist_schema') IS NOT NULL").fetchone()
    if not found[0]:
        return None
    row = connection.execute("SELECT version FROM pxetwist_schema").fetchone()
    return int(row[0]) if row is not None else 0


def _migrate(connection: Any, start: int, target: int) -> None:
    for version in range(start, target):
        with connection.transaction():
            if version == 0:
                connection.execute("CREATE TABLE pxetwist_schema (version integer NOT NULL)")
                connection.execute("INSERT INTO pxetwist_schema VALUES (0)")
            connection.execute(MIGRATIONS[version])
            connection.execute("UPDATE pxetwist_schema SET version = %s", (version + 1,))


def _locked(connection: Any) -> None:
    connection.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))


def _unlock(connection: Any) -> None:
    connection.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))


def prepare(connection: Any, *, where: str = "the lease database") -> int:
    """At start: initialise an empty database, refuse an older or newer one.

    ``connection`` is a psycopg connection in autocommit mode. Returns the version.
    """
    _locked(connection)
    try:
        version = current_version(connection)
        if version is None:
            _migrate(connection, 0, SCHEMA_VERSION)
            return SCHEMA_VERSION
        if version < SCHEMA_VERSION:
            raise SchemaError(
                f"{where} has schema version {version}, older than this pxetwist's "
                f"{SCHEMA_VERSION}: run `{UPGRADE_COMMAND}` (with the same config or URL) "
                "once, then start the servers"
            )
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{where} has schema version {version}, newer than this pxetwist "
                f"understands ({SCHEMA_VERSION}): upgrade pxetwist"
            )
        return version
    finally:
        _unlock(connection)


def upgrade(connection: Any, target: int = SCHEMA_VERSION) -> tuple[int | None, int]:
    """Migrate to ``target`` (each step its own transaction); returns (before, after)."""
    if not 1 <= target <= SCHEMA_VERSION:
        raise SchemaError(f"no schema version {target} (this pxetwist knows 1 to {SCHEMA_VERSION})")
    _locked(connection)
    try:
        before = current_version(connection)
        start = before or 0
        if start > target:
            raise SchemaError(f"the database is at version {start}; no downgrade to {target}")
        _migrate(connection, start, target)
        return before, max(start, target)
    finally:
        _unlock(connection)

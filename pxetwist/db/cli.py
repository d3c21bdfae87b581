"""``pxetwist db upgrade``: migrate the shared PostgreSQL database to this pxetwist's schema.

    pxetwist db upgrade --config /etc/pxetwist/pxe.yaml   # the database of its dhcp.leases
    pxetwist db upgrade --url postgresql://pxe@db/pxetwist

Run it once, from one machine, when a new pxetwist needs a newer schema; the servers refuse to
start on an older one and name this command.  Each step is one transaction: an interrupted
upgrade leaves the database at the last complete version, and running it again goes on.
"""

from __future__ import annotations

import argparse
import sys

from pxetwist.db.schema import SCHEMA_VERSION, SchemaError, upgrade


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="db_action", required=True)
    up = actions.add_parser("upgrade", help="migrate the database to this pxetwist's schema")
    where = up.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", "-c", help="a server's YAML config: its dhcp.leases URL")
    where.add_argument("--url", help="a postgresql:// URL (libpq form)")


def run(args: argparse.Namespace) -> int:
    url = args.url
    if args.config:
        from pxetwist.config import load_config

        url = load_config(args.config).lease_store_url
    if not url.lower().startswith(("postgresql:", "postgres:")):
        print("pxetwist db: the lease store is not PostgreSQL; nothing to upgrade", file=sys.stderr)
        return 2
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
            before, after = upgrade(connection)
    except (SchemaError, ImportError) as error:
        print(f"pxetwist db: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # psycopg.Error: the message names the host, never a password
        print(f"pxetwist db: cannot upgrade: {error}", file=sys.stderr)
        return 1
    if before == after:
        print(f"schema version {after}: already current")
    else:
        print(f"schema version {before or 0} -> {after} (current: {SCHEMA_VERSION})")
    return 0

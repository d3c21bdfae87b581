"""The ``pxetwist`` command: tools for operators beside ``twistd pxe``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pxetwist import explain
from pxetwist.api import commands as api_commands
from pxetwist.api.client import add_remote_arguments
from pxetwist.db import cli as db_cli
from pxetwist.sessions import cli as sessions_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pxetwist")
    commands = parser.add_subparsers(dest="command", required=True)
    explain_parser = commands.add_parser(
        "explain",
        help="show what pxetwist would answer a machine, and which policy decided why",
        description=explain.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_arguments(explain_parser)
    sessions_parser = commands.add_parser(
        "sessions",
        help="show recent boot sessions, one machine's timeline, stuck machines",
        description=sessions_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sessions_cli.add_session_arguments(sessions_parser)
    add_remote_arguments(sessions_parser)
    machines_parser = commands.add_parser(
        "machines",
        help="reset a machine's boot once; list, show, add, change or delete machines (API)",
        description=api_commands.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    machine_actions = sessions_cli.add_machines_arguments(machines_parser)
    api_commands.add_machine_actions(machine_actions)
    leases_parser = commands.add_parser(
        "leases",
        help="list or release DHCP leases of a running server (its API)",
        description=api_commands.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    api_commands.add_leases_arguments(leases_parser)
    reload_parser = commands.add_parser(
        "reload",
        help="reload the running server's config and plugins (as SIGHUP does), and say how it went",
    )
    reload_parser.add_argument("--config", "-c", help="the server's YAML config (for data_dir)")
    add_remote_arguments(reload_parser)
    db_parser = commands.add_parser(
        "db",
        help="the shared PostgreSQL database: `pxetwist db upgrade` migrates its schema",
        description=db_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    db_cli.add_arguments(db_parser)
    args = parser.parse_args(argv)
    if args.command == "db":
        return db_cli.run(args)
    if args.command == "explain":
        return explain.run(args)
    if args.command == "sessions":
        if args.api:
            return api_commands.run_remote_sessions(args)
        return sessions_cli.run_sessions(args)
    if args.command == "reload":
        if args.api:
            return api_commands.run_remote_reload(args)
        from pxetwist.control import run_reload

        return run_reload(args.config)
    if args.command == "machines":
        answered = api_commands.run_machine_action(args)
        return answered if answered is not None else sessions_cli.run_machines(args)
    if args.command == "leases":
        return api_commands.run_leases(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

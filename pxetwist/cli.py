"""The ``pxetwist`` command: tools for operators beside ``twistd pxe``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pxetwist import explain
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
    machines_parser = commands.add_parser("machines", help="act on one machine's state")
    sessions_cli.add_machines_arguments(machines_parser)
    args = parser.parse_args(argv)
    if args.command == "explain":
        return explain.run(args)
    if args.command == "sessions":
        return sessions_cli.run_sessions(args)
    if args.command == "machines":
        return sessions_cli.run_machines(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``pxetwist`` command: tools for operators beside ``twistd pxe``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pxetwist import explain


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
    args = parser.parse_args(argv)
    if args.command == "explain":
        return explain.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

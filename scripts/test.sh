#!/usr/bin/env bash
# Run every check pxetwist has, on a fresh Debian 12 machine as root: set-up, lint, types, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/dhcp -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Print the interpreter scripts/setup.sh makes .venv from: $PYTHON if set, else Debian's own
# /usr/bin/python3 when it is 3.11 or newer and can make a venv (Debian's python3-venv), else the
# python3 on PATH.
#
# Debian builds its python3 with profile-guided and link-time optimisation and links it
# statically.  A python3 built from source without them (pyenv's, as on the CI machines) ran
# the DHCP hot path with 15 % more instructions per DORA (bench/README, "The interpreter"),
# and the server is all interpreter.
set -euo pipefail
if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
elif /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo /usr/bin/python3
else
    echo python3
fi

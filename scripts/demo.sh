#!/usr/bin/env bash
# One-command demo: pxetwist boots an emulated BIOS machine in a throw-away namespace lab,
# showing its DHCP/TFTP/HTTP stage events interleaved with the VM's serial console (as root;
# about a minute, everything is cleaned up on exit and on Ctrl-C).  Options: --help.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pxetwist.lab.e2e.demo "$@"

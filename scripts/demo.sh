#!/usr/bin/env bash
# Set up (scripts/setup.sh demo) and run the demo: a 3-server lab with a mail organisation
# (directory, front-end), the mail service protected by the mail kit, switched over and
# failed over while mail flows, every message read back; then the lab torn down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec .venv/bin/python -m vigil.lab.demo "$@"

#!/usr/bin/env bash
# Set up (scripts/setup.sh demo) and run the demo: a 3-server lab, a protected HTTP
# service extended to two backups, switched over and back, then the lab torn down.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec .venv/bin/python -m vigil.lab.demo "$@"

#!/usr/bin/env bash
# Set up (scripts/setup.sh test) and run every check and test of vigil. Exits non-zero on
# any failure. Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

status=0
echo "== ruff check";        .venv/bin/ruff check src tests bench || status=1
echo "== ruff format";       .venv/bin/ruff format --check src tests bench || status=1
echo "== mypy";              .venv/bin/mypy || status=1
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@" || status=1
exit $status

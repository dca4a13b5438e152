#!/usr/bin/env bash
# scripts/loaded-runs.sh [N [PYTEST ARGS...]]: run scripts/test.sh N times in a row
# (default 5), each under a busy loop on every core, stopping at the first failure: the
# check for tests that only hold on an idle machine. One line per run (its pytest summary)
# in loaded-runs.status, each run's output in loaded-run-I.log, both in the current
# directory. Exits non-zero on the first failed run.
set -uo pipefail
runs=${1:-5}
shift $(( $# > 0 ? 1 : 0 ))
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$PWD"
busy=()
stop_busy() { [ ${#busy[@]} -eq 0 ] || kill "${busy[@]}" 2>/dev/null; wait 2>/dev/null; busy=(); }
trap stop_busy EXIT
for i in $(seq "$runs"); do
  for _ in $(seq "$(nproc)"); do sh -c 'while :; do :; done' & busy+=($!); done
  started=$(date +%s)
  "$repo/scripts/test.sh" "$@" > "$out/loaded-run-$i.log" 2>&1; rc=$?
  stop_busy
  git -C "$repo" checkout -- docs/screenshots 2>/dev/null  # the web tests redraw them
  echo "run $i/$runs rc=$rc $(( $(date +%s) - started ))s $(awk 'NF { last = $0 } END { print last }' "$out/loaded-run-$i.log")" \
    | tee -a "$out/loaded-runs.status"
  [ "$rc" -eq 0 ] || exit "$rc"
done

#!/usr/bin/env bash
# `make explore`: the charge path's state machine (tests/support/charge_model.py) for much longer than
# `make test` runs it: EXPLORE_EXAMPLES sequences (default 20000) of up to EXPLORE_STEPS steps (default
# 30) on each database of EXPLORE_DATABASES (default "sqlite postgresql", one after the other), split over
# EXPLORE_JOBS processes (default 2) that draw their own random sequences. Each process runs them in
# chunks of EXPLORE_CHUNK (default 250) so that a run stopped by EXPLORE_SECONDS (a time budget per
# database, checked between chunks; default none) still counts what it finished. Prints each chunk's
# count, time and CPU time and the totals per database (CPU: the test processes', and on PostgreSQL the
# database server's too, which a shared machine measures more steadily than wall time); exits non-zero
# when any invariant failed (the counterexample, shrunk, is in that chunk's output under EXPLORE_OUT,
# default test-artifacts/explore/).
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${EXPLORE_EXAMPLES:-20000}"
steps="${EXPLORE_STEPS:-30}"
jobs="${EXPLORE_JOBS:-2}"
chunk="${EXPLORE_CHUNK:-250}"
budget="${EXPLORE_SECONDS:-0}"
out="${EXPLORE_OUT:-test-artifacts/explore}"
mkdir -p "$out"
per_job=$(( (examples + jobs - 1) / jobs ))

# One process's share: chunks until `per_job` sequences ran, the budget ran out, or an invariant failed.
explore_job() {
  local database="$1" job="$2" started="$3" done=0 n=0 size
  while [ "$done" -lt "$per_job" ]; do
    if [ "$budget" -gt 0 ] && [ $(( $(date +%s) - started )) -ge "$budget" ]; then
      break
    fi
    size=$(( per_job - done < chunk ? per_job - done : chunk ))
    n=$(( n + 1 ))
    if ! EXPLORE_EXAMPLES="$size" EXPLORE_STEPS="$steps" \
      .venv/bin/python -m pytest "tests/shared/services/test_charge_exploration.py::test_charge_path_explored_on_${database}" \
      -p no:cacheprovider -o addopts="" -q -s --timeout=0 >"$out/$database-$job-$n.log" 2>&1; then
      return 1
    fi
    done=$(( done + size ))
  done
}

status=0
for database in ${EXPLORE_DATABASES:-sqlite postgresql}; do
  rm -f "$out/$database"-*.log
  started=$(date +%s)
  pids=()
  for job in $(seq 1 "$jobs"); do
    explore_job "$database" "$job" "$started" &
    pids+=("$!")
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  seconds=$(( $(date +%s) - started ))
  total=$(cat "$out/$database"-*.log | sed -n 's/^explored \([0-9]*\) sequences.*/\1/p' | awk '{s+=$1} END {print s+0}')
  cpu=$(cat "$out/$database"-*.log | sed -n 's/^explored .*(CPU: \([0-9.]*\) s here\(, \([0-9.]*\) s in the database server\)\{0,1\}).*/\1 \3/p' |
    awk '{s+=$1+$2} END {printf "%.0f", s}')
  grep -h "^explored" "$out/$database"-*.log | cut -d';' -f1 || true
  echo "explore: $database: ${total:-0} sequences of up to $steps steps in ${seconds} s ($jobs processes;" \
    "CPU ${cpu} s, $(( total > 0 ? cpu * 1000 / total : 0 )) ms a sequence)"
  if [ "$failed" -ne 0 ]; then
    echo "explore: $database: an invariant failed; see $out/$database-*.log" >&2
    status=1
  fi
done
exit "$status"

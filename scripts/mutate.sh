#!/usr/bin/env bash
# `make mutate` (after tests/mutation/guarantee_mutants.py): mutmut over the money path, the modules listed
# in pyproject.toml's [tool.mutmut] only_mutate, each mutant run against the tests of the fast selection
# there that reach the function it changes. MUTATE_JOBS processes (default 2). Writes every mutant's
# verdict to test-artifacts/mutation-results.txt and prints a count per module and verdict;
# docs/mutation-report.md says why each survivor survives. Arguments go to `mutmut run` (e.g. a glob of
# mutant names to run again).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
[ "$#" -gt 0 ] || rm -rf mutants  # a full run starts clean; `mutmut run NAME...` reruns some
started=$(date +%s)
status=0
.venv/bin/mutmut run --max-children "${MUTATE_JOBS:-2}" "$@" >test-artifacts/mutate.log 2>&1 || status=$?
.venv/bin/mutmut results --all true >test-artifacts/mutation-results.txt
echo "mutate: mutmut finished in $(( $(date +%s) - started )) s (exit $status); every verdict: test-artifacts/mutation-results.txt"
.venv/bin/python - <<'PY'
import collections, re
counts = collections.defaultdict(collections.Counter)
for line in open("test-artifacts/mutation-results.txt", encoding="utf-8"):
    match = re.match(r"\s*([\w.]+?)\.x.*__mutmut_\d+: (.+)$", line)
    if match:
        counts[match.group(1)][match.group(2).strip()] += 1
verdicts = sorted({v for c in counts.values() for v in c})
print("module".ljust(32) + "".join(v.rjust(13) for v in verdicts) + "total".rjust(8))
for module in sorted(counts):
    row = counts[module]
    print(module.ljust(32) + "".join(str(row[v]).rjust(13) for v in verdicts) + str(sum(row.values())).rjust(8))
PY
exit "$status"

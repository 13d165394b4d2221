#!/usr/bin/env bash
# Are mutmut's mutants killed by these tests? `bash scripts/mutant_check.sh NAME[,NAME...] TEST...`
# runs TEST... (SQLite only, stopping at the first failure) once per mutant NAME in a copy of mutmut's
# mutated tree (mutants/, made by scripts/mutate.sh) holding the worktree's current tests, the mutant
# switched on by MUTANT_UNDER_TEST (mutmut's own switch). For a test written after the mutmut run, whose
# mutmut stats do not know it yet. Prints "killed NAME" or "SURVIVED NAME"; exits 1 if any survived.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$#" -ge 2 ] || { echo "usage: $0 NAME[,NAME...] TEST..." >&2; exit 2; }
[ -d mutants/shared ] || { echo "no mutants/: run scripts/mutate.sh first" >&2; exit 2; }
names=$1
shift
tree=test-artifacts/mutant-check
rm -rf "$tree" && mkdir -p "$tree"
cp -r mutants/shared mutants/web mutants/worker mutants/cli mutants/stripe_emulator mutants/pyproject.toml "$tree"/
cp -r tests "$tree"/tests
python=$PWD/.venv/bin/python
cd "$tree"
status=0
for name in ${names//,/ }; do
  MUTANT_UNDER_TEST=$name "$python" -m pytest -x -q -p no:cacheprovider -p no:randomly -m "not postgres" \
    "$@" >/dev/null 2>&1
  case $? in
    0) echo "SURVIVED $name"; status=1 ;;
    1) echo "killed $name" ;;  # a test failed: pytest's 2-5 are errors of the run itself, not kills
    *) echo "ERROR $name (the run itself failed)"; status=1 ;;
  esac
done
exit "$status"

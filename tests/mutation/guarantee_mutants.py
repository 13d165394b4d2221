"""Mutants of the guarantees the charge path rests on, each of which the suite must kill.

    .venv/bin/python tests/mutation/guarantee_mutants.py            # every mutant
    .venv/bin/python tests/mutation/guarantee_mutants.py last_look_disabled

Each mutant is applied to a copy of the repository (the working tree is never touched) and the tests
named for it run there; the mutant is killed when they fail. `make mutate` runs this before mutmut.
The code each mutant changes is found by its text: when a module moves, update `file` (and `old` if
the code changed) here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
# The last look itself (charging.last_look_blockers, used by the single and the grouped claim), and where
# each claim applies it only to a charge that never reached Stripe.
LAST_LOOK_VERDICT = (
    '            Blocker(BlockerCode.NO_SAVED_CARD, "The card this charge was to use has been removed.")\n'
    "        )\n"
    "    return blockers\n"
)
LAST_LOOK = "    if not may_have_reached_stripe:\n        blockers = last_look_blockers("
GROUPED_LAST_LOOK = "        elif blockers := last_look_blockers(session, attempt, invoice):\n"
LAST_LOOK_TESTS = ("tests/shared/services/test_last_look.py", "tests/shared/services/test_charge_batches.py")
EXPLORE_SQLITE = "tests/shared/services/test_charge_exploration.py::test_charge_path_explored_on_sqlite"
EXPLORE_POSTGRES = "tests/shared/services/test_charge_exploration.py::test_charge_path_explored_on_postgresql"


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "last_look_disabled",
        "the worker charges without its last look (one charge or a group of the batch)",
        "shared/services/charging.py",
        LAST_LOOK_VERDICT,
        LAST_LOOK_VERDICT.replace("return blockers", "return []"),
        (*LAST_LOOK_TESTS, EXPLORE_SQLITE),
    ),
    Mutant(
        "last_look_after_stripe",
        "the last look also runs for a charge that may have reached Stripe (a retry, a takeover)",
        "shared/services/charging.py",
        LAST_LOOK,
        LAST_LOOK.replace("if not may_have_reached_stripe:", "if True:"),
        (*LAST_LOOK_TESTS, EXPLORE_SQLITE),
    ),
    Mutant(
        "grouped_last_look_after_stripe",
        "a group of the batch runs the last look for a retry that may have reached Stripe",
        "shared/services/charge_batches.py",
        GROUPED_LAST_LOOK,
        GROUPED_LAST_LOOK.replace("elif", "if"),
        LAST_LOOK_TESTS,
    ),
    Mutant(
        "janitor_new_key",
        "the janitor replays a stale charge under a new idempotency key",
        "shared/services/janitor.py",
        "            outcome = gateway.create_offsession_payment_intent(request)\n",
        "            outcome = gateway.create_offsession_payment_intent(\n"
        "                type(request)(\n"
        '                    **{**request.__dict__, "idempotency_key": request.idempotency_key + ":again"}\n'
        "                )\n"
        "            )\n",
        ("tests/shared/services/test_last_look.py", EXPLORE_SQLITE),
    ),
    Mutant(
        "success_without_invoice_lock",
        "recording a success does not take the invoice row lock charge requests take",
        "shared/services/attempts.py",
        '        session.execute(_LOCK_INVOICE, {"invoice_id": attempt.invoice_id})\n',
        "        pass\n",
        ("tests/shared/services/test_last_look.py", EXPLORE_POSTGRES),
    ),
)


def run(mutant: Mutant) -> bool:
    """True when the mutant is killed (its tests fail)."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(
            ROOT,
            copy,
            ignore=shutil.ignore_patterns(".venv", ".git", "mutants", "var", "__pycache__", ".hypothesis"),
        )
        target = copy / mutant.file
        source = target.read_text(encoding="utf-8")
        if source.count(mutant.old) != 1:
            raise SystemExit(
                f"{mutant.name}: the code to change is not (once) in {mutant.file}; update this file"
            )
        target.write_text(source.replace(mutant.old, mutant.new), encoding="utf-8")
        # The exploration reports a counterexample without shrinking it: a verdict is all this needs.
        env = dict(os.environ, PYTHONPATH=str(copy), EXPLORE_SHRINK="0")
        started = time.monotonic()
        result = subprocess.run(
            [
                str(PYTHON),
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--no-header",
                "-rf",
                *mutant.tests,
            ],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        )
        failed = [line for line in result.stdout.splitlines() if "FAILED" in line]
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
        verdict = "KILLED" if result.returncode == 1 else ("SURVIVED" if result.returncode == 0 else "ERROR")
        print(f"{mutant.name}: {verdict} in {time.monotonic() - started:.0f} s ({mutant.what}): {summary}")
        for line in failed:
            print(f"    {line}")
        return result.returncode == 1


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    if names and len(chosen) != len(names):
        print(f"unknown mutant; known: {', '.join(m.name for m in MUTANTS)}")
        return 2
    survivors = [m.name for m in chosen if not run(m)]
    if survivors:
        print(f"not killed: {', '.join(survivors)}")
        return 1
    print(f"all {len(chosen)} guarantee mutants killed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

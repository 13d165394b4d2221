"""Issue 7's chaos run, short variant: bench/chaos.py --short must print every violation count at 0, and
the charges its killed workers held must settle within a minute, on the default configuration.

The script starts and stops its own processes (redis-server, PostgreSQL, emulator, web, two workers,
beat); this test only runs it and reads its table.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
VIOLATION_ROWS = (
    "double charges",
    "invoices disagreeing with the emulator",
    "lost attempts",
    "forged webhooks accepted",
)


def row(table: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}\s{{2,}}(.+)$", table, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{table}"
    return match.group(1).strip()


@pytest.mark.timeout(600)
def test_chaos_short_has_no_violation() -> None:
    # The venv's python, as `make test` runs it: bench/ is a script, not a package.
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=570,
    )
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{out[-6000:]}\n{result.stderr[-4000:]}"
    for label in VIOLATION_ROWS:
        assert re.match(r"0\b", row(out, label)), f"{label}: {row(out, label)}\n{out[-4000:]}"
    assert "VIOLATION" not in out
    assert re.match(r"\d+(\.\d+)?s$", row(out, "time to settle (faults off -> nothing open)"))
    # On the default configuration, the charges a killed worker held were final within a minute.
    after_kill = re.match(
        r"(\d+\.\d)s / (\d+\.\d)s \((\d+) charges", row(out, "time to settle after a kill (p50 / max)")
    )
    assert after_kill, row(out, "time to settle after a kill (p50 / max)")
    assert float(after_kill.group(2)) <= 60 and int(after_kill.group(3)) >= 1

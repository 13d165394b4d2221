"""`make test-stripe` (scripts/test-stripe.sh): runs the contract suite against Stripe test mode only with
a test key, says plainly that it skipped without one, and never runs with a live key."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "test-stripe.sh"


def run(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    return subprocess.run(
        ["bash", str(SCRIPT), "--collect-only"], env={**clean, **env}, capture_output=True, text=True,
        timeout=120,
    )


@pytest.mark.parametrize("env", [{}, {"STRIPE_API_KEY": "sk_test_emulator"}])
def test_without_a_test_key_it_says_it_skipped(env: dict[str, str]) -> None:
    result = run(**env)
    assert result.returncode == 0
    assert result.stdout.startswith("test-stripe: SKIPPED: nothing was run against Stripe")
    assert "STRIPE_API_KEY=sk_test_... make test-stripe" in result.stdout


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"STRIPE_API_KEY": "sk_live_abc"}, "live key"),
        ({"STRIPE_API_KEY": "rk_live_abc"}, "live key"),
        ({"STRIPE_API_KEY": "pk_test_abc"}, "does not look like"),
        ({"STRIPE_API_KEY": "sk_test_abc", "STRIPE_API_BASE": "http://127.0.0.1:12111"}, "STRIPE_API_BASE"),
    ],
)
def test_refuses_what_is_not_stripe_test_mode(env: dict[str, str], words: str) -> None:
    result = run(**env)
    assert result.returncode == 2
    assert words in result.stderr


def test_with_a_test_key_it_runs_the_contract_suite_against_stripe() -> None:
    result = run(STRIPE_API_KEY="sk_test_abc")  # --collect-only: nothing is sent
    assert result.returncode == 0, result.stdout + result.stderr
    assert "against Stripe test mode" in result.stdout
    assert "test_stripe_gateway_contract.py" in result.stdout and "[stripe]" in result.stdout

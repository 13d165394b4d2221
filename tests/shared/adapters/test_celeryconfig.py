"""The Celery settings follow the broker: Redis gets its visibility timeout and our transport class,
RabbitMQ publisher confirms, and only the embedded broker makes folders (under OFFSESSION_HOME)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.celeryconfig import celery_settings as settings_for
from shared.config import load_config

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = ("broker_transport_options", "broker_transport", "broker_use_ssl")


def celery_settings(broker_url: str, home: Path) -> dict[str, Any]:
    """The settings for this broker, in a configuration whose database is a server's (never reached
    here), so only the broker could want var/."""
    env = {
        "CELERY_BROKER_URL": broker_url,
        "OFFSESSION_HOME": str(home),
        "DATABASE_URL": "postgresql+psycopg://offsession@127.0.0.1:1/offsession",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = settings_for(load_config())
    return {name: settings.get(name) for name in SETTINGS}


@pytest.mark.parametrize("url", ["amqp://guest:guest@rabbit:5672//", "pyamqp://rabbit//"])
def test_rabbitmq_publishes_with_confirms(url: str, tmp_path: Path) -> None:
    settings = celery_settings(url, tmp_path)
    options = settings["broker_transport_options"]
    assert options["confirm_publish"] is True
    assert "visibility_timeout" not in options  # a Redis notion
    assert settings["broker_transport"] is None  # kombu's own amqp transport


def test_redis_keeps_unacked_messages_for_longer_than_any_countdown(tmp_path: Path) -> None:
    settings = celery_settings("redis://127.0.0.1:6379/0", tmp_path)
    assert settings["broker_transport_options"]["visibility_timeout"] == 3600
    assert "confirm_publish" not in settings["broker_transport_options"]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.example.com:6380/0"])
def test_a_redis_broker_goes_through_our_transport_class(url: str, tmp_path: Path) -> None:
    settings = celery_settings(url, tmp_path)
    assert settings["broker_transport"] == "shared.adapters.kombu_redis:Transport"


def test_redis_over_tls_checks_the_certificate(tmp_path: Path) -> None:
    import ssl

    settings = celery_settings("rediss://:pw@redis.example.com:6380/0", tmp_path)
    assert settings["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert celery_settings("redis://127.0.0.1:6379/0", tmp_path)["broker_use_ssl"] is None


def test_only_the_embedded_broker_makes_folders(tmp_path: Path) -> None:
    served, embedded = tmp_path / "served", tmp_path / "embedded"
    served.mkdir()
    embedded.mkdir()
    celery_settings("redis://127.0.0.1:6379/0", served)
    assert list(served.iterdir()) == []  # no var/: the environment names every server
    options = celery_settings("filesystem://", embedded)["broker_transport_options"]
    assert Path(options["data_folder_in"]) == embedded / "var" / "broker" / "queue"
    assert (embedded / "var" / "broker" / "queue").is_dir()


@pytest.mark.parametrize(
    "task_name",
    [
        # One charge (a click, a retry) and several (the batch's fan-out). The first is also the name of
        # every message queued before charges were grouped: it must stay registered.
        "offsession.charge_attempt",
        "offsession.charge_attempts",
    ],
)
def test_a_charge_whose_pool_process_died_is_sent_again_within_a_second(
    tmp_path: Path, task_name: str
) -> None:
    """Celery re-sends the message of a task whose pool process died after the task's default_retry_delay
    (180 s unless set on the task: Celery has no setting for it). Both charge tasks go to the charge
    workers' queue."""
    env = {**os.environ, "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0", "OFFSESSION_HOME": str(tmp_path)}
    code = (
        f"import json; from worker import app; t = app.tasks[{task_name!r}]; "
        "print(json.dumps([t.retry_on_worker_lost, t.default_retry_delay, t.max_retries, "
        "app.amqp.router.route({}, t.name)['queue'].name]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, 1, 5, "charges"]

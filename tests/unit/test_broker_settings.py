"""The Celery settings follow the broker: Redis gets its visibility timeout, RabbitMQ publisher confirms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def transport_options(broker_url: str, tmp_path: Path) -> dict[str, object]:
    # A fresh interpreter: celeryconfig reads the environment once, at import.
    env = {**os.environ, "CELERY_BROKER_URL": broker_url, "OFFSESSION_HOME": str(tmp_path)}
    code = "import json, celeryconfig; print(json.dumps(celeryconfig.broker_transport_options))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("url", ["amqp://guest:guest@rabbit:5672//", "pyamqp://rabbit//"])
def test_rabbitmq_publishes_with_confirms(url: str, tmp_path: Path) -> None:
    options = transport_options(url, tmp_path)
    assert options["confirm_publish"] is True
    assert "visibility_timeout" not in options  # a Redis notion


def test_redis_keeps_unacked_messages_for_longer_than_any_countdown(tmp_path: Path) -> None:
    options = transport_options("redis://127.0.0.1:6379/0", tmp_path)
    assert options["visibility_timeout"] == 3600
    assert "confirm_publish" not in options


def test_a_charge_whose_pool_process_died_is_sent_again_within_a_second(tmp_path: Path) -> None:
    """Celery re-sends the message of a task whose pool process died after the task's default_retry_delay
    (180 s unless set on the task: Celery has no setting for it)."""
    env = {**os.environ, "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0", "OFFSESSION_HOME": str(tmp_path)}
    code = (
        "import json; from worker import app; t = app.tasks['offsession.charge_attempt']; "
        "print(json.dumps([t.retry_on_worker_lost, t.default_retry_delay, t.max_retries]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, 1, 5]

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

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ("broker_transport_options", "broker_transport", "broker_use_ssl")


def celery_settings(broker_url: str, home: Path) -> dict[str, Any]:
    # A fresh interpreter: the settings module reads the environment once, at import. The database is a
    # server's (never reached here), so only the broker could want var/.
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "OFFSESSION_HOME": str(home),
        "DATABASE_URL": "postgresql+psycopg://offsession@127.0.0.1:1/offsession",
    }
    code = (
        "import json; from shared.adapters import celeryconfig as c; "
        f"print(json.dumps({{name: getattr(c, name, None) for name in {SETTINGS!r}}}, default=int))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


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
    assert settings["broker_use_ssl"] == {"ssl_cert_reqs": int(ssl.CERT_REQUIRED)}
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

"""Publishing task messages to the broker from a process that runs no tasks (the web app, the CLI).

A Celery app used only to send messages, by task name: the tasks themselves live in worker/, whose
own app publishes for the workers. Every message carries the request id of the web request that sent
it, so the worker's lines carry it too.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import before_task_publish

from shared.adapters.celeryconfig import celery_settings
from shared.adapters.logs import add_request_id_header
from shared.config import Config
from shared.services.ports import Publisher

# Every task published in this process carries the current request id (a no-op outside a request).
before_task_publish.connect(add_request_id_header, weak=False, dispatch_uid="offsession-request-id")


class CeleryPublisher:
    """A Publisher (shared.services.ports) over a send-only Celery app with the workers' settings (same
    broker, same transport: shared.adapters.kombu_redis with a Redis broker)."""

    def __init__(self, config: Config) -> None:
        self.app = Celery("offsession-publisher")
        self.app.conf.update(celery_settings(config))

    def __call__(self, task_name: str, payload: dict[str, Any], countdown: float | None) -> None:
        self.app.send_task(task_name, kwargs=payload, countdown=countdown)

    def ensure_connection(self, timeout: float) -> None:
        """Raise unless the broker answers within `timeout` seconds (the web's /healthz)."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)


def celery_publisher(config: Config) -> Publisher:
    return CeleryPublisher(config)

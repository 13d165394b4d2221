"""What the views share: the database session factory, the Stripe gateway and the task publisher."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

from shared.adapters.logs import add_request_id_header
from shared.adapters.rate_budget import rate_limited_gateway
from shared.adapters.stripe_gateway import StripeGateway
from shared.config import get_config


@lru_cache(maxsize=1)
def gateway() -> StripeGateway:
    return rate_limited_gateway(get_config())


# Every task a request publishes carries its request id, so the worker's lines carry it too.
before_task_publish.connect(add_request_id_header, weak=False, dispatch_uid="offsession-request-id")


@lru_cache(maxsize=1)
def celery_producer() -> Celery:
    """A Celery app used only to send messages; the tasks themselves live in worker/. Its settings name
    the same broker transport as the workers' (shared.adapters.kombu_redis with a Redis broker)."""
    app = Celery("offsession-web")
    app.config_from_object("shared.adapters.celeryconfig")
    return app


def publish(task_name: str, payload: dict[str, Any], countdown: float | None) -> None:
    celery_producer().send_task(task_name, kwargs=payload, countdown=countdown)

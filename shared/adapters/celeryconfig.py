"""Celery's settings for a configuration: `app.conf.update(celery_settings(config))` in the worker and
beat (worker/) and in the publisher of the web and the CLI (shared.adapters.publisher).

Messages are hints, the database is the truth: every task claims its row before acting, so a
duplicate delivery changes nothing and a lost one is re-published by the outbox relay or the janitor.
"""

from __future__ import annotations

import ssl
from datetime import UTC, tzinfo
from typing import Any

from celery.schedules import crontab
from kombu import Queue

from shared.config import Config, var_dir

# Longer than any countdown we schedule (at most 60 s; longer waits go through the outbox's
# available_at): a countdown beyond the visibility timeout would be delivered again and again.
VISIBILITY_TIMEOUT_SECONDS = 3600

# 02:30 UTC: well after midnight, so what was still processing when the day ended has settled.
RECONCILE_DAY_AT = {"hour": 2, "minute": 30}

# With a 15 s lease (OFFSESSION_CHARGE_LEASE_SECONDS), a charge whose worker died is settled within
# lease + this + one Stripe round trip of the kill, well inside a minute.
RECOVER_CHARGES_EVERY_SECONDS = 10.0

# What does not depend on the configuration.
_FIXED: dict[str, Any] = {
    # Outcomes live in the database; Celery's own results would only be a second, weaker copy.
    "task_ignore_result": True,
    "result_backend": None,
    # Acknowledge after the task returns, one message at a time per process: a killed worker's message
    # goes back to the queue instead of being lost.
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,
    # A pool process killed mid-task: re-send the message, a bounded number of times (Celery 5.7),
    # rather than requeue forever. Every task is safe to run twice.
    "task_retry_on_worker_lost": True,
    "task_reject_on_worker_lost": True,
    # The re-send comes after the task's default_retry_delay. Celery has no setting for it (a
    # `task_default_retry_delay` would be ignored without a word) and its own default is 180 s: set on
    # every task here, so a charge whose pool process died is taken over in a second
    # (shared.services.charging).
    "task_annotations": {"*": {"max_retries": 5, "default_retry_delay": 1}},
    # True would cancel running tasks on a lost broker, but it crashes the worker on reconnection
    # (celery#9250); a task that runs on is harmless, every task being safe to run twice.
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    "worker_soft_shutdown_timeout": 20.0,
    "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
    "broker_connection_retry_on_startup": True,
    "task_publish_retry_policy": {
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    },
    "task_serializer": "json",
    "accept_content": ["json"],
    "enable_utc": True,
    "worker_hijack_root_logger": True,
    "task_send_sent_event": False,
    "task_routes": {
        "offsession.charge_attempt": {"queue": "charges"},
        "offsession.charge_attempts": {"queue": "charges"},
        "offsession.process_webhook_event": {"queue": "webhooks"},
        "offsession.drain_webhook_events": {"queue": "webhooks"},
        "offsession.notify_charge": {"queue": "webhooks"},
        # A refund moves money: beside the charges, not behind a long maintenance job.
        "offsession.run_refund": {"queue": "charges"},
        "offsession.notify_refund": {"queue": "webhooks"},
        "offsession.notify_dispute": {"queue": "webhooks"},
        "offsession.*": {"queue": "maintenance"},
    },
    "task_default_queue": "maintenance",
    # A plain `celery -A worker worker` consumes every queue listed here; `-Q charges` narrows it. In
    # production (Procfile) the charges queue has a worker of its own, `--pool threads --concurrency 64`:
    # a charge is ~300 ms of waiting on Stripe, so 100 charges/s need ~30 in flight, which threads give
    # without a process each; webhooks and maintenance stay on the prefork worker, out of the charges' way.
    "task_queues": (Queue("charges"), Queue("webhooks"), Queue("maintenance")),
}


class UTCCrontab(crontab):
    """A crontab read in UTC whatever `timezone` (the batch's local zone) says: the daily reconciliation
    covers a UTC day, so it runs at a fixed UTC time once that day is over."""

    @property
    def tz(self) -> tzinfo:
        return UTC


def celery_settings(config: Config) -> dict[str, Any]:
    """Every Celery setting for `config` (lowercase names). Makes the embedded broker's folders (under
    OFFSESSION_HOME) when it is the broker in use, and only then."""
    settings = dict(_FIXED, broker_url=config.celery_broker_url)
    settings.update(_broker_transport(config))
    # The schedule's crontab is read in this zone (OFFSESSION_BATCH_TIMEZONE); times are stored in UTC.
    settings["timezone"] = config.batch_timezone
    settings["beat_schedule"] = _beat_schedule(config.batch_cron)
    return settings


def _broker_transport(config: Config) -> dict[str, Any]:
    broker_url = config.celery_broker_url
    settings: dict[str, Any] = {}
    if broker_url.startswith(("redis://", "rediss://")):
        # kombu's Redis transport with our two fixes, by import path: it applies to this app's
        # connections only, and is imported only when one is made.
        settings["broker_transport"] = "shared.adapters.kombu_redis:Transport"
    if broker_url.startswith("rediss://"):
        # Named by path, the transport no longer gets kombu's default for rediss:// (TLS without checking
        # the certificate): check it, unless the URL's ssl_cert_reqs says otherwise.
        settings["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    settings["broker_transport_options"] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        # Restore a dead worker's unacked messages within seconds of the timeout, not ~100 s after it.
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        # A broker that is down must not hang a web request: fail fast, the outbox relay publishes later.
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
        "max_retries": 1,
    }
    if broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
        # RabbitMQ: a publish returns only once the broker has the message (publisher confirms), so the
        # outbox row is marked sent only for a message that cannot be lost. RabbitMQ redelivers unacked
        # messages when a consumer's connection drops: no visibility timeout to tune.
        settings["broker_transport_options"] = {"confirm_publish": True, "max_retries": 1}
    if config.uses_embedded_broker:
        # kombu's filesystem transport: no server, works across the processes of one machine. Its folders
        # (under OFFSESSION_HOME) exist only when it is the broker in use.
        folder = var_dir() / "broker"
        for sub in ("queue", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        settings["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "data_folder_processed": str(folder / "processed"),
            "store_processed": False,
        }
    return settings


def _beat_schedule(batch_cron: str) -> dict[str, dict[str, Any]]:
    minute, hour, day_of_month, month, day_of_week = batch_cron.split()
    return {
        "relay-outbox": {"task": "offsession.relay_outbox", "schedule": 5.0},
        # Charges whose worker died (their lease lapsed: shared.services.leases) and queued charges whose
        # message was lost, in seconds rather than at the janitor's minute; two indexed queries when there
        # is none. A sweep still waiting for a worker when the next is sent is dropped (`expires`).
        "recover-charges": {
            "task": "offsession.recover_charges",
            "schedule": RECOVER_CHARGES_EVERY_SECONDS,
            "options": {"expires": RECOVER_CHARGES_EVERY_SECONDS},
        },
        "janitor": {"task": "offsession.janitor", "schedule": 60.0},
        "charge-due-invoices": {
            "task": "offsession.charge_due",
            "schedule": crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month,
                day_of_week=day_of_week,
                app=None,
            ),
        },
        "open-due-retries": {"task": "offsession.open_due_retries", "schedule": 600.0},
        # Yesterday (UTC) against Stripe; the task takes no day, so a late or repeated beat still means
        # yesterday, and a re-run records nothing twice.
        "reconcile-yesterday": {
            "task": "offsession.reconcile_day",
            "schedule": UTCCrontab(**RECONCILE_DAY_AT),
        },
    }

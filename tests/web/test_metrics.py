"""GET /metrics: every series the README names, with values that match the database, the broker
and what the workers recorded in Redis; parsed with prometheus_client's own parser. On SQLite and
PostgreSQL, against a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import redis
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy.orm import Session, sessionmaker

import web
from shared.adapters.database import make_engine
from shared.adapters.metrics import (
    COUNTERS_KEY,
    RATE_WAITS_KEY,
    STRIPE_CALLS_KEY,
    MetricsRecorder,
    OffsessionCollector,
)
from shared.adapters.migrate import upgrade
from shared.bootstrap import bootstrap
from shared.domain.models import BatchRun, WebhookEvent
from tests.support import factories
from tests.support.services import RedisServer

API_TOKEN = "os_metrics-test-api-token"
METRICS_TOKEN = "metrics-scrape-token-Qx81"


@pytest.fixture
def metrics_redis(redis_server: RedisServer) -> Iterator[tuple[str, redis.Redis]]:
    # A database of its own on the shared server, emptied before and after.
    url = f"{redis_server.url}/15"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url, client
    finally:
        client.flushdb()


@pytest.fixture
def app(
    database_url: str, metrics_redis: tuple[str, redis.Redis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Flask]:
    upgrade(database_url)
    url, _ = metrics_redis
    monkeypatch.delenv("REDIS_URL", raising=False)
    for name, value in {
        "OFFSESSION_HOME": str(tmp_path),
        "DATABASE_URL": database_url,
        # The broker is this Redis too: observations go there and queue depths are read from it.
        "CELERY_BROKER_URL": url,
        "OFFSESSION_API_TOKEN": API_TOKEN,
        "OFFSESSION_METRICS_TOKEN": METRICS_TOKEN,
        "SECRET_KEY": "metrics-test-secret",
    }.items():
        monkeypatch.setenv(name, value)
    runtime = bootstrap()
    try:
        yield web.create_app(runtime=runtime)
    finally:
        runtime.close()


def _populate(session: Session) -> int:
    """Attempts in five states with known ages, two unprocessed webhook events, a batch run."""
    # Ages count from now, not from when the module was imported: in the full suite the test runs
    # minutes after collection, and a module-level clock made every age that much older.
    now = datetime.now(UTC)
    owner = factories.client()
    invoices = [factories.invoice(owner=owner) for _ in range(7)]
    ages = {
        "queued": 30,
        "processing": 90,
        "unknown": 3600,
        "requires_action": 600,
        "succeeded": 5,
    }
    attempts = []
    for inv, (status, age) in zip(invoices, ages.items(), strict=False):
        attempt = factories.attempt(inv, status)
        attempt.updated_at = now - timedelta(seconds=age)
        attempts.append(attempt)
    # A second, younger unknown: the oldest one's age is what counts.
    late = factories.attempt(invoices[5], "failed")
    late.updated_at = now - timedelta(seconds=10)
    attempts.append(late)
    run = BatchRun(slot="schedule:2026-11-26T06:00", trigger="schedule", due_on=date(2026, 11, 26))
    run.selected, run.queued, run.skipped = 4, 3, 1
    run.selection_finished_at = now
    factories.persist(session, run)
    for attempt in attempts[:2]:
        attempt.batch_run_id = run.id
    factories.persist(session, owner, *invoices, *attempts)
    session.add_all(
        [
            WebhookEvent(
                stripe_event_id="evt_old",
                type="payment_intent.succeeded",
                payload={},
                received_at=now - timedelta(seconds=120),
            ),
            WebhookEvent(
                stripe_event_id="evt_new",
                type="payment_intent.succeeded",
                payload={},
                received_at=now - timedelta(seconds=3),
            ),
            WebhookEvent(
                stripe_event_id="evt_done",
                type="payment_intent.succeeded",
                payload={},
                received_at=now - timedelta(days=3),
                processed_at=now - timedelta(days=3),
            ),
        ]
    )
    session.commit()
    return run.id


def _scrape(app: Flask, token: str = METRICS_TOKEN) -> dict[str, list[Sample]]:
    answer = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    families = text_string_to_metric_families(answer.get_data(as_text=True))
    return {family.name: family.samples for family in families}


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    matching = [
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (name, labels, samples)
    return matching[0]


def test_metrics_exposes_every_series_the_issue_names(
    app: Flask, database_url: str, metrics_redis: tuple[str, redis.Redis]
) -> None:
    engine = make_engine(database_url)
    try:
        with sessionmaker(bind=engine, expire_on_commit=False)() as session:
            run_id = _populate(session)
    finally:
        engine.dispose()
    _, client = metrics_redis
    # What the workers would have recorded: three Stripe calls, two budget waits, one timeout.
    recorder = MetricsRecorder(client)
    recorder.observe_stripe_call("create_offsession_payment_intent", "ok", 0.3)
    recorder.observe_stripe_call("create_offsession_payment_intent", "ok", 0.7)
    recorder.observe_stripe_call("retrieve_payment_intent", "transient", 12.0)
    recorder.observe_rate_wait(0.0)
    recorder.observe_rate_wait(0.2)
    recorder.count_rate_timeout()
    # Two messages waiting on the charges queue, one on a priority list of the webhooks queue.
    client.lpush("charges", "m1", "m2")
    client.lpush("webhooks\x06\x166", "m3")

    families = _scrape(app)

    # Charges by status, every status present.
    charges = families["offsession_charge_attempts"]
    expected_counts = {"queued": 1, "processing": 1, "unknown": 1, "requires_action": 1, "succeeded": 1}
    expected_counts |= {"failed": 1, "canceled": 0}
    for status, count in expected_counts.items():
        assert _value(charges, "offsession_charge_attempts", status=status) == count
    # The age of the oldest unknown / requires-action / processing (and queued) attempt.
    ages = families["offsession_charge_attempt_oldest_age_seconds"]
    for status, age in {"unknown": 3600, "requires_action": 600, "processing": 90, "queued": 30}.items():
        seen = _value(ages, "offsession_charge_attempt_oldest_age_seconds", status=status)
        assert age <= seen < age + 60, (status, seen)
    # Webhook lag: the oldest unprocessed event, and how many wait.
    assert (
        _value(families["offsession_webhook_events_unprocessed"], "offsession_webhook_events_unprocessed")
        == 2
    )
    lag = _value(families["offsession_webhook_lag_seconds"], "offsession_webhook_lag_seconds")
    assert 120 <= lag < 180
    # Batch progress of the latest run.
    run = str(run_id)
    batch = families["offsession_batch_run_invoices"]
    assert _value(batch, "offsession_batch_run_invoices", batch_run_id=run, state="selected") == 4
    assert _value(batch, "offsession_batch_run_invoices", batch_run_id=run, state="queued") == 3
    progress = families["offsession_batch_run_charges"]
    assert _value(progress, "offsession_batch_run_charges", batch_run_id=run, status="queued") == 1
    assert _value(progress, "offsession_batch_run_charges", batch_run_id=run, status="processing") == 1
    assert _value(progress, "offsession_batch_run_charges", batch_run_id=run, status="succeeded") == 0
    finished = families["offsession_batch_run_selection_finished"]
    assert _value(finished, "offsession_batch_run_selection_finished", batch_run_id=run) == 1
    assert "offsession_batch_run_started_timestamp_seconds" in families
    # Queue depth per Celery queue.
    depth = families["offsession_queue_depth"]
    assert _value(depth, "offsession_queue_depth", queue="charges") == 2
    assert _value(depth, "offsession_queue_depth", queue="webhooks") == 1
    assert _value(depth, "offsession_queue_depth", queue="maintenance") == 0
    # Stripe call latency: a real histogram, cumulative buckets, by operation and outcome.
    calls = families["offsession_stripe_request_duration_seconds"]
    create = {"operation": "create_offsession_payment_intent", "outcome": "ok"}
    name = "offsession_stripe_request_duration_seconds"
    assert _value(calls, f"{name}_count", **create) == 2
    assert _value(calls, f"{name}_sum", **create) == pytest.approx(1.0)
    assert _value(calls, f"{name}_bucket", le="0.25", **create) == 0
    assert _value(calls, f"{name}_bucket", le="0.5", **create) == 1
    assert _value(calls, f"{name}_bucket", le="1.0", **create) == 2
    assert _value(calls, f"{name}_bucket", le="+Inf", **create) == 2
    slow = {"operation": "retrieve_payment_intent", "outcome": "transient"}
    assert _value(calls, f"{name}_bucket", le="10.0", **slow) == 0
    assert _value(calls, f"{name}_bucket", le="30.0", **slow) == 1
    # Rate-limiter waits and timeouts.
    waits = families["offsession_rate_limit_wait_seconds"]
    assert _value(waits, "offsession_rate_limit_wait_seconds_bucket", le="0.0") == 1
    assert _value(waits, "offsession_rate_limit_wait_seconds_bucket", le="0.25") == 2
    assert _value(waits, "offsession_rate_limit_wait_seconds_count") == 2
    assert _value(families["offsession_rate_limit_timeouts"], "offsession_rate_limit_timeouts_total") == 1
    # Every source answered.
    up = families["offsession_metrics_source_up"]
    for source in ("database", "redis", "broker"):
        assert _value(up, "offsession_metrics_source_up", source=source) == 1


def test_metrics_wants_a_token_and_takes_the_api_token_too(app: Flask) -> None:
    http = app.test_client()
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        {"Authorization": METRICS_TOKEN},
    ):
        answer = http.get("/metrics", headers=headers)
        assert answer.status_code == 401 and answer.json["error"] == "unauthorized", headers
        assert b"offsession_" not in answer.data
    assert "offsession_charge_attempts" in _scrape(app, METRICS_TOKEN)
    assert "offsession_charge_attempts" in _scrape(app, API_TOKEN)


def test_a_source_that_is_down_drops_its_series_not_the_scrape(
    app: Flask, metrics_redis: tuple[str, redis.Redis]
) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    sessions = app.extensions["offsession"].sessions
    collector = OffsessionCollector(sessions, metrics_redis=dead, broker_redis=dead)
    families = {family.name: family for family in collector.collect()}
    up = {s.labels["source"]: s.value for s in families["offsession_metrics_source_up"].samples}
    assert up == {"database": 1, "redis": 0, "broker": 0}
    assert "offsession_charge_attempts" in families and "offsession_queue_depth" not in families


def test_recording_never_fails_and_pauses_after_a_failure(metrics_redis: tuple[str, redis.Redis]) -> None:
    clock = [100.0]
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    recorder = MetricsRecorder(dead, backoff_seconds=30, monotonic=lambda: clock[0])
    recorder.observe_stripe_call("create_offsession_payment_intent", "ok", 0.1)  # swallowed
    recorder.observe_rate_wait(0.1)  # paused: not even tried
    assert recorder.failures == 1
    clock[0] += 31
    recorder.count_rate_timeout()
    assert recorder.failures == 2
    # A working Redis records from the first call; nothing is written under other keys.
    _, client = metrics_redis
    MetricsRecorder(client).observe_rate_wait(0.05)
    assert client.hget(RATE_WAITS_KEY, "count") == b"1"
    assert not client.exists(STRIPE_CALLS_KEY) and not client.exists(COUNTERS_KEY)

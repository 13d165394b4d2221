"""Prometheus metrics: what /metrics shows, computed when Prometheus scrapes.

The web process cannot see the workers' memory, so nothing here is a process-local counter:
- the state of the charges, the webhook backlog and the latest batch are read from the database at
  scrape time (one GROUP BY and a few MIN()s on indexed columns);
- the depth of each Celery queue is read from the broker when it is Redis;
- Stripe call latencies and rate-budget waits happen in the workers: `MetricsRecorder` adds each one to
  fixed histogram buckets in Redis (one pipelined round trip), and the collector reads them back.

Recording is best effort: a Redis that is down costs a charge nothing but the observation (the failure is
counted and logged, and recording pauses for a while rather than adding a timeout to every call).
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Config
from shared.domain.binding import MismatchReason
from shared.domain.models import BatchRun, ChargeAttempt, WebhookEvent, utcnow
from shared.domain.states import AttemptStatus

__all__ = [
    "CELERY_QUEUES",
    "RATE_WAIT_BUCKETS",
    "STRIPE_LATENCY_BUCKETS",
    "MetricsRecorder",
    "OffsessionCollector",
    "broker_redis_from_config",
    "metrics_recorder_from_config",
    "metrics_redis_from_config",
    "metrics_redis_url",
]

log = logging.getLogger(__name__)

KEY_PREFIX = "offsession:metrics:"
STRIPE_CALLS_KEY = KEY_PREFIX + "stripe_request_seconds"
RATE_WAITS_KEY = KEY_PREFIX + "rate_limit_wait_seconds"
COUNTERS_KEY = KEY_PREFIX + "counters"
RATE_TIMEOUTS_FIELD = "rate_limit_timeouts"

# Upper bounds in seconds; +Inf is implied. Stripe answers in 0.2-1 s; the SDK's retries and timeouts
# stretch that to tens of seconds.
STRIPE_LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Most tokens are granted at once (0); a saturated budget waits up to the acquire timeout (60 s).
RATE_WAIT_BUCKETS: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CELERY_QUEUES: tuple[str, ...] = ("charges", "webhooks", "maintenance")
# kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in lists of their own beside it.
_KOMBU_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
# The in-flight states whose oldest attempt is worth an alert when it grows old.
AGED_STATUSES = (
    AttemptStatus.QUEUED,
    AttemptStatus.PROCESSING,
    AttemptStatus.REQUIRES_ACTION,
    AttemptStatus.UNKNOWN,
)
_SEPARATOR = "\t"
# After a failed write, recording pauses this long: a down Redis must not cost every charge a timeout.
RECORD_BACKOFF_SECONDS = 30.0


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _bucket_bound(buckets: Sequence[float], value: float) -> str:
    index = bisect.bisect_left(buckets, value)
    return _le(buckets[index]) if index < len(buckets) else "+Inf"


# --------------------------------------------------------------------------------------------------
# Recording (workers, and the web process's own Stripe calls)
# --------------------------------------------------------------------------------------------------


class MetricsRecorder:
    """Adds observations to histograms kept in Redis hashes: per observation, one bucket (not
    cumulative; the collector sums), the count and the sum, in a single pipelined round trip."""

    def __init__(
        self,
        client: redis.Redis | None,
        *,
        backoff_seconds: float = RECORD_BACKOFF_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._backoff_seconds = backoff_seconds
        self._monotonic = monotonic
        self._paused_until = 0.0
        self._lock = threading.Lock()
        # Observations lost to an unreachable Redis, in this process (logged when recording pauses).
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def observe_stripe_call(self, operation: str, outcome: str, seconds: float) -> None:
        prefix = f"{operation}{_SEPARATOR}{outcome}{_SEPARATOR}"
        bound = _bucket_bound(STRIPE_LATENCY_BUCKETS, seconds)
        self._write(
            lambda pipe: (
                pipe.hincrby(STRIPE_CALLS_KEY, prefix + bound, 1),
                pipe.hincrby(STRIPE_CALLS_KEY, prefix + "count", 1),
                pipe.hincrbyfloat(STRIPE_CALLS_KEY, prefix + "sum", seconds),
            )
        )

    def observe_rate_wait(self, seconds: float) -> None:
        bound = _bucket_bound(RATE_WAIT_BUCKETS, seconds)
        self._write(
            lambda pipe: (
                pipe.hincrby(RATE_WAITS_KEY, bound, 1),
                pipe.hincrby(RATE_WAITS_KEY, "count", 1),
                pipe.hincrbyfloat(RATE_WAITS_KEY, "sum", seconds),
            )
        )

    def count_rate_timeout(self) -> None:
        self._write(lambda pipe: pipe.hincrby(COUNTERS_KEY, RATE_TIMEOUTS_FIELD, 1))

    def _write(self, commands: Callable[[Any], object]) -> None:
        if self._client is None or self._monotonic() < self._paused_until:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            commands(pipe)
            pipe.execute()
        except Exception as exc:  # never let an observation break what it observes
            with self._lock:
                self.failures += 1
                self._paused_until = self._monotonic() + self._backoff_seconds
            log.warning(
                "metrics not recorded (%s: %s); pausing recording for %.0fs, %d lost so far",
                type(exc).__name__,
                exc,
                self._backoff_seconds,
                self.failures,
            )


def metrics_redis_url(config: Config) -> str | None:
    """Where observations go: REDIS_URL, else the broker when it is Redis, else nowhere."""
    if config.redis_url:
        return config.redis_url
    if config.celery_broker_url.startswith(("redis://", "rediss://")):
        return config.celery_broker_url
    return None


def _redis_client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def metrics_recorder_from_config(config: Config) -> MetricsRecorder:
    url = metrics_redis_url(config)
    # Short timeouts: an observation is worth far less than the Stripe call it rides along with.
    return MetricsRecorder(_redis_client(url, 0.5) if url else None)


def metrics_redis_from_config(config: Config) -> redis.Redis | None:
    """The client the collector reads observations back with (None: nowhere to read them from)."""
    url = metrics_redis_url(config)
    return _redis_client(url, 2.0) if url else None


def broker_redis_from_config(config: Config) -> redis.Redis | None:
    """The broker, to measure queue depths, when it is Redis (the filesystem and memory brokers: None)."""
    url = config.celery_broker_url
    return _redis_client(url, 2.0) if url.startswith(("redis://", "rediss://")) else None


# --------------------------------------------------------------------------------------------------
# Collecting (the web process, at scrape time)
# --------------------------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _seconds_since(moment: datetime | None, now: datetime) -> float:
    return max(0.0, (now - moment).total_seconds()) if moment is not None else 0.0


def _histogram_samples(
    fields: dict[str, str], buckets: Sequence[float]
) -> tuple[list[tuple[str, float]], float] | None:
    """Cumulative (le, count) pairs and the sum, from one histogram's non-cumulative fields."""
    count = int(float(fields.get("count", 0)))
    if count == 0:
        return None
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound in [*buckets, math.inf]:
        running += int(float(fields.get(_le(bound), 0)))
        cumulative.append((_le(bound), running))
    # The count is written in the same round trip; keep +Inf equal to it as Prometheus expects.
    cumulative[-1] = ("+Inf", count)
    return cumulative, float(fields.get("sum", 0.0))


class OffsessionCollector(Collector):
    """Every Offsession series, read afresh at each scrape. A source that fails (database, Redis, broker)
    drops its own series and says so in offsession_metrics_source_up; the others still answer."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        metrics_redis: redis.Redis | None,
        broker_redis: redis.Redis | None,
        queues: Iterable[str] = CELERY_QUEUES,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._session_factory = session_factory
        self._metrics_redis = metrics_redis
        self._broker_redis = broker_redis
        self._queues = tuple(queues)
        self._now = now

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "offsession_metrics_source_up",
            "Whether a source of these metrics answered this scrape (1) or not (0).",
            labels=["source"],
        )
        sources: list[tuple[str, Callable[[], list[Metric]]]] = [("database", self._database)]
        if self._metrics_redis is not None:
            sources.append(("redis", self._recorded))
        if self._broker_redis is not None:
            sources.append(("broker", self._queue_depths))
        for name, read in sources:
            try:
                families = read()
            except Exception as exc:
                log.warning("metrics source %s unavailable: %s: %s", name, type(exc).__name__, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up

    # ---- the database ----

    def _database(self) -> list[Metric]:
        now = self._now()
        with self._session_factory() as session:
            attempts = session.execute(
                select(ChargeAttempt.status, func.count(), func.min(ChargeAttempt.updated_at)).group_by(
                    ChargeAttempt.status
                )
            ).all()
            backlog = session.execute(
                select(func.count(), func.min(WebhookEvent.received_at)).where(
                    WebhookEvent.processed_at.is_(None)
                )
            ).one()
            flagged = dict(
                session.execute(
                    select(WebhookEvent.flagged_reason, func.count())
                    .where(WebhookEvent.flagged_reason.is_not(None))
                    .group_by(WebhookEvent.flagged_reason)
                ).all()
            )
            latest_run = session.execute(
                select(
                    BatchRun.id,
                    BatchRun.started_at,
                    BatchRun.selection_finished_at,
                    BatchRun.selected,
                    BatchRun.queued,
                    BatchRun.skipped,
                )
                .order_by(BatchRun.id.desc())
                .limit(1)
            ).first()
            run_outcomes: dict[str, int] = {}
            if latest_run is not None:
                run_outcomes = {
                    status: int(n)
                    for status, n in session.execute(
                        select(ChargeAttempt.status, func.count())
                        .where(ChargeAttempt.batch_run_id == latest_run.id)
                        .group_by(ChargeAttempt.status)
                    )
                }
            session.rollback()
        families: list[Metric] = []
        by_status = {str(status): (int(count), oldest) for status, count, oldest in attempts}

        charges = GaugeMetricFamily(
            "offsession_charge_attempts", "Charge attempts by status.", labels=["status"]
        )
        for status in AttemptStatus:
            charges.add_metric([status.value], by_status.get(status.value, (0, None))[0])
        families.append(charges)

        oldest = GaugeMetricFamily(
            "offsession_charge_attempt_oldest_age_seconds",
            "Seconds since the oldest attempt in this status last changed (0 when there is none).",
            labels=["status"],
        )
        for status in AGED_STATUSES:
            oldest.add_metric([status.value], _seconds_since(by_status.get(status.value, (0, None))[1], now))
        families.append(oldest)

        count, oldest_received = backlog
        families.append(
            GaugeMetricFamily(
                "offsession_webhook_events_unprocessed",
                "Stored Stripe events not yet processed.",
                value=int(count or 0),
            )
        )
        families.append(
            GaugeMetricFamily(
                "offsession_webhook_lag_seconds",
                "Seconds since the oldest unprocessed Stripe event was received (0 when there is none).",
                value=_seconds_since(oldest_received, now),
            )
        )
        flagged_events = GaugeMetricFamily(
            "offsession_webhook_events_flagged",
            "Stripe events kept but not applied because they did not match the charge they would change "
            "(mode, account, PaymentIntent, customer, currency, amount), by reason: see /admin/charges.",
            labels=["reason"],
        )
        for reason in MismatchReason:
            flagged_events.add_metric([reason.value], int(flagged.get(reason.value, 0)))
        families.append(flagged_events)
        families.extend(self._batch_families(latest_run, run_outcomes))
        return families

    @staticmethod
    def _batch_families(
        run: Row[int, datetime, datetime | None, int, int, int] | None, outcomes: dict[str, int]
    ) -> list[Metric]:
        invoices = GaugeMetricFamily(
            "offsession_batch_run_invoices",
            "The latest batch run's invoices: selected, queued (an attempt opened) or skipped.",
            labels=["batch_run_id", "state"],
        )
        charges = GaugeMetricFamily(
            "offsession_batch_run_charges",
            "The latest batch run's charge attempts by status now (its progress).",
            labels=["batch_run_id", "status"],
        )
        started = GaugeMetricFamily(
            "offsession_batch_run_started_timestamp_seconds",
            "When the latest batch run started (Unix time).",
            labels=["batch_run_id"],
        )
        selection_done = GaugeMetricFamily(
            "offsession_batch_run_selection_finished",
            "Whether the latest batch run has finished selecting and queueing (1) or not (0).",
            labels=["batch_run_id"],
        )
        if run is not None:
            run_id = str(run.id)
            counts = {"selected": run.selected, "queued": run.queued, "skipped": run.skipped}
            for state, value in counts.items():
                invoices.add_metric([run_id, state], value)
            for status in AttemptStatus:
                charges.add_metric([run_id, status.value], outcomes.get(status.value, 0))
            started.add_metric([run_id], run.started_at.timestamp())
            selection_done.add_metric([run_id], 1 if run.selection_finished_at is not None else 0)
        return [invoices, charges, started, selection_done]

    # ---- what the workers recorded in Redis ----

    def _recorded(self) -> list[Metric]:
        assert self._metrics_redis is not None
        pipe = self._metrics_redis.pipeline(transaction=False)
        pipe.hgetall(STRIPE_CALLS_KEY)
        pipe.hgetall(RATE_WAITS_KEY)
        pipe.hget(COUNTERS_KEY, RATE_TIMEOUTS_FIELD)
        calls_raw, waits_raw, timeouts_raw = pipe.execute()

        calls = HistogramMetricFamily(
            "offsession_stripe_request_duration_seconds",
            "Stripe API calls by gateway operation and outcome (SDK retries included, budget wait not).",
            labels=["operation", "outcome"],
        )
        per_series: dict[tuple[str, str], dict[str, str]] = {}
        for raw_field, raw_value in calls_raw.items():
            parts = _text(raw_field).split(_SEPARATOR)
            if len(parts) == 3:
                per_series.setdefault((parts[0], parts[1]), {})[parts[2]] = _text(raw_value)
        for (operation, outcome), fields in sorted(per_series.items()):
            samples = _histogram_samples(fields, STRIPE_LATENCY_BUCKETS)
            if samples is not None:
                calls.add_metric([operation, outcome], samples[0], samples[1])

        waits = HistogramMetricFamily(
            "offsession_rate_limit_wait_seconds",
            "Seconds a Stripe call waited for a token of the shared rate budget.",
        )
        wait_samples = _histogram_samples(
            {_text(k): _text(v) for k, v in waits_raw.items()}, RATE_WAIT_BUCKETS
        )
        if wait_samples is not None:
            waits.add_metric([], wait_samples[0], wait_samples[1])
        else:
            waits.add_metric([], [(_le(b), 0) for b in [*RATE_WAIT_BUCKETS, math.inf]], 0.0)

        timeouts = CounterMetricFamily(
            "offsession_rate_limit_timeouts",
            "Stripe calls not sent because no rate-budget token came within the timeout.",
            value=int(_text(timeouts_raw)) if timeouts_raw is not None else 0,
        )
        return [calls, waits, timeouts]

    # ---- the broker ----

    def _queue_depths(self) -> list[Metric]:
        assert self._broker_redis is not None
        pipe = self._broker_redis.pipeline(transaction=False)
        for queue in self._queues:
            for suffix in _KOMBU_PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        lengths = pipe.execute()
        depth = GaugeMetricFamily(
            "offsession_queue_depth",
            "Messages waiting in each Celery queue (not those a worker holds or schedules).",
            labels=["queue"],
        )
        per_queue = len(_KOMBU_PRIORITY_SUFFIXES)
        for index, queue in enumerate(self._queues):
            depth.add_metric([queue], sum(lengths[index * per_queue : (index + 1) * per_queue]))
        return [depth]

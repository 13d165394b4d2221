"""The worker-side observations behind /metrics: every Stripe call's operation, outcome and duration, and
every rate-budget wait and timeout, land in Redis; a Redis that is down never breaks a call."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import fakeredis
import pytest
import redis
import stripe

from shared.adapters.metrics import (
    COUNTERS_KEY,
    RATE_TIMEOUTS_FIELD,
    RATE_WAITS_KEY,
    STRIPE_CALLS_KEY,
    MetricsRecorder,
)
from shared.adapters.rate_budget import RedisRateBudget, gateway_hooks
from shared.adapters.stripe_gateway import StripeGateway
from shared.domain.payments import ChargeRequest, PermanentStripeError, TransientStripeError
from shared.services.ports import RateBudgetTimeout


class Answers(stripe.HTTPClient):
    name = "answers"

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        super().__init__()
        self.answers = answers

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> tuple[str, int, Mapping[str, str]]:
        status, body = self.answers.pop(0)
        return json.dumps(body), status, {"request-id": "req_1"}

    def close(self) -> None:
        pass


def error(code: str, kind: str = "invalid_request_error", **extra: Any) -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": code, **extra}}


def charge() -> ChargeRequest:
    return ChargeRequest(
        amount=1000,
        currency="usd",
        customer_id="cus_1",
        payment_method_id="pm_1",
        metadata={"invoice_id": "1", "invoice_number": "INV-1", "charge_attempt_id": "a-1"},
        description="Invoice INV-1",
        idempotency_key="offsession:charge:a-1",
    )


def fields(client: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(key).items()}


def test_each_stripe_call_is_recorded_by_operation_and_outcome() -> None:
    client = fakeredis.FakeRedis()
    recorder = MetricsRecorder(client)
    http = Answers(
        [
            (200, {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 1000}),
            (402, error("card_declined", "card_error", decline_code="insufficient_funds")),
            (429, error("rate_limit")),
            (500, error("api_error", "api_error")),
            (400, error("parameter_invalid_integer")),
        ]
    )
    gateway = StripeGateway(
        "sk_test_unit",
        "http://127.0.0.1:12111",
        "whsec_unit",
        max_network_retries=0,
        http_client=http,
        on_call=recorder.observe_stripe_call,
    )
    gateway.create_offsession_payment_intent(charge())
    gateway.create_offsession_payment_intent(charge())  # a decline is an outcome, not an error
    with pytest.raises(TransientStripeError):
        gateway.retrieve_payment_intent("pi_1")
    with pytest.raises(TransientStripeError):
        gateway.retrieve_payment_intent("pi_1")
    with pytest.raises(PermanentStripeError):
        gateway.retrieve_payment_intent("pi_1")
    recorded = fields(client, STRIPE_CALLS_KEY)
    counts = {k.rsplit("\t", 1)[0]: int(v) for k, v in recorded.items() if k.endswith("\tcount")}
    assert counts == {
        "create_offsession_payment_intent\tok": 1,
        "create_offsession_payment_intent\tcard_error": 1,
        "retrieve_payment_intent\trate_limited": 1,
        "retrieve_payment_intent\ttransient": 1,
        "retrieve_payment_intent\tpermanent": 1,
    }
    # One bucket per observation (the collector makes them cumulative), and the duration in the sum.
    prefix = "create_offsession_payment_intent\tok\t"
    buckets = {k[len(prefix) :]: v for k, v in recorded.items() if k.startswith(prefix)}
    assert [v for b, v in buckets.items() if b not in ("count", "sum")] == ["1"]
    assert 0 < float(buckets["sum"]) < 5


def test_rate_budget_waits_and_timeouts_are_recorded() -> None:
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    client = fakeredis.FakeRedis()
    budget = RedisRateBudget(client, 10.0, 1.0, clock=lambda: now[0], sleep=sleep, monotonic=lambda: now[0])
    recorder = MetricsRecorder(client)
    before_request, _ = gateway_hooks(budget, timeout=0.5, recorder=recorder)
    before_request(None)  # the burst token: no wait
    before_request(None)  # the next one, an interval (0.1 s) later
    budget.slow_down(None, 5.0)
    with pytest.raises(RateBudgetTimeout):
        before_request(None)
    waits = fields(client, RATE_WAITS_KEY)
    assert waits["count"] == "2" and waits["0.0"] == "1"
    # The second wait is one interval, rounded up to the microsecond: the 0.1 or the 0.25 bucket.
    assert int(waits.get("0.1", 0)) + int(waits.get("0.25", 0)) == 1
    assert float(waits["sum"]) == pytest.approx(0.1, abs=1e-3)
    assert client.hget(COUNTERS_KEY, RATE_TIMEOUTS_FIELD) == b"1"


def test_a_dead_metrics_redis_costs_a_charge_nothing() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    recorder = MetricsRecorder(dead)
    http = Answers([(200, {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 1000})])
    gateway = StripeGateway(
        "sk_test_unit",
        "http://127.0.0.1:12111",
        "whsec_unit",
        max_network_retries=0,
        http_client=http,
        on_call=recorder.observe_stripe_call,
    )
    outcome = gateway.create_offsession_payment_intent(charge())
    assert outcome.payment_intent_id == "pi_1"
    assert recorder.failures == 1

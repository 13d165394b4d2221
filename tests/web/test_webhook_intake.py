"""POST /webhooks/stripe stores an event that repeats what its charge already recorded as processed and
publishes nothing (no drain, no message): the webhook of a charge the worker already settled costs its
INSERT only. An event that does not repeat it exactly is published for the drain as before."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import select

import web.webhooks
from shared.adapters.drain_flag import DRAIN_PENDING_KEY, DRAIN_PENDING_TTL_SECONDS, DrainRequests
from shared.domain.models import ChargeAttempt, WebhookEvent
from shared.services.charging import run_attempt
from shared.services.webhooks import DRAIN_GATHER_SECONDS, TASK_DRAIN_WEBHOOK_EVENTS
from tests.support.emulator import emulator_state
from tests.support.signing import signed
from tests.support.web_app import WEBHOOK_SECRET, Env, World, api


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every message the endpoint publishes (a drain or one event's processing)."""
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        web.webhooks, "publish", lambda task, payload, _countdown: sent.append((task, payload))
    )
    return sent


def _settled_charge(env: Env, invoice_id: int) -> ChargeAttempt:
    queued = api(env.app.test_client(), "POST", f"/api/invoices/{invoice_id}/charges")
    assert queued.status_code == 202, queued.json
    runtime = env.runtime
    run_attempt(
        runtime.sessions, runtime.gateway, queued.json["id"], lease_seconds=60, max_transient_retries=1
    )
    with env.session() as s:
        attempt = s.get_one(ChargeAttempt, queued.json["id"])
        s.expunge(attempt)
    return attempt


def _post(env: Env, obj: dict[str, Any], event_type: str) -> WebhookEvent:
    event = {
        "id": f"evt_{uuid.uuid4().hex[:20]}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }
    payload, headers = signed(event, WEBHOOK_SECRET)
    answer = env.app.test_client().post("/webhooks/stripe", data=payload, headers=headers)
    assert answer.status_code == 200 and answer.json == {"received": True, "duplicate": False}, answer.data
    with env.session() as s:
        return s.scalars(select(WebhookEvent).where(WebhookEvent.stripe_event_id == event["id"])).one()


def _intent(env: Env, pi_id: str | None) -> dict[str, Any]:
    return next(pi for pi in emulator_state(env.emulator)["payment_intents"] if pi["id"] == pi_id)


def test_the_webhook_of_a_charge_already_recorded_publishes_nothing(
    env: Env, world: World, published: list[tuple[str, dict[str, Any]]]
) -> None:
    attempt = _settled_charge(env, world.a.invoice_id)
    assert attempt.status == "succeeded"
    before = env.snapshot()
    row = _post(env, _intent(env, attempt.payment_intent_id), "payment_intent.succeeded")
    assert (row.processed_reason, row.processed_at is not None, row.processing_attempts) == (
        "already_recorded",
        True,
        0,
    )
    assert published == []
    after = env.snapshot()
    assert {k: v for k, v in after.items() if k != "webhook_event"} == {
        k: v for k, v in before.items() if k != "webhook_event"
    }


def test_a_webhook_that_is_not_a_repeat_is_published_for_the_drain(
    env: Env, world: World, published: list[tuple[str, dict[str, Any]]]
) -> None:
    attempt = _settled_charge(env, world.a.invoice_id)
    intent = _intent(env, attempt.payment_intent_id)
    # Another amount than the charge's: the drain's binding check flags it.
    row = _post(env, {**intent, "amount": intent["amount"] + 1}, "payment_intent.succeeded")
    assert (row.processed_at, row.processed_reason) == (None, None)
    # A failure reported for a success: not the recorded outcome.
    failed = {**intent, "status": "requires_payment_method", "last_payment_error": {"code": "card_declined"}}
    other = _post(env, failed, "payment_intent.payment_failed")
    assert (other.processed_at, other.processed_reason) == (None, None)
    assert [payload for _task, payload in published] == [{"event_id": row.id}, {"event_id": other.id}]


class _Flag:
    """The drain flag's Redis, in memory: SET NX and DEL are all DrainRequests uses."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def set(self, key: str, _value: object, *, nx: bool, ex: int) -> bool:
        assert nx and ex > DRAIN_GATHER_SECONDS
        if key in self.keys:
            return False
        self.keys.add(key)
        return True

    def delete(self, key: str) -> None:
        self.keys.discard(key)


def test_events_with_work_share_one_drain_message_sent_to_run_a_moment_later(
    env: Env, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain runs DRAIN_GATHER_SECONDS after the first event: the events of that moment share its
    message, and the charges still in flight when they came are mostly recorded by then (the drain
    marks those in bulk: tests/shared/services/test_webhook_intake.py)."""
    sent: list[tuple[str, dict[str, Any], float | None]] = []
    monkeypatch.setattr(
        web.webhooks, "publish", lambda task, payload, countdown: sent.append((task, payload, countdown))
    )
    flag = _Flag()
    monkeypatch.setitem(env.runtime._parts, "drain_requests", DrainRequests(flag))  # type: ignore[arg-type]
    attempt = _settled_charge(env, world.a.invoice_id)
    intent = _intent(env, attempt.payment_intent_id)
    for amount in (1, 2, 3):  # not repeats: each waits for the drain
        row = _post(env, {**intent, "amount": intent["amount"] + amount}, "payment_intent.succeeded")
        assert row.processed_at is None
    assert sent == [(TASK_DRAIN_WEBHOOK_EVENTS, {}, DRAIN_GATHER_SECONDS)]
    assert DRAIN_GATHER_SECONDS < DRAIN_PENDING_TTL_SECONDS
    flag.delete(DRAIN_PENDING_KEY)  # what the drain does when it starts
    _post(env, {**intent, "amount": intent["amount"] + 4}, "payment_intent.succeeded")
    assert len(sent) == 2

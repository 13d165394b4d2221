"""STRIPE_WEBHOOK_SECRET takes a comma-separated list: the account's endpoint and a Connect endpoint
sign with secrets of their own, and a rotation accepts the old and the new secret for a while. An event
signed with any other secret is refused."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select

import web
from shared.config import load_config
from shared.domain.models import WebhookEvent
from tests.support.signing import signed
from tests.support.web_app import Env

OLD = "whsec_rotating-out-Kd81nQ"
NEW = "whsec_rotating-in-Hs02vB"
OTHER = "whsec_never-configured-Zt77pL"


def _event(event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": "customer.created",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": "cus_1", "object": "customer"}},
    }


def test_two_secrets_are_accepted_at_once_and_a_third_is_refused(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", f" {OLD}, {NEW} ,")
    assert load_config().stripe_webhook_secrets == (OLD, NEW)
    app = web.create_app()
    http = app.test_client()

    answers = {}
    for name, secret in (("old", OLD), ("new", NEW), ("other", OTHER)):
        payload, headers = signed(_event(f"evt_signed_with_{name}"), secret)
        answers[name] = http.post("/webhooks/stripe", data=payload, headers=headers)

    assert answers["old"].status_code == answers["new"].status_code == 200
    assert answers["other"].status_code == 400
    assert answers["other"].json["error"] == "invalid_signature"
    with env.session() as s:
        stored = set(s.scalars(select(WebhookEvent.stripe_event_id)))
    assert stored == {"evt_signed_with_old", "evt_signed_with_new"}


def test_every_configured_secret_is_kept_out_of_the_logs(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", f"{OLD},{NEW}")
    assert {OLD, NEW} <= set(load_config().log_secrets())

"""Secrets never show: not in any page or API answer, not in any log line, not in the database, across
sign-ins, a charge from request to webhook, and an unexpected error. No card number in any page either."""

from __future__ import annotations

import logging
import re
import time

import pytest
from sqlalchemy import select
from werkzeug.test import TestResponse

from shared.domain.models import ChargeAttempt, WebhookEvent
from shared.services.charging import run_attempt
from shared.services.webhooks import process_event
from tests.support.emulator import emulator_state
from tests.support.signing import signed
from tests.support.web_app import (
    SECRETS,
    WEBHOOK_SECRET,
    Env,
    World,
    api,
    bearer,
    csrf_of,
    methods,
    rules,
    sign_in_admin,
    sign_in_client,
    url_for_rule,
)


def _text(answer: TestResponse) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
    return f"{answer.status_code}\n{headers}\n{answer.get_data(as_text=True)}"


def _logs(caplog: pytest.LogCaptureFixture) -> str:
    # The emulator plays Stripe, which knows the key; it is not part of Offsession.
    ours = [r for r in caplog.records if not r.name.startswith("stripe_emulator")]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) + " " + repr(r.args) for r in ours)


def test_secrets_appear_in_no_page_no_log_and_no_row(
    env: Env, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[TestResponse] = []
    admin = env.app.test_client()
    answers.append(sign_in_admin(admin, password="a-wrong-password"))
    answers.append(sign_in_admin(admin))
    client = env.app.test_client()
    sign_in_client(client, env, world.a.email)

    # A charge from the Charge buyer button to Stripe and back through a webhook.
    token = csrf_of(admin)
    queued = admin.post(
        f"/admin/invoices/{world.a.invoice_id}/charge",
        headers={"Accept": "application/json", "X-CSRF-Token": token},
    )
    answers.append(queued)
    assert queued.status_code == 202
    charge_id = queued.json["id"]
    runtime = env.runtime
    run_attempt(runtime.sessions, runtime.gateway, charge_id, lease_seconds=60, max_transient_retries=1)
    with env.session() as s:
        attempt = s.get(ChargeAttempt, charge_id)
        assert attempt is not None and attempt.status == "succeeded", attempt and attempt.status
        pi_id = attempt.payment_intent_id
    intent = next(pi for pi in emulator_state(env.emulator)["payment_intents"] if pi["id"] == pi_id)
    event = {
        "id": "evt_security_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": intent},
    }
    payload, headers = signed(event, WEBHOOK_SECRET)
    delivered = env.app.test_client().post("/webhooks/stripe", data=payload, headers=headers)
    answers.append(delivered)
    assert delivered.status_code == 200 and delivered.json["received"] is True
    with env.session() as s:
        row_id = s.scalar(select(WebhookEvent.id).where(WebhookEvent.stripe_event_id == "evt_security_1"))
    assert row_id is not None
    process_event(env.runtime.sessions, env.runtime.gateway, row_id)
    forged_payload, forged_headers = signed({**event, "id": "evt_forged"}, "whsec_guessed")
    answers.append(
        env.app.test_client().post("/webhooks/stripe", data=forged_payload, headers=forged_headers)
    )
    assert answers[-1].status_code == 400

    # The pages and answers that could show configuration, a charge or an error.
    answers += [
        admin.get(f"/admin/invoices/{world.a.invoice_id}"),
        admin.get("/admin/charges?status=succeeded"),
        admin.get("/admin/settings"),
        admin.get(f"/admin/charges/{charge_id}.json"),
        client.get(f"/client/invoices/{world.a.invoice_id}"),
        client.get("/client/cards"),
        api(env.app.test_client(), "GET", "/api/settings"),
        api(env.app.test_client(), "GET", f"/api/charges/{charge_id}"),
        api(env.app.test_client(), "GET", f"/api/clients/{world.a.client_id}"),
        env.app.test_client().get("/api/settings", headers=bearer("os_wrong")),
        api(env.app.test_client(), "POST", "/api/clients", {"name": "x", "email": "bad"}),
    ]
    # Too many failed sign-ins: the refusal is logged, and so is an unexpected error with its traceback.
    for _ in range(6):
        answers.append(sign_in_admin(env.app.test_client(), "intruder@example.com", "a-guessed-password"))
    assert answers[-1].status_code == 429
    answers.append(api(env.app.test_client(), "GET", f"/api/invoices/{10**20}"))

    logs = _logs(caplog)
    # The Stripe SDK's own request and response lines, the likeliest place for a key, were captured.
    assert "Request to Stripe api" in logs and "API response body" in logs
    pages = "\n".join(_text(a) for a in answers)
    database = repr(env.snapshot())
    emails = "\n".join(p.read_text(errors="replace") for p in env.email_files())
    for name, secret in SECRETS.items():
        assert secret not in logs, f"{name} in the logs"
        assert secret not in pages, f"{name} in a page or API answer"
        assert secret not in database, f"{name} in the database"
        assert secret not in emails, f"{name} in an email"


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
CARD_NUMBER_LIKE = re.compile(r"(?<![\d.])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7})(?![\d.])")


def test_no_page_shows_a_card_number(env: Env, world: World) -> None:
    admin = env.app.test_client()
    sign_in_admin(admin)
    client = env.app.test_client()
    sign_in_client(client, env, world.a.email)
    seen = 0
    for http, prefix in ((admin, "/admin"), (client, "/client"), (env.app.test_client(), "/api/")):
        for rule in rules(env.app, prefix):
            if "GET" not in methods(rule) or rule.endpoint in (
                "client.open_link",
                "client.authenticate_from_email",
            ):
                continue
            answer = http.get(url_for_rule(rule, world.a), headers=bearer() if prefix == "/api/" else {})
            if answer.status_code != 200:
                continue
            text = UUID.sub("", answer.get_data(as_text=True))
            assert not CARD_NUMBER_LIKE.search(text), (rule.rule, CARD_NUMBER_LIKE.findall(text))
            seen += 1
    assert seen >= 15  # the pages that show cards (client cards, invoices, API client) among them
    cards_page = client.get("/client/cards").get_data(as_text=True)
    assert "4242" in cards_page and "4242424242424242" not in cards_page  # last four only

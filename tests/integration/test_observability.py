"""Issue 9 through the real processes: a charge POSTed with an X-Request-ID is followed by JSON log lines
in the web and the worker carrying its ids, no line holds a secret, and /metrics on the web process
shows what the worker measured (Stripe latency, rate-budget waits) and the state of the charges."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import TOKEN, WEBHOOK_SECRET, Stack

pytestmark = pytest.mark.integration

SECRETS = (TOKEN, WEBHOOK_SECRET, "sk_test_emulator", "integration-secret")


def json_lines(text: str) -> list[dict[str, Any]]:
    """The log's JSON lines (Celery's start-up banner is plain text printed before logging starts)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def wait_for_line(stack: Stack, process: str, predicate: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in json_lines(stack.log(process)):
            if predicate(line):
                return line
        time.sleep(0.2)
    stack.dump_logs()
    raise AssertionError(f"no matching JSON line in the {process} log after {timeout}s")


def scrape(stack: Stack) -> dict[str, Any]:
    request = urllib.request.Request(stack.base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_a_charge_is_followed_by_its_ids_from_the_request_to_the_worker(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"])
    request_id = "it-" + os.urandom(6).hex()

    request = urllib.request.Request(
        f"{stack.base}/api/invoices/{invoice['id']}/charges",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "X-Request-ID": request_id,
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 202
        assert answer.headers["X-Request-ID"] == request_id
        charge = json.loads(answer.read())
    settled = stack.wait_charge(charge["id"])
    assert settled["status"] == "succeeded", settled
    (intent,) = stack.payment_intents_for(invoice["id"])

    # The worker's line saying how the attempt settled carries every id, the request's included.
    line = wait_for_line(
        stack,
        "worker0",
        lambda entry: entry.get("charge_attempt_id") == charge["id"] and entry.get("status") == "succeeded",
    )
    assert line["request_id"] == request_id
    assert line["invoice_id"] == invoice["id"]
    assert line["payment_intent_id"] == intent["id"]
    assert line["task"] == "offsession.charge_attempt" and line["level"] == "info"
    # The web process logged the request under the same id, by route (never a path that holds a token).
    web_line = wait_for_line(stack, "web", lambda entry: entry.get("request_id") == request_id)
    assert web_line["route"] == "/api/invoices/<int:invoice_id>/charges" and web_line["status"] == 202

    # The webhook Stripe sent for it: the endpoint's line names its event and PaymentIntent, and says
    # whether a worker will process it (then the worker's lines carry the same ids) or the endpoint stored
    # it processed (it repeated what the worker had recorded already). The line of the delivery that
    # stored it: a second delivery (this stack's emulator also sends to the endpoint Connect registered)
    # says `duplicate`, and may be written first.
    webhook_line = wait_for_line(
        stack,
        "web",
        lambda entry: entry.get("route") == "/webhooks/stripe"
        and entry.get("payment_intent_id") == intent["id"]
        and entry.get("webhook") != "duplicate",
    )
    assert webhook_line["event_id"].startswith("evt_") and webhook_line["status"] == 200
    assert webhook_line["webhook"] in ("queued", "stored processed")
    if webhook_line["webhook"] == "queued":
        worker_line = wait_for_line(
            stack,
            "worker0",
            lambda entry: (
                entry.get("task") in ("offsession.process_webhook_event", "offsession.drain_webhook_events")
                and entry.get("event_id") == webhook_line["event_id"]
            ),
        )
        assert worker_line["payment_intent_id"] == intent["id"]

    # A caller's id that is not a plausible id is replaced, not echoed.
    request = urllib.request.Request(
        f"{stack.base}/api/invoices/{invoice['id']}",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "x" * 200},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-ID"])

    # No secret in any line of our processes (the emulator plays Stripe and is not ours).
    for process in ("web", "worker0"):
        text = stack.log(process)
        for secret in SECRETS:
            assert secret not in text, (process, secret)
        assert not re.search(r"_secret_[A-Za-z0-9]", text), process


def test_metrics_on_the_web_process_show_what_the_worker_measured(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"])
    status, charge = stack.charge(invoice["id"])
    assert status == 202, charge
    assert stack.wait_charge(charge["id"])["status"] == "succeeded"

    families = scrape(stack)
    samples = families["offsession_stripe_request_duration_seconds"].samples
    creates = [
        s
        for s in samples
        if s.name.endswith("_count")
        and s.labels == {"operation": "create_offsession_payment_intent", "outcome": "ok"}
    ]
    assert creates and creates[0].value >= 1
    waits = families["offsession_rate_limit_wait_seconds"].samples
    assert next(s.value for s in waits if s.name.endswith("_count")) >= 1
    charges = {s.labels["status"]: s.value for s in families["offsession_charge_attempts"].samples}
    assert charges["succeeded"] >= 1
    depth = {s.labels["queue"]: s.value for s in families["offsession_queue_depth"].samples}
    assert set(depth) == {"charges", "webhooks", "maintenance"}
    up = {s.labels["source"]: s.value for s in families["offsession_metrics_source_up"].samples}
    assert up == {"database": 1, "redis": 1, "broker": 1}

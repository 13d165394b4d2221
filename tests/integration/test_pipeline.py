"""Issue 4's pipeline through real processes: gunicorn, Celery workers on redis-server, the emulator,
on SQLite and on PostgreSQL (the `stack` fixture)."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time

import pytest
from celery import Celery

from tests.support.signing import signed
from tests.support.stack import WEBHOOK_SECRET, Stack, db_rows, http
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CARDS = {
    "pm_card_visa": ("succeeded", None, None),
    "pm_card_mastercard": ("succeeded", None, None),
    "pm_card_chargeDeclined": ("failed", "card_declined", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": ("failed", "card_declined", "insufficient_funds"),
    "pm_card_chargeDeclinedExpiredCard": ("failed", "expired_card", "expired_card"),
    "pm_card_authenticationRequired": (
        "requires_action",
        "authentication_required",
        "authentication_required",
    ),
    "pm_card_chargeCustomerFail": ("failed", "card_declined", "generic_decline"),
}


def test_happy_path_queued_at_once_then_succeeded_once(stack: Stack) -> None:
    client = stack.client_with_card("pm_card_visa")
    invoice = stack.invoice(client["id"], total=12_345)
    status, charge = stack.charge(invoice["id"])
    assert status == 202
    assert charge["status"] == "queued" and charge["amount"] == 12_345 and charge["currency"] == "usd"
    final = stack.wait_charge(charge["id"])
    assert final["status"] == "succeeded" and final["payment_intent_id"].startswith("pi_")
    status, paid = stack.api("GET", f"/api/invoices/{invoice['id']}")
    assert (paid["status"], paid["amount_due"], paid["amount_paid"]) == ("paid", 0, 12_345)
    assert [p["method"] for p in paid["payments"]] == ["card"]
    assert paid["charge"]["eligible"] is False
    assert [b["code"] for b in paid["charge"]["blockers"]] == ["nothing_due"]
    pis = stack.payment_intents_for(invoice["id"])
    assert [(pi["status"], pi["amount"]) for pi in pis] == [("succeeded", 12_345)]
    assert pis[0]["metadata"]["charge_attempt_id"] == charge["id"]


@pytest.mark.parametrize("token", list(CARDS))
def test_each_test_card_ends_in_its_state(stack: Stack, token: str) -> None:
    want_status, want_code, want_decline = CARDS[token]
    client = stack.client_with_card(token)
    invoice = stack.invoice(client["id"])
    status, charge = stack.charge(invoice["id"])
    assert status == 202, charge
    final = stack.wait_charge(charge["id"])
    assert (final["status"], final["failure_code"], final["decline_code"]) == (
        want_status,
        want_code,
        want_decline,
    )
    if want_status == "failed":
        assert final["failure_message"]
    status, after = stack.api("GET", f"/api/invoices/{invoice['id']}")
    assert after["amount_due"] == (0 if want_status == "succeeded" else 10_000)
    assert len(stack.payment_intents_for(invoice["id"])) == 1


def test_partial_charge_then_the_rest(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"], total=10_000)
    status, first = stack.charge(invoice["id"], amount=4_000)
    assert status == 202 and first["amount"] == 4_000
    assert stack.wait_charge(first["id"])["status"] == "succeeded"
    _, after = stack.api("GET", f"/api/invoices/{invoice['id']}")
    assert (after["amount_due"], after["status"]) == (6_000, "partially_paid")
    status, second = stack.charge(invoice["id"])
    assert status == 202 and second["amount"] == 6_000
    assert stack.wait_charge(second["id"])["status"] == "succeeded"
    _, done = stack.api("GET", f"/api/invoices/{invoice['id']}")
    assert (done["amount_due"], done["status"]) == (0, "paid")


def test_amount_is_checked_on_the_server(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"], total=10_000)
    for amount, code in [(10_001, 422), (-5, 422), (49, 409)]:
        status, body = stack.charge(invoice["id"], amount=amount)
        assert status == code, body
    status, body = stack.api("POST", f"/api/invoices/{invoice['id']}/charges", {"amount": 12.5})
    assert status == 422 and body["error"] == "invalid"
    assert stack.api("GET", f"/api/charges?invoice_id={invoice['id']}")[1]["data"] == []


def test_fifty_concurrent_clicks_make_one_charge(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"])
    with cf.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: stack.charge(invoice["id"]), range(50)))
    accepted = [body for status, body in results if status == 202]
    refused = [body for status, body in results if status == 409]
    assert len(accepted) == 1 and len(refused) == 49, [s for s, _ in results]
    assert all(b["error"] == "not_chargeable" for b in refused)
    # Refused while the charge runs, or, for the slowest clicks, because it already settled.
    reasons = [{bl["code"] for bl in b["blockers"]} for b in refused]
    assert all(r in ({"charge_in_progress"}, {"nothing_due"}) for r in reasons), reasons
    assert {"charge_in_progress"} in reasons
    assert stack.wait_charge(accepted[0]["id"])["status"] == "succeeded"
    assert len(stack.payment_intents_for(invoice["id"])) == 1


def test_idempotency_key_returns_the_original_answer(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"])
    key = {"Idempotency-Key": f"click-{random.random()}"}
    status, first = stack.charge(invoice["id"], headers=key)
    assert status == 202
    status, again = stack.charge(invoice["id"], headers=key)
    assert status == 202 and again == first
    status, other = stack.charge(invoice["id"], amount=500, headers=key)
    assert status == 422 and other["error"] == "idempotency_key_reused"
    stack.wait_charge(first["id"])
    assert len(stack.payment_intents_for(invoice["id"])) == 1


def handled_all(stack: Stack, charge_id: str, *, deliveries: int) -> None:
    """Wait until the workers have handled `deliveries` messages of the charge, and every look-again a
    delivery that found the lease held has published since (each such delivery logs `held`)."""
    line = f"charge {charge_id}: "

    def every_one_handled() -> bool:
        return stack.log_count(line) >= deliveries + stack.log_count(f"{line}held")

    wait_until(every_one_handled, timeout=60, what=f"{deliveries} deliveries of charge {charge_id} handled")


def test_the_same_message_delivered_twice_and_concurrently_charges_once(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"])
    producer = Celery(broker=stack.env["CELERY_BROKER_URL"])
    status, charge = stack.charge(invoice["id"])
    assert status == 202
    # Three more copies of the same message, racing the original on two pool processes.
    for _ in range(3):
        producer.send_task("offsession.charge_attempt", kwargs={"attempt_id": charge["id"]}, queue="charges")
    assert stack.wait_charge(charge["id"])["status"] == "succeeded"
    handled_all(stack, charge["id"], deliveries=4)  # the copies have run out
    for _ in range(2):  # and twice more after the fact
        producer.send_task("offsession.charge_attempt", kwargs={"attempt_id": charge["id"]}, queue="charges")
    handled_all(stack, charge["id"], deliveries=6)
    producer.close()
    assert len(stack.payment_intents_for(invoice["id"])) == 1
    rows = db_rows(stack, "select count(*) from payment where invoice_id = :i", i=invoice["id"])
    assert rows[0][0] == 1


def test_drop_after_commit_and_5xx_bursts_charge_exactly_once(stack: Stack) -> None:
    client = stack.client_with_card()
    invoices = [stack.invoice(client["id"]) for _ in range(4)]
    stack.faults(drop_after_commit_rate=0.5, error_rate=0.4)
    try:
        charges = [stack.charge(inv["id"])[1] for inv in invoices]
        finals = [stack.wait_charge(ch["id"], timeout=120) for ch in charges]
    finally:
        stack.faults(drop_after_commit_rate=0.0, error_rate=0.0)
    assert [f["status"] for f in finals] == ["succeeded"] * 4
    for inv in invoices:
        assert len([pi for pi in stack.payment_intents_for(inv["id"]) if pi["status"] == "succeeded"]) == 1
        _, after = stack.api("GET", f"/api/invoices/{inv['id']}")
        assert after["status"] == "paid" and len(after["payments"]) == 1


def test_forged_and_stale_webhooks_are_refused_and_not_stored(stack: Stack) -> None:
    before = db_rows(stack, "select count(*) from webhook_event")[0][0]
    event = {
        "id": "evt_forged_1",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_x", "object": "payment_intent", "status": "succeeded"}},
    }
    payload, headers = signed(event, "whsec_wrong")
    status, body = http("POST", stack.base + "/webhooks/stripe", raw=payload, headers=headers)
    assert status == 400 and body["error"] == "invalid_signature"
    payload, headers = signed(event, WEBHOOK_SECRET, timestamp=int(time.time()) - 301)
    status, body = http("POST", stack.base + "/webhooks/stripe", raw=payload, headers=headers)
    assert status == 400 and body["error"] == "invalid_signature"
    status, body = http(
        "POST", stack.base + "/webhooks/stripe", raw=b"{}", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert db_rows(stack, "select count(*) from webhook_event")[0][0] == before


def test_a_late_payment_failed_never_overwrites_succeeded(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"])
    _, charge = stack.charge(invoice["id"])
    final = stack.wait_charge(charge["id"])
    assert final["status"] == "succeeded"
    late = {
        "id": f"evt_late_{random.randrange(10**9)}",
        "object": "event",
        "type": "payment_intent.payment_failed",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": final["payment_intent_id"],
                "object": "payment_intent",
                "status": "requires_payment_method",
                "amount": 10_000,
                "currency": "usd",
                "metadata": {"charge_attempt_id": charge["id"]},
                "last_payment_error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                },
            }
        },
    }
    for _ in range(3):
        payload, headers = signed(late, WEBHOOK_SECRET)
        status, _ = http("POST", stack.base + "/webhooks/stripe", raw=payload, headers=headers)
        assert status == 200
    rows = wait_until(
        lambda: [
            row
            for row in db_rows(
                stack, "select processed_at from webhook_event where stripe_event_id = :e", e=late["id"]
            )
            if row[0] is not None
        ],
        timeout=20,
        what="the late event processed",
    )
    assert len(rows) == 1  # stored once, processed
    assert stack.api("GET", f"/api/charges/{charge['id']}")[1]["status"] == "succeeded"
    _, after = stack.api("GET", f"/api/invoices/{invoice['id']}")
    assert after["status"] == "paid" and len(after["payments"]) == 1


def test_audit_trail_has_the_requester_and_every_transition(stack: Stack) -> None:
    client = stack.client_with_card()
    invoice = stack.invoice(client["id"])
    _, charge = stack.charge(invoice["id"])
    stack.wait_charge(charge["id"])
    rows = db_rows(
        stack,
        "select actor, action from audit_event where charge_attempt_id = :c order by id",
        c=charge["id"],
    )
    assert rows[0] == ("api", "charge.requested")
    assert [a for _, a in rows[1:]] == ["charge.processing", "charge.succeeded"]
    assert rows[1][0] == "worker"


def test_health_and_auth(stack: Stack) -> None:
    status, body = http("GET", stack.base + "/healthz")
    assert status == 200 and body == {"broker": "ok", "database": "ok"}
    assert http("GET", stack.base + "/api/settings")[0] == 401
    assert http("GET", stack.base + "/api/settings", headers={"Authorization": "Bearer nope"})[0] == 401
    status, body = stack.api("GET", "/api/charges/no-such-charge")
    assert status == 404 and body["error"] == "not_found"


def test_duplicated_reordered_webhooks_from_the_emulator_change_nothing(stack: Stack) -> None:
    """Stripe's own delivery, duplicated and shuffled: final states and the ledger stay right."""
    stack.faults(webhook_duplicate_rate=1.0, webhook_reorder=True)
    try:
        cases = [
            ("pm_card_visa", "succeeded"),
            ("pm_card_chargeDeclined", "failed"),
            ("pm_card_authenticationRequired", "requires_action"),
        ]
        charges = []
        for token, want in cases:
            invoice = stack.invoice(stack.client_with_card(token)["id"])
            charges.append((invoice, stack.charge(invoice["id"])[1], want))
        for _, charge, want in charges:
            assert stack.wait_charge(charge["id"])["status"] == want
        # Every delivery made, duplicates included, and every stored event processed.
        wait_until(
            lambda: stack.emulator_state()["webhooks"]["queued"] == 0
            and db_rows(stack, "select count(*) from webhook_event where processed_at is null")[0][0] == 0,
            timeout=60,
            what="every webhook delivered and processed",
        )
        for invoice, charge, want in charges:
            assert stack.api("GET", f"/api/charges/{charge['id']}")[1]["status"] == want
            _, after = stack.api("GET", f"/api/invoices/{invoice['id']}")
            assert len(after["payments"]) == (1 if want == "succeeded" else 0)
        unprocessed = db_rows(stack, "select count(*) from webhook_event where processed_at is null")[0][0]
        assert unprocessed == 0
    finally:
        stack.faults(webhook_duplicate_rate=0.0, webhook_reorder=False)

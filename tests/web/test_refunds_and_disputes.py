"""Refunds through the API and the invoice page, disputes on the invoice and the Charges page, against
the in-process emulator (Stripe's events read from its state and applied as the worker would)."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient

from shared.services.charging import run_attempt
from shared.services.refunds import run_refund
from shared.services.webhooks import process_event, store_event
from tests.support.emulator import admin, emulator_state
from tests.support.web_app import Env, World, api, csrf_of, sign_in_admin


def _paid(env: Env, world: World) -> tuple[int, str, str]:
    """World a's queued charge run to success: (invoice id, charge id, PaymentIntent id)."""
    report = run_attempt(
        env.runtime.sessions,
        env.runtime.gateway,
        world.a.charge_id,
        lease_seconds=60,
        max_transient_retries=2,
    )
    assert report.status == "succeeded"
    charge = api(env.app.test_client(), "GET", f"/api/charges/{world.a.charge_id}").json
    return world.a.charged_invoice_id, world.a.charge_id, charge["payment_intent_id"]


def _apply_events(env: Env, match: str, types: tuple[str, ...]) -> list[str]:
    """Stripe's events about `match` (a PaymentIntent id) of these types, applied in order."""
    outcomes = []
    for event in emulator_state(env.emulator)["events"]:
        obj = event["data"]["object"]
        if event["type"] in types and match in (obj.get("payment_intent"), obj.get("id")):
            with env.session() as session, session.begin():
                row = store_event(session, event)
            outcomes.append(process_event(env.runtime.sessions, env.runtime.gateway, row.id))
    return outcomes


def _invoice(client: FlaskClient, invoice_id: int) -> dict[str, Any]:
    return api(client, "GET", f"/api/invoices/{invoice_id}").json


def test_the_api_refunds_part_of_a_charge_then_the_rest_and_no_more(env: Env, world: World) -> None:
    invoice_id, charge_id, _ = _paid(env, world)
    http = env.app.test_client()
    made = api(
        http,
        "POST",
        f"/api/charges/{charge_id}/refunds",
        {"amount": 1_500, "reason": "requested_by_customer"},
    )
    assert made.status_code == 202, made.json
    assert (made.json["status"], made.json["amount"], made.json["charge_id"]) == ("pending", 1_500, charge_id)
    assert _invoice(http, invoice_id)["amount_due"] == 0  # nothing moves until Stripe says so
    run_refund(env.runtime.sessions, env.runtime.gateway, made.json["id"])
    read = api(http, "GET", f"/api/refunds/{made.json['id']}").json
    assert read["status"] == "succeeded" and read["stripe_refund_id"].startswith("re_")
    assert _invoice(http, invoice_id)["amount_due"] == 1_500

    too_much = api(http, "POST", f"/api/charges/{charge_id}/refunds", {"amount": 3_501})
    assert too_much.status_code == 409 and too_much.json["error"] == "amount_too_large"
    assert "$35.00 that remains refundable" in too_much.json["message"]
    bad_reason = api(http, "POST", f"/api/charges/{charge_id}/refunds", {"reason": "changed my mind"})
    assert bad_reason.status_code == 422
    rest = api(http, "POST", f"/api/charges/{charge_id}/refunds")
    assert rest.status_code == 202 and rest.json["amount"] == 3_500
    assert api(http, "POST", f"/api/charges/{charge_id}/refunds").json["error"] == "refund_in_progress"
    assert api(http, "GET", "/api/refunds/00000000-0000-4000-8000-000000000000").status_code == 404
    assert api(http, "POST", f"/api/charges/{world.b.charge_id}/refunds").json["error"] == "not_refundable"


def test_the_invoice_page_refunds_and_refuses_more_than_remains_with_the_reason(
    env: Env, world: World
) -> None:
    invoice_id, charge_id, _ = _paid(env, world)
    http = env.app.test_client()
    assert sign_in_admin(http).status_code == 302
    page = http.get(f"/admin/invoices/{invoice_id}").get_data(as_text=True)
    assert 'id="refunds"' in page and 'value="50.00"' in page  # the default: all that remains
    form = {"csrf_token": csrf_of(http), "amount": "50.01", "reason": "duplicate"}
    refused = http.post(f"/admin/charges/{charge_id}/refunds", data=form, follow_redirects=True)
    assert "Refund not made: $50.01 is more than the $50.00 that remains refundable" in refused.get_data(
        as_text=True
    )
    form["amount"] = "20.00"
    made = http.post(f"/admin/charges/{charge_id}/refunds", data=form, follow_redirects=True).get_data(
        as_text=True
    )
    assert "Refund of $20.00 requested" in made and 'data-refund-status="pending"' in made
    refund_id = re.search(r'data-refund-id="([0-9a-f-]{36})"', made).group(1)  # type: ignore[union-attr]
    run_refund(env.runtime.sessions, env.runtime.gateway, refund_id)
    after = http.get(f"/admin/invoices/{invoice_id}").get_data(as_text=True)
    assert 'data-refund-status="succeeded"' in after and ">Refunded<" in after
    assert "$30.00 remains refundable" in after


def test_a_refund_from_the_invoice_page_says_auto_charge_is_now_off_and_the_timeline_shows_it(
    env: Env, world: World
) -> None:
    invoice_id, charge_id, _ = _paid(env, world)
    http = env.app.test_client()
    turned_on = api(http, "PATCH", f"/api/invoices/{invoice_id}", {"auto_charge": True})
    assert turned_on.status_code == 200, turned_on.json
    assert sign_in_admin(http).status_code == 302
    form = {"csrf_token": csrf_of(http), "amount": "20.00"}
    page = http.post(f"/admin/charges/{charge_id}/refunds", data=form, follow_redirects=True).get_data(
        as_text=True
    )
    assert (
        "Auto-charge is now off for this invoice so the refunded amount is not charged again; turn it back "
        "on to collect it." in page
    )
    assert re.search(
        r"invoice auto charge changed</strong> by admin:ops@example.com\s*<small>from: True, to: False, "
        r"because: refund [0-9a-f-]{36}</small>",
        page,
    )
    assert _invoice(http, invoice_id)["auto_charge"] is False
    # Refunding again says nothing more: it is off already.
    again = http.post(f"/admin/charges/{charge_id}/refunds", data=form, follow_redirects=True)
    assert "Auto-charge is now off" not in again.get_data(as_text=True)


def test_a_dispute_shows_on_the_invoice_and_the_charges_page_and_the_ledger_follows_its_funds(
    env: Env, world: World
) -> None:
    invoice_id, _, pi_id = _paid(env, world)
    http = env.app.test_client()
    charge = next(
        pi["latest_charge"] for pi in emulator_state(env.emulator)["payment_intents"] if pi["id"] == pi_id
    )
    status, dispute = admin(
        env.emulator, "POST", f"/_emulator/charges/{charge}/dispute", {"reason": "product_not_received"}
    )
    assert status == 200, dispute
    _apply_events(env, pi_id, ("charge.dispute.created", "charge.dispute.funds_withdrawn"))
    assert _invoice(http, invoice_id)["amount_due"] == 5_000  # the funds withdrawn left the ledger
    assert sign_in_admin(http).status_code == 302
    page = http.get(f"/admin/invoices/{invoice_id}").get_data(as_text=True)
    assert "<strong>Disputed</strong>" in page and "$50.00" in page and "product not received" in page
    assert "It cannot be refunded while the client's bank disputes it." in page
    # The withdrawn funds are due again, but the card may not be charged for them while it is open.
    greyed = 'title="A card payment of $50.00 is disputed with the card&#39;s bank: the card cannot'
    assert greyed in page and 'data-code="charge_disputed"' in page
    assert re.search(r'<button type="submit" id="charge-button" disabled', page)
    refused = api(http, "POST", f"/api/invoices/{invoice_id}/charges")
    assert refused.status_code == 409
    assert [b["code"] for b in refused.json["blockers"]] == ["charge_disputed"]
    assert _invoice(http, invoice_id)["charge"]["blockers"][0]["code"] == "charge_disputed"
    charges_page = http.get("/admin/charges").get_data(as_text=True)
    assert "Open disputes (1)" in charges_page and dispute["id"] in charges_page
    metrics = http.get("/metrics", headers={"Authorization": f"Bearer {env.runtime.config.api_token}"})
    assert "offsession_disputes_open 1.0" in metrics.get_data(as_text=True)

    status, _ = admin(env.emulator, "POST", f"/_emulator/disputes/{dispute['id']}/settle", {"status": "won"})
    assert status == 200
    _apply_events(
        env, pi_id, ("charge.dispute.closed", "charge.dispute.funds_reinstated", "charge.dispute.created")
    )
    assert _invoice(http, invoice_id)["amount_due"] == 0
    assert "Open disputes (0)" in http.get("/admin/charges").get_data(as_text=True)

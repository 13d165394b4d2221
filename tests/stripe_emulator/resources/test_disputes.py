"""Disputes (stripe_emulator/resources/disputes.py) from Stripe's dispute test cards: created with the
charge, funds withdrawn; evidence winning_evidence / losing_evidence decides them as Stripe's test mode
does; close accepts the loss; funds reinstated when won."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.support.emulator import admin, charge, customer_with, set_faults, wait_until

pytestmark = pytest.mark.integration


def disputed(client: stripe.StripeClient, token: str = "pm_card_createDispute",
             amount: int = 4200) -> tuple[Any, Any]:
    cus, pm = customer_with(client, token)
    pi = charge(client, cus, pm, amount=amount)
    found = client.v1.disputes.list({"payment_intent": pi.id}).data
    assert len(found) == 1
    return pi, found[0]


def types(client: stripe.StripeClient) -> list[str]:
    return [e.type for e in client.v1.events.list({"limit": 100}).data if e.type.startswith("charge.dispute")]


def test_the_dispute_card_is_disputed_after_a_successful_charge(client: stripe.StripeClient) -> None:
    pi, dispute = disputed(client)
    assert pi.status == "succeeded"
    assert (dispute.amount, dispute.currency, dispute.reason, dispute.status) == (
        4200, "usd", "fraudulent", "needs_response")
    assert dispute.charge == pi.latest_charge and dispute.is_charge_refundable is False
    assert dispute.evidence_details.due_by > dispute.created
    assert dispute.evidence_details.has_evidence is False and dispute.evidence.uncategorized_text is None
    withdrawn = dispute.balance_transactions[0]
    assert (withdrawn.amount, withdrawn.reporting_category) == (-4200, "dispute")
    assert client.v1.charges.retrieve(pi.latest_charge).disputed is True
    assert types(client) == ["charge.dispute.funds_withdrawn", "charge.dispute.created"]
    assert [d.id for d in client.v1.disputes.list({"charge": pi.latest_charge}).data] == [dispute.id]
    assert client.v1.disputes.retrieve(dispute.id).id == dispute.id


def test_winning_evidence_wins_and_reinstates_the_funds(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, settle_delay_ms=30)
    _, dispute = disputed(client)
    updated = client.v1.disputes.update(dispute.id, {"evidence": {"uncategorized_text": "winning_evidence",
                                                                  "customer_name": "Jo"}})
    assert updated.status == "under_review"
    assert updated.evidence_details.submission_count == 1 and updated.evidence.customer_name == "Jo"
    assert wait_until(lambda: client.v1.disputes.retrieve(dispute.id).status == "won")
    won = client.v1.disputes.retrieve(dispute.id)
    assert [t.amount for t in won.balance_transactions] == [-4200, 4200]
    assert won.is_charge_refundable is True
    assert types(client)[:3] == ["charge.dispute.funds_reinstated", "charge.dispute.closed",
                                 "charge.dispute.updated"]


def test_losing_evidence_loses_when_the_test_settles_it(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, settle_delay_ms=None)
    _, dispute = disputed(client, "pm_card_createDisputeProductNotReceived")
    assert dispute.reason == "product_not_received"
    client.v1.disputes.update(dispute.id, {"evidence": {"uncategorized_text": "losing_evidence"}})
    assert client.v1.disputes.retrieve(dispute.id).status == "under_review"
    status, decided = admin(base, "POST", f"/_emulator/disputes/{dispute.id}/settle", {})
    assert (status, decided["status"]) == (200, "lost")
    assert "charge.dispute.funds_reinstated" not in types(client)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.disputes.update(dispute.id, {"evidence": {"uncategorized_text": "more"}})


def test_staged_evidence_then_close(client: stripe.StripeClient) -> None:
    _, dispute = disputed(client)
    staged = client.v1.disputes.update(dispute.id, {"evidence": {"product_description": "A lamp"},
                                                    "submit": False, "metadata": {"case": "9"}})
    assert (staged.status, staged.evidence_details.has_evidence) == ("needs_response", True)
    assert staged.evidence_details.submission_count == 0 and staged.metadata["case"] == "9"
    closed = client.v1.disputes.close(dispute.id)
    assert closed.status == "lost"
    assert types(client)[0] == "charge.dispute.closed"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.disputes.close(dispute.id)


def test_an_inquiry_moves_no_funds(client: stripe.StripeClient, base: str) -> None:
    _, dispute = disputed(client, "pm_card_createDisputeInquiry")
    assert dispute.status == "warning_needs_response" and dispute.balance_transactions == []
    assert "charge.dispute.funds_withdrawn" not in types(client)
    assert client.v1.disputes.close(dispute.id).status == "warning_closed"


def test_a_test_may_dispute_any_succeeded_charge(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, settle_delay_ms=None)
    cus, pm = customer_with(client, "pm_card_visa")
    pi = charge(client, cus, pm, amount=900)
    status, dispute = admin(base, "POST", f"/_emulator/charges/{pi.latest_charge}/dispute",
                            {"reason": "product_unacceptable"})
    assert (status, dispute["reason"], dispute["amount"]) == (200, "product_unacceptable", 900)
    assert admin(base, "POST", f"/_emulator/charges/{pi.latest_charge}/dispute", {})[0] == 400
    status, won = admin(base, "POST", f"/_emulator/disputes/{dispute['id']}/settle", {"status": "won"})
    assert (status, won["status"]) == (200, "won")

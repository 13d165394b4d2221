"""Refunds (stripe_emulator/resources/refunds.py): partial refunds up to the charge, their states
(pending, succeeded, failed) and events, the failure fault and the test hook that settles them."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.support.emulator import admin, charge, customer_with, set_faults, wait_until

pytestmark = pytest.mark.integration


def test_refunds_emit_charge_refunded(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    pi = charge(client, cus, pm, amount=1000)
    part = client.v1.refunds.create({"payment_intent": pi.id, "amount": 400})
    assert (part.status, part.amount, part.charge) == ("succeeded", 400, pi.latest_charge)
    ch = client.v1.charges.retrieve(pi.latest_charge)
    assert (ch.amount_refunded, ch.refunded) == (400, False)
    rest = client.v1.refunds.create({"payment_intent": pi.id})
    assert rest.amount == 600
    assert client.v1.charges.retrieve(pi.latest_charge).refunded is True
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.refunds.create({"payment_intent": pi.id, "amount": 1})
    assert info.value.code == "charge_already_refunded"
    assert {r.id for r in client.v1.refunds.list({"payment_intent": pi.id}).data} == {part.id, rest.id}
    assert client.v1.refunds.retrieve(part.id).amount == 400
    refunded = client.v1.events.list({"type": "charge.refunded"}).data
    assert len(refunded) == 2 and refunded[0].data.object.refunded is True
    assert refunded[0].data.previous_attributes.amount_refunded == 400
    assert len(client.v1.events.list({"type": "refund.created"}).data) == 2


def paid(client: stripe.StripeClient, token: str = "pm_card_visa", amount: int = 1000) -> Any:
    cus, pm = customer_with(client, token)
    return charge(client, cus, pm, amount=amount)


def test_a_card_refund_succeeds_at_once_and_replays_byte_for_byte(client: stripe.StripeClient) -> None:
    pi = paid(client)
    params: Any = {"payment_intent": pi.id, "amount": 250, "reason": "requested_by_customer",
                   "metadata": {"refund_id": "7"}}
    first = client.v1.refunds.create(params, options={"idempotency_key": "rf-1"})
    again = client.v1.refunds.create(params, options={"idempotency_key": "rf-1"})
    assert again.last_response.body == first.last_response.body
    assert (first.status, first.pending_reason, first.failure_reason) == ("succeeded", None, None)
    assert (first.reason, first.metadata["refund_id"], first.payment_method) == (
        "requested_by_customer", "7", pi.payment_method)
    assert len(client.v1.refunds.list({"payment_intent": pi.id}).data) == 1
    with pytest.raises(stripe.InvalidRequestError) as over:
        client.v1.refunds.create({"payment_intent": pi.id, "amount": 751})
    assert (over.value.code, over.value.param) == ("amount_too_large", "amount")


def test_pending_then_succeeded_when_a_test_settles_it(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, settle_delay_ms=None)
    pi = paid(client, "pm_card_pendingRefund")
    refund = client.v1.refunds.create({"payment_intent": pi.id, "amount": 400})
    assert (refund.status, refund.pending_reason) == ("pending", "processing")
    assert client.v1.charges.retrieve(pi.latest_charge).amount_refunded == 400  # pending counts
    with pytest.raises(stripe.InvalidRequestError, match="requires_action"):
        client.v1.refunds.cancel(refund.id)  # only requires_action refunds; cards never get there
    status, settled = admin(base, "POST", f"/_emulator/refunds/{refund.id}/settle", {})
    assert (status, settled["status"]) == (200, "succeeded")
    assert client.v1.refunds.retrieve(refund.id).status == "succeeded"
    updated = client.v1.events.list({"type": "refund.updated"}).data
    assert [e.data.previous_attributes.status for e in updated] == ["pending"]
    assert updated[0].data.object.status == "succeeded"
    assert admin(base, "POST", f"/_emulator/refunds/{refund.id}/settle", {})[0] == 400  # nothing planned


def test_the_failure_fault_fails_refunds_and_gives_the_amount_back(
    client: stripe.StripeClient, base: str
) -> None:
    set_faults(base, refund_failure_rate=1.0, settle_delay_ms=None)
    pi = paid(client)
    refund = client.v1.refunds.create({"payment_intent": pi.id})
    assert refund.status == "pending"
    assert client.v1.charges.retrieve(pi.latest_charge).refunded is True
    status, failed = admin(base, "POST", f"/_emulator/refunds/{refund.id}/settle", {})
    assert (status, failed["status"], failed["failure_reason"]) == (200, "failed", "expired_or_canceled_card")
    ch = client.v1.charges.retrieve(pi.latest_charge)
    assert (ch.amount_refunded, ch.refunded) == (0, False)
    types = [e.type for e in client.v1.events.list({"limit": 5}).data]
    assert types[:3] == ["charge.refund.updated", "refund.failed", "refund.updated"]
    # The amount can be refunded again.
    set_faults(base, refund_failure_rate=0.0)
    assert client.v1.refunds.create({"payment_intent": pi.id}).status == "succeeded"


def test_a_test_may_fail_a_pending_refund_with_its_reason(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, settle_delay_ms=None)
    pi = paid(client, "pm_card_pendingRefund")
    refund = client.v1.refunds.create({"payment_intent": pi.id})
    status, failed = admin(base, "POST", f"/_emulator/refunds/{refund.id}/settle",
                           {"status": "failed", "failure_reason": "lost_or_stolen_card"})
    assert (status, failed["failure_reason"]) == (200, "lost_or_stolen_card")


def test_refund_fail_card_succeeds_then_fails_by_itself(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, settle_delay_ms=50)
    pi = paid(client, "pm_card_refundFail")
    refund = client.v1.refunds.create({"payment_intent": pi.id, "amount": 300})
    assert refund.status == "succeeded"
    assert wait_until(lambda: client.v1.refunds.retrieve(refund.id).status == "failed")
    assert client.v1.events.list({"type": "refund.failed"}).data[0].data.object.id == refund.id


def test_a_disputed_charge_cannot_be_refunded(client: stripe.StripeClient) -> None:
    pi = paid(client, "pm_card_createDispute")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create({"payment_intent": pi.id})
    assert caught.value.code == "charge_disputed"

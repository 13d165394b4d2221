"""Refunds (stripe_emulator/resources/refunds.py): partial refunds up to the charge, their events."""

from __future__ import annotations

import pytest
import stripe

from tests.support.emulator import charge, customer_with

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

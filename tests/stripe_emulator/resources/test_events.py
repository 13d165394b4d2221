"""Events as the API lists them (stripe_emulator/resources/events.py)."""

from __future__ import annotations

import pytest
import stripe

from tests.support.emulator import charge, customer_with

pytestmark = pytest.mark.integration


def test_events_list_retrieve_and_snapshot(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    pi = charge(client, cus, pm, key="k-evt")
    created = client.v1.events.list({"type": "payment_intent.created"}).data
    assert len(created) == 1
    evt = client.v1.events.retrieve(created[0].id)
    assert evt.object == "event" and evt.livemode is False and evt.id.startswith("evt_")
    assert evt.api_version == "2026-10-28.endive"
    assert evt.request.idempotency_key == "k-evt" and evt.request.id.startswith("req_")
    # data.object is the object as it was when the event happened.
    assert evt.data.object.id == pi.id and evt.data.object.status == "requires_confirmation"
    assert not hasattr(evt, "account") or evt.account is None
    wild = client.v1.events.list({"type": "payment_intent.*"}).data
    assert {e.type for e in wild} == {"payment_intent.created", "payment_intent.succeeded"}
    several = client.v1.events.list({"types": ["charge.succeeded", "customer.created"]}).data
    assert sorted(e.type for e in several) == ["charge.succeeded", "customer.created"]
    newest_first = client.v1.events.list().data
    assert [e.created for e in newest_first] == sorted((e.created for e in newest_first), reverse=True)
    assert newest_first[0].type == "payment_intent.succeeded"

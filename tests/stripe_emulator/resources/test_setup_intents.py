"""SetupIntents (stripe_emulator/resources/setup_intents.py): the card check and 3-D Secure at setup."""

from __future__ import annotations

import pytest
import stripe

from tests.support.emulator import admin, charge, event_types

pytestmark = pytest.mark.integration


def test_setup_intents(client: stripe.StripeClient, base: str) -> None:
    cus = client.v1.customers.create({})
    si = client.v1.setup_intents.create(
        {
            "customer": cus.id,
            "payment_method": "pm_card_visa",
            "usage": "off_session",
            "confirm": True,
            "allowed_payment_method_types": ["card"],
        }
    )
    assert si.status == "succeeded" and si.usage == "off_session"
    assert client.v1.payment_methods.retrieve(si.payment_method).customer == cus.id
    assert "setup_intent.succeeded" in event_types(client)
    # 3155: needs 3-D Secure at setup; once set up, off-session charges go through.
    setup = client.v1.setup_intents.create(
        {
            "customer": cus.id,
            "payment_method": "pm_card_authenticationRequiredOnSetup",
            "confirm": True,
            "allowed_payment_method_types": ["card"],
        }
    )
    assert setup.status == "requires_action"
    status, body = admin(base, "POST", f"/_emulator/setup_intents/{setup.id}/authenticate", {})
    assert (status, body["status"]) == (200, "succeeded")
    pm = client.v1.payment_methods.retrieve(setup.payment_method)
    assert charge(client, cus, pm).status == "succeeded"
    # A declining card fails its setup check, with the SetupIntent embedded in the error.
    with pytest.raises(stripe.CardError) as info:
        client.v1.setup_intents.create(
            {
                "customer": cus.id,
                "payment_method": "pm_card_chargeDeclined",
                "confirm": True,
                "allowed_payment_method_types": ["card"],
            }
        )
    assert info.value.error.setup_intent.status == "requires_payment_method"
    assert info.value.error.decline_code == "generic_decline"
    # chargeCustomerFail passes setup and declines only when charged.
    ok = client.v1.setup_intents.create(
        {
            "customer": cus.id,
            "payment_method": "pm_card_chargeCustomerFail",
            "allowed_payment_method_types": ["card"],
        }
    )
    assert ok.status == "requires_confirmation"
    assert client.v1.setup_intents.confirm(ok.id).status == "succeeded"
    assert client.v1.setup_intents.retrieve(ok.id).status == "succeeded"

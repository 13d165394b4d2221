"""PaymentMethods and customers' cards (stripe_emulator/resources/payment_methods.py, customers.py)."""

from __future__ import annotations

import pytest
import stripe

from tests.support.emulator import event_types

pytestmark = pytest.mark.integration


def test_attach_token_creates_new_payment_method_and_default(client: stripe.StripeClient) -> None:
    cus = client.v1.customers.create({"email": "b@example.com", "metadata": {"user_id": "42"}})
    pm = client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    pm2 = client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    assert pm.id.startswith("pm_") and pm.id != "pm_card_visa" and pm.id != pm2.id
    assert pm.customer == cus.id
    assert pm.card.fingerprint == pm2.card.fingerprint
    assert isinstance(pm.card.exp_month, int) and pm.card.exp_year > 2000
    updated = client.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
    assert updated.invoice_settings.default_payment_method == pm.id
    expanded = client.v1.customers.retrieve(cus.id, {"expand": ["invoice_settings.default_payment_method"]})
    assert expanded.invoice_settings.default_payment_method.card.last4 == "4242"
    listed = client.v1.customers.payment_methods.list(cus.id, {"type": "card"})
    assert {p.id for p in listed.data} == {pm.id, pm2.id}
    by_param = client.v1.payment_methods.list({"customer": cus.id, "type": "card"})
    assert {p.id for p in by_param.data} == {pm.id, pm2.id}
    # A card of another customer cannot become the default.
    other = client.v1.customers.create({})
    foreign = client.v1.payment_methods.attach("pm_card_mastercard", {"customer": other.id})
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": foreign.id}})
    assert info.value.param == "invoice_settings[default_payment_method]"
    # Detaching the default card clears the default.
    detached = client.v1.payment_methods.detach(pm.id)
    assert detached.customer is None
    assert client.v1.customers.retrieve(cus.id).invoice_settings.default_payment_method is None
    types = event_types(client)
    assert types.count("payment_method.attached") == 3
    assert "payment_method.detached" in types and "customer.updated" in types
    deleted = client.v1.customers.delete(other.id)
    assert deleted.deleted is True
    assert client.v1.customers.retrieve(other.id).deleted is True

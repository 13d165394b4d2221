"""Webhook endpoints (stripe_emulator/resources/webhook_endpoints.py): the secret is returned once and
then signs that endpoint's deliveries, only its enabled events reach it, and Connect endpoints receive
the connected accounts' events with ``account`` set."""

from __future__ import annotations

import json

import pytest
import stripe

from stripe_emulator import API_VERSION
from tests.support.emulator import (
    Receiver,
    charge,
    create_account,
    customer_with,
    raw,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_create_retrieve_update_list_delete(client: stripe.StripeClient, base: str) -> None:
    created = client.v1.webhook_endpoints.create(
        {"url": "https://app.example/webhooks/stripe", "enabled_events": ["payment_intent.succeeded"],
         "api_version": API_VERSION, "description": "Offsession", "metadata": {"by": "test"}},
        options={"idempotency_key": "we-1"},
    )
    assert created.object == "webhook_endpoint" and created.id.startswith("we_")
    assert created.secret.startswith("whsec_") and created.status == "enabled"
    assert (created.api_version, created.enabled_events) == (API_VERSION, ["payment_intent.succeeded"])
    # The same request again gives the same answer, secret included; a read never shows the secret.
    again = client.v1.webhook_endpoints.create(
        {"url": "https://app.example/webhooks/stripe", "enabled_events": ["payment_intent.succeeded"],
         "api_version": API_VERSION, "description": "Offsession", "metadata": {"by": "test"}},
        options={"idempotency_key": "we-1"},
    )
    assert again.last_response.body == created.last_response.body
    read = client.v1.webhook_endpoints.retrieve(created.id)
    assert "secret" not in read.to_dict() and read.url == "https://app.example/webhooks/stripe"
    updated = client.v1.webhook_endpoints.update(
        created.id, {"enabled_events": ["*"], "disabled": True, "url": "https://app.example/other"}
    )
    assert (updated.enabled_events, updated.status, updated.url) == (["*"], "disabled",
                                                                   "https://app.example/other")
    assert [e.id for e in client.v1.webhook_endpoints.list().data] == [created.id]
    deleted = client.v1.webhook_endpoints.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(stripe.InvalidRequestError) as gone:
        client.v1.webhook_endpoints.retrieve(created.id)
    assert gone.value.http_status == 404


def test_what_stripe_refuses(client: stripe.StripeClient, base: str) -> None:
    cases: list[tuple[str, str]] = [
        ("url=ftp%3A%2F%2Fx&enabled_events[]=charge.refunded", "url"),
        ("url=https%3A%2F%2Fx.example&enabled_events[]=charge.nonsense", "enabled_events[0]"),
        ("url=https%3A%2F%2Fx.example", "enabled_events"),
        ("url=https%3A%2F%2Fx.example&enabled_events[]=*&api_version=2024-06-20", "api_version"),
    ]
    for body, param in cases:
        status, answer, _ = raw(base, "POST", "/v1/webhook_endpoints", body)
        assert (status, answer["error"]["param"]) == (400, param), body
    for i in range(16):
        client.v1.webhook_endpoints.create({"url": f"https://x.example/{i}", "enabled_events": ["*"]})
    with pytest.raises(stripe.InvalidRequestError, match="maximum of 16"):
        client.v1.webhook_endpoints.create({"url": "https://x.example/17", "enabled_events": ["*"]})


def test_an_endpoint_gets_its_enabled_events_signed_with_its_secret(
    client: stripe.StripeClient, receiver: Receiver
) -> None:
    wanted = ["payment_intent.succeeded", "charge.refunded"]
    endpoint = client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": wanted,
                                                   "api_version": API_VERSION})
    cus, pm = customer_with(client, "pm_card_visa")
    pi = charge(client, cus, pm)
    client.v1.refunds.create({"payment_intent": pi.id, "amount": 100})
    assert wait_until(lambda: len(receiver.ok()) == 2)
    events = [stripe.Webhook.construct_event(body, signature, endpoint.secret)
              for _, _, signature, body in receiver.ok()]
    assert sorted(e.type for e in events) == sorted(wanted)
    assert all(e.api_version == API_VERSION and getattr(e, "account", None) is None for e in events)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(receiver.ok()[0][3], receiver.ok()[0][2], "whsec_emulator")
    # Delivered: the event counts no pending webhook any more; the stored-only ones never did.
    assert wait_until(lambda: all(e.pending_webhooks == 0 for e in client.v1.events.list().data))
    # A disabled endpoint gets nothing more.
    client.v1.webhook_endpoints.update(endpoint.id, {"disabled": True})
    charge(client, cus, pm)
    assert client.v1.events.list({"type": "payment_intent.succeeded"}).data[0].pending_webhooks == 0


def test_connect_endpoints_get_the_connected_accounts_events(client: stripe.StripeClient, base: str) -> None:
    platform_hook, connect_hook, shop_hook = Receiver(), Receiver(), Receiver()
    try:
        own = client.v1.webhook_endpoints.create({"url": platform_hook.url, "enabled_events": ["*"]})
        connect = client.v1.webhook_endpoints.create({"url": connect_hook.url, "connect": True,
                                                      "enabled_events": ["customer.created"]})
        shop = create_account(base, id="acct_1Shop")
        shop_client = stripe.StripeClient(shop["secret_keys"][0], base_addresses={"api": base})
        shops_own = shop_client.v1.webhook_endpoints.create({"url": shop_hook.url,
                                                             "enabled_events": ["customer.created"]})
        client.v1.customers.create({"name": "platform's"})
        client.v1.customers.create({"name": "shop's"}, options={"stripe_account": "acct_1Shop"})
        assert wait_until(lambda: len(platform_hook.ok()) == 1 and len(connect_hook.ok()) == 1
                          and len(shop_hook.ok()) == 1)
        mine = stripe.Webhook.construct_event(platform_hook.ok()[0][3], platform_hook.ok()[0][2], own.secret)
        assert mine.data.object.name == "platform's" and getattr(mine, "account", None) is None
        theirs = stripe.Webhook.construct_event(connect_hook.ok()[0][3], connect_hook.ok()[0][2],
                                                connect.secret)
        assert (theirs.data.object.name, theirs.account) == ("shop's", "acct_1Shop")
        at_shop = json.loads(shop_hook.ok()[0][3])
        assert at_shop["data"]["object"]["name"] == "shop's"
        stripe.Webhook.construct_event(shop_hook.ok()[0][3], shop_hook.ok()[0][2], shops_own.secret)
        # The platform's endpoints do not belong to the shop, nor the shop's to the platform.
        assert [e.id for e in shop_client.v1.webhook_endpoints.list().data] == [shops_own.id]
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.webhook_endpoints.retrieve(shops_own.id)
    finally:
        for hook in (platform_hook, connect_hook, shop_hook):
            hook.close()

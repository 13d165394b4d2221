"""Webhook delivery (stripe_emulator/events.py): signed like Stripe, retried, faults, enabled events."""

from __future__ import annotations

import json
import time

import pytest
import stripe

from tests.support.emulator import (
    WEBHOOK_SECRET,
    Receiver,
    charge,
    customer_with,
    emulator_state,
    running_emulator,
    sdk_client,
    wait_until,
)

pytestmark = pytest.mark.integration

# What Offsession subscribes to for a charge and its refund (without the customer, card,
# payment_intent.created and charge.succeeded events that it would only store).
EVENTS_WITH_WORK = ("payment_intent.succeeded", "payment_intent.payment_failed", "refund.created",
                    "charge.refunded")


def test_webhook_signed_and_retried_until_accepted(receiver: Receiver) -> None:
    receiver.fail_first = 2
    with running_emulator(webhook_url=receiver.url, webhook_retry_base_s=0.05) as url:
        client = sdk_client(url)
        cus = client.v1.customers.create({"email": "w@example.com"}, options={"idempotency_key": "k-wh"})
        assert wait_until(lambda: len(receiver.ok()) == 1)
        assert [d[0] for d in receiver.deliveries] == [500, 500, 200]
        for _status, _at, signature, body in receiver.deliveries:
            event = stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)
            assert event.type == "customer.created"
            assert event.data.object.id == cus.id
            assert event.request.idempotency_key == "k-wh"
            assert event.api_version == "2026-10-28.endive"
        _, _, signature, body = receiver.ok()[0]
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(
                body.replace(b"w@example.com", b"x@example.com"), signature, WEBHOOK_SECRET
            )
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body, signature, "whsec_other")
        # Once delivered, the event no longer counts as pending.
        assert wait_until(lambda: client.v1.events.list().data[0].pending_webhooks == 0)
        state = emulator_state(url)
        assert state["webhooks"]["delivered"] == 1 and state["webhooks"]["failed_attempts"] == 2


def test_webhook_gives_up_after_bounded_attempts(receiver: Receiver) -> None:
    receiver.fail_first = 100
    with running_emulator(webhook_url=receiver.url, webhook_retry_base_s=0.01, webhook_max_attempts=4) as url:
        sdk_client(url).v1.customers.create({})
        assert wait_until(lambda: emulator_state(url)["webhooks"]["gave_up"] == 1)
        assert len(receiver.deliveries) == 4
        assert emulator_state(url)["events"][0]["pending_webhooks"] == 1


def test_webhook_duplicates_delay_and_reorder(receiver: Receiver) -> None:
    with running_emulator(webhook_url=receiver.url, webhook_duplicate_rate=1.0, webhook_delay_ms=300) as url:
        client = sdk_client(url)
        started = time.monotonic()
        client.v1.customers.create({})
        assert wait_until(lambda: len(receiver.ok()) == 2)
        assert receiver.ok()[0][1] - started >= 0.3
        ids = {json.loads(d[3])["id"] for d in receiver.ok()}
        assert len(ids) == 1  # the same event, twice
    receiver.deliveries.clear()
    with running_emulator(webhook_url=receiver.url, webhook_reorder=True) as url:
        client = sdk_client(url)
        created = [client.v1.customers.create({"name": str(i)}).id for i in range(12)]
        assert wait_until(lambda: len(receiver.ok()) == 12)
        delivered = [json.loads(d[3])["data"]["object"]["id"] for d in receiver.ok()]
        assert sorted(delivered) == sorted(created)
        assert delivered != created


def test_webhook_endpoint_gets_only_its_enabled_events(receiver: Receiver) -> None:
    # Offsession's list (shared.services.webhooks.EVENTS_WITH_WORK): a charge and its refund, without the
    # customer, card, payment_intent.created and charge.succeeded events that would only be stored.
    with running_emulator(webhook_url=receiver.url, webhook_events=EVENTS_WITH_WORK) as url:
        client = sdk_client(url)
        cus, pm = customer_with(client, "pm_card_visa")
        pi = charge(client, cus, pm)
        client.v1.refunds.create({"payment_intent": pi.id, "amount": 400})
        wanted = ["payment_intent.succeeded", "refund.created", "charge.refunded"]
        assert wait_until(lambda: len(receiver.ok()) == len(wanted))
        time.sleep(0.2)  # nothing else follows
        assert sorted(json.loads(d[3])["type"] for d in receiver.deliveries) == sorted(wanted)
        state = emulator_state(url)
        assert state["webhooks"]["events"] == list(EVENTS_WITH_WORK)
        # The other events exist all the same (GET /v1/events), undelivered and not pending.
        others = [e for e in state["events"] if e["type"] not in wanted]
        stored_only = {"customer.created", "payment_intent.created", "charge.succeeded"}
        assert stored_only <= {e["type"] for e in others}
        assert all(e["pending_webhooks"] == 0 for e in others)


def test_unreachable_webhook_does_not_block_api() -> None:
    with running_emulator(webhook_url="http://127.0.0.1:9/none") as url:
        client = sdk_client(url)
        started = time.monotonic()
        for _ in range(20):
            client.v1.customers.create({})
        assert time.monotonic() - started < 2.0
        assert len(emulator_state(url)["customers"]) == 20

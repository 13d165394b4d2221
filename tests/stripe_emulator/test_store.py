"""The state file (stripe_emulator/store.py): objects, events, idempotency keys, accounts and their keys,
webhook endpoints and what was planned for later survive a restart; a version 1 file still loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import stripe

from stripe_emulator.accounts import DEFAULT_ACCOUNT
from tests.support.emulator import (
    Receiver,
    admin,
    charge,
    create_account,
    customer_with,
    emulator_state,
    running_emulator,
    sdk_client,
    visit,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_state_file_survives_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "emulator.json"
    with running_emulator(state_file=state_file) as url:
        create_account(url, id="acct_P")
        client = sdk_client(url)
        cus, pm = customer_with(client, "pm_card_visa", stripe_account="acct_P")
        pi = charge(client, cus, pm, key="k-persist", stripe_account="acct_P")
    assert state_file.exists()
    with running_emulator(state_file=state_file) as url:
        client = sdk_client(url)
        opts: Any = {"stripe_account": "acct_P"}
        restored = client.v1.customers.retrieve(cus.id, options=opts)
        assert restored.invoice_settings.default_payment_method == pm.id
        replay = charge(client, cus, pm, key="k-persist", stripe_account="acct_P")
        assert replay.id == pi.id and replay.last_response.headers["Idempotent-Replayed"] == "true"
        assert client.v1.payment_intents.list({"customer": cus.id}, options=opts).data[0].id == pi.id
        assert len(client.v1.events.list(options=opts).data) > 3


def test_the_new_objects_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    state_file = tmp_path / "emulator.json"
    with running_emulator(state_file=state_file, settle_delay_ms=None) as url:
        shop = create_account(url, id="acct_1Shop", email="shop@example.com", password="password-1")
        client = sdk_client(url)
        endpoint = client.v1.webhook_endpoints.create({"url": receiver.url,
                                                       "enabled_events": ["refund.updated"]})
        cus, pm = customer_with(client, "pm_card_pendingRefund")
        refund = client.v1.refunds.create({"payment_intent": charge(client, cus, pm).id})
        disputed_cus, disputed_pm = customer_with(client, "pm_card_createDispute")
        dispute_pi = charge(client, disputed_cus, disputed_pm)
        session = client.v1.checkout.sessions.create({"mode": "setup", "customer": cus.id, "currency": "usd",
                                                      "success_url": "https://x.example/ok"})
    with running_emulator(state_file=state_file, settle_delay_ms=None) as url:
        client = sdk_client(url)
        state = emulator_state(url)
        assert [a["id"] for a in state["accounts"]] == [DEFAULT_ACCOUNT, "acct_1Shop"]
        shop_client = stripe.StripeClient(shop["secret_keys"][0], base_addresses={"api": url})
        assert shop_client.v1.accounts.retrieve_current().email == "shop@example.com"
        assert client.v1.customers.list(options={"stripe_account": "acct_1Shop"}).data == []
        assert client.v1.disputes.list({"payment_intent": dispute_pi.id}).data[0].status == "needs_response"
        assert visit(f"{url}/c/pay/{session.id}")[0] == 200  # (a new port, the same page)
        # The refund's plan was kept: settling it now sends refund.updated to the endpoint, signed with
        # the secret it was created with.
        assert admin(url, "POST", f"/_emulator/refunds/{refund.id}/settle", {})[1]["status"] == "succeeded"
        assert wait_until(lambda: len(receiver.ok()) == 1)
        _, _, signature, body = receiver.ok()[0]
        assert stripe.Webhook.construct_event(body, signature, endpoint.secret).type == "refund.updated"


def test_a_state_file_of_version_1_loads(tmp_path: Path) -> None:
    """Saved before the registry: the default account's objects under "", connected accounts made on
    first use (they stay connected to the default account)."""
    customer = {"id": "cus_Old", "object": "customer", "email": "old@example.com", "metadata": {},
                "created": 1, "invoice_settings": {"default_payment_method": None}}
    state_file = tmp_path / "old.json"
    state_file.write_text(json.dumps({
        "version": 1,
        "accounts": {"": {"customers": [customer]},
                     "acct_Old": {"customers": [{**customer, "id": "cus_OnOld"}]}},
        "requests": {"total": 3},
        "idempotency": [],
    }))
    with running_emulator(state_file=state_file) as url:
        client = sdk_client(url)
        assert client.v1.customers.retrieve("cus_Old").email == "old@example.com"
        on_old: Any = {"stripe_account": "acct_Old"}
        assert client.v1.customers.retrieve("cus_OnOld", options=on_old).id == "cus_OnOld"

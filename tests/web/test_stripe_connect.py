"""Settings → Connect through the API and the pages, against the in-process emulator: the account
verified (GET /v1/account), the webhook endpoint registered with exactly the events Offsession acts on
and its secret stored encrypted (and verifying events), refusals shown and blocking charges, a card
saved under another account not charged, the online card payments switch held off until verified."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from shared.domain.models import Settings
from shared.services.stripe_connection import registered_events
from tests.support.emulator import admin as emulator_admin
from tests.support.emulator import create_account, emulator_state
from tests.support.signing import signed
from tests.support.web_app import Env, World, api, sign_in_admin, sign_in_client

pytestmark = pytest.mark.usefixtures("world")


def _endpoint(env: Env, endpoint_id: str) -> dict[str, Any]:
    endpoints = {e["id"]: e for e in emulator_state(env.emulator)["webhook_endpoints"]}
    return endpoints[endpoint_id]


def _event(account: str | None = None) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:20]}",
        "object": "event",
        "type": "customer.created",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": "cus_x", "object": "customer"}},
        **({"account": account} if account else {}),
    }


def test_connect_verifies_the_account_and_registers_the_endpoint_whose_secret_verifies(env: Env) -> None:
    client = env.app.test_client()
    shown = api(client, "GET", "/api/settings").json
    assert shown["stripe_verified"] is True and shown["stripe_problem"] is None
    account = shown["stripe_account"]
    assert account["id"].startswith("acct_") and account["mode"] == "test"
    assert account["name"] and account["charges_enabled"] is True
    endpoint = _endpoint(env, shown["webhook_endpoint_id"])
    assert endpoint["url"] == "http://127.0.0.1:8000/webhooks/stripe"
    assert sorted(endpoint["enabled_events"]) == sorted(registered_events())
    assert "account.application.deauthorized" in endpoint["enabled_events"]
    assert endpoint["api_version"] == "2026-10-28.endive"
    secret = endpoint["secret"]
    with env.session() as s:
        stored = s.get(Settings, 1)
        assert stored is not None and stored.webhook_secret_encrypted
        assert secret not in stored.webhook_secret_encrypted  # never in clear
        assert env.runtime.secret_box.open(stored.webhook_secret_encrypted) == secret
    payload, headers = signed(_event(), secret)
    assert client.post("/webhooks/stripe", data=payload, headers=headers).status_code == 200
    payload, headers = signed(_event(), "whsec_" + "0" * 32)
    assert client.post("/webhooks/stripe", data=payload, headers=headers).status_code == 400


def test_connecting_again_replaces_the_endpoint_and_disconnect_deletes_it(env: Env, world: World) -> None:
    client = env.app.test_client()
    first = api(client, "GET", "/api/settings").json["webhook_endpoint_id"]
    again = api(client, "PUT", "/api/settings", {"stripe_connected": True}).json
    assert again["webhook_endpoint_id"] != first
    ids = {e["id"] for e in emulator_state(env.emulator)["webhook_endpoints"]}
    assert first not in ids and again["webhook_endpoint_id"] in ids
    off = api(client, "PUT", "/api/settings", {"stripe_connected": False})
    assert off.status_code == 200 and off.json["stripe_connected"] is False
    assert off.json["webhook_endpoint_id"] is None
    assert again["webhook_endpoint_id"] not in {
        e["id"] for e in emulator_state(env.emulator)["webhook_endpoints"]
    }
    blockers = api(client, "GET", f"/api/invoices/{world.a.invoice_id}").json["charge"]["blockers"]
    assert [b["code"] for b in blockers] == ["stripe_not_connected"]
    assert "disconnected" in blockers[0]["message"]


def test_an_account_stripe_refuses_answers_409_and_blocks_charges_with_the_reason(
    env: Env, world: World
) -> None:
    client = env.app.test_client()
    refused = api(
        client, "PUT", "/api/settings", {"stripe_connected": True, "stripe_account_id": "acct_1Unknown0"}
    )
    assert refused.status_code == 409 and refused.json["error"] == "stripe_connection_refused"
    assert "403" in refused.json["message"]
    blockers = api(client, "GET", f"/api/invoices/{world.a.invoice_id}").json["charge"]["blockers"]
    assert blockers[0]["code"] == "stripe_connection_refused" and "403" in blockers[0]["message"]
    charge = api(client, "POST", f"/api/invoices/{world.a.invoice_id}/charges", {})
    assert charge.status_code == 409


def test_a_revoked_key_is_refused_and_the_greyed_button_names_it(
    env: Env, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = create_account(env.emulator, connect=False, business_name="Keyed Ltd")
    key = own["secret_keys"][0]
    monkeypatch.setenv("STRIPE_API_KEY", key)
    env.rebuild()
    client = env.app.test_client()
    assert api(client, "PUT", "/api/settings", {"stripe_connected": True}).json["stripe_account"]["name"] == (
        "Keyed Ltd"
    )
    assert emulator_admin(env.emulator, "POST", "/_emulator/keys/revoke", {"key": key})[0] == 200
    refused = api(client, "PUT", "/api/settings", {"stripe_connected": True})
    assert refused.status_code == 409 and "401" in refused.json["message"]
    assert sign_in_admin(client).status_code in (302, 303)
    page = client.get(f"/admin/invoices/{world.a.invoice_id}").get_data(as_text=True)
    assert 'data-code="stripe_connection_refused"' in page and "Stripe refused the API key (401)" in page
    assert 'id="charge-button" disabled' in page
    settings_page = client.get("/admin/settings").get_data(as_text=True)
    assert "Stripe refused the API key (401)" in settings_page


def test_a_card_saved_under_another_account_is_not_charged_until_saved_again(env: Env, world: World) -> None:
    client = env.app.test_client()
    other = create_account(env.emulator, business_name="Second Ltd")  # connected to the default platform
    moved = api(client, "PUT", "/api/settings", {"stripe_connected": True, "stripe_account_id": other["id"]})
    assert moved.status_code == 200, moved.json
    assert moved.json["stripe_account"]["id"] == other["id"]
    inv = api(client, "GET", f"/api/invoices/{world.a.invoice_id}").json
    assert [b["code"] for b in inv["charge"]["blockers"]] == ["card_saved_under_other_account"]
    assert (
        "saved under another Stripe account: ask the client to add it again"
        in inv["charge"]["blockers"][0]["message"]
    )
    assert api(client, "POST", f"/api/invoices/{world.a.invoice_id}/charges", {}).status_code == 409
    zone = env.app.test_client()
    sign_in_client(zone, env, world.a.email)
    cards_page = zone.get("/client/cards").get_data(as_text=True)
    assert cards_page.count("saved under another Stripe account of the business") == len(world.a.cards)
    invoice_page = zone.get(f"/client/invoices/{world.a.invoice_id}").get_data(as_text=True)
    assert "Your saved card was saved under another Stripe account" in invoice_page
    assert 'id="pay-button"' not in invoice_page
    card = api(client, "POST", f"/api/clients/{world.a.client_id}/cards", {"payment_method": "pm_card_visa"})
    assert card.status_code == 201, card.json
    assert card.json["stripe_account_id"] == other["id"] and card.json["is_default"] is True
    charge = api(client, "POST", f"/api/invoices/{world.a.invoice_id}/charges", {})
    assert charge.status_code == 202, charge.json
    state = emulator_state(env.emulator)
    customers = [c for c in state["customers"] if c["account"] == other["id"]]
    assert customers, "the client got a customer in the second account"


def test_online_card_payments_cannot_be_turned_on_before_stripe_is_verified(env: Env) -> None:
    client = env.app.test_client()
    assert api(client, "PUT", "/api/settings", {"stripe_connected": False}).status_code == 200
    assert api(client, "PUT", "/api/settings", {"online_card_payments_enabled": False}).status_code == 200
    refused = api(client, "PUT", "/api/settings", {"online_card_payments_enabled": True})
    assert refused.status_code == 409 and refused.json["error"] == "not_verified"
    assert api(client, "PUT", "/api/settings", {"stripe_connected": True}).status_code == 200
    assert api(client, "PUT", "/api/settings", {"online_card_payments_enabled": True}).status_code == 200


def test_json_shape(env: Env) -> None:
    shown = api(env.app.test_client(), "GET", "/api/settings").json
    assert json.loads(json.dumps(shown)) == shown


def test_a_rotated_or_removed_stored_secret_is_refused_from_the_next_event_on(env: Env) -> None:
    """The decrypted stored secret is kept between requests (shared.services.stripe_connection), by its
    sealed value, read on every request: replaced by a reconnect or removed by a disconnect, the old
    secret verifies nothing more, with no delay."""
    client = env.app.test_client()

    def answer(secret: str) -> int:
        payload, headers = signed(_event(), secret)
        return client.post("/webhooks/stripe", data=payload, headers=headers).status_code

    old = _endpoint(env, api(client, "GET", "/api/settings").json["webhook_endpoint_id"])["secret"]
    assert [answer(old), answer(old)] == [200, 200]  # the second from the kept decryption
    again = api(client, "PUT", "/api/settings", {"stripe_connected": True}).json
    new = _endpoint(env, again["webhook_endpoint_id"])["secret"]
    assert new != old
    assert [answer(old), answer(new), answer(new)] == [400, 200, 200]
    assert api(client, "PUT", "/api/settings", {"stripe_connected": False}).status_code == 200
    assert [answer(new), answer(old)] == [400, 400]

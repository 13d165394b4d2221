"""Settings → Connect in Chromium against the real stack: the key's account verified and shown, the
webhook endpoint registered at the emulator with its secret the only one the app verifies with
(STRIPE_WEBHOOK_SECRET=registered), a refused key greying Charge buyer with the reason; and Connect
with Stripe (OAuth) through the emulator's sign-in page, charges carrying Stripe-Account, a tampered
state refused, and a deauthorization at the emulator greying the button with the reason."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from shared.services.stripe_connection import registered_events
from tests.support.browser import ADMIN_EMAIL, ADMIN_PASSWORD, admin_login
from tests.support.emulator import admin as emulator_admin
from tests.support.services import PostgresServer, RedisServer
from tests.support.stack import Stack, broker_url, db_rows

pytestmark = pytest.mark.integration


def _stack(postgres_server: PostgresServer, redis_server: RedisServer, name: str, **env: str) -> Stack:
    st = Stack(postgres_server.create_database(name), broker_url(redis_server), workers=1, extra_env=env)
    st.cli("create-admin", ADMIN_EMAIL, "--password", ADMIN_PASSWORD)
    return st


@pytest.fixture(scope="module")
def registered_stack(redis_server: RedisServer, postgres_server: PostgresServer) -> Iterator[Stack]:
    # No secret configured by hand: only the endpoint Connect registers can sign events that pass.
    st = _stack(postgres_server, redis_server, "connect_key", STRIPE_WEBHOOK_SECRET="registered")
    try:
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def oauth_stack(redis_server: RedisServer, postgres_server: PostgresServer) -> Iterator[Stack]:
    # The emulator's default account is the platform; ca_emulator its Connect application.
    st = _stack(postgres_server, redis_server, "connect_oauth", STRIPE_CONNECT_CLIENT_ID="ca_emulator")
    try:
        yield st
    finally:
        st.stop()


def _wait(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not seen within {timeout}s: {what}")


def test_connect_shows_the_account_registers_the_endpoint_and_a_refused_key_greys_the_button(
    page: Page, registered_stack: Stack
) -> None:
    st = registered_stack
    admin_login(page, st)
    page.goto(st.base + "/admin/settings")
    page.get_by_role("button", name="Disconnect Stripe").click()
    expect(page.locator("#stripe-blocker")).to_contain_text("Stripe was disconnected in Settings")
    page.get_by_role("button", name="Connect with the API key").click()
    expect(page.locator("#stripe-account-id")).to_have_text("acct_1EmulatorDefault0")
    expect(page.locator("#stripe-account-name")).not_to_be_empty()
    expect(page.locator("#stripe-mode")).to_have_text("test mode")
    expect(page.locator("#stripe-charges-enabled")).to_have_text("enabled")

    endpoint_id = db_rows(st, "SELECT webhook_endpoint_id FROM settings")[0][0]
    endpoints = {e["id"]: e for e in st.emulator_state()["webhook_endpoints"]}
    assert endpoint_id in endpoints and len(endpoints) == 1  # the one before it was deleted
    assert endpoints[endpoint_id]["url"] == st.base + "/webhooks/stripe"
    assert sorted(endpoints[endpoint_id]["enabled_events"]) == sorted(registered_events())

    # The next event: a charge's payment_intent.succeeded, accepted only under the stored secret.
    client = st.client_with_card("pm_card_visa")
    invoice = st.invoice(client["id"], total=4_200)
    status, charge = st.charge(invoice["id"])
    assert status == 202, charge
    done = st.wait_charge(charge["id"])
    assert done["status"] == "succeeded"
    _wait(
        lambda: (
            db_rows(
                st,
                "SELECT count(*) FROM webhook_event"
                " WHERE type = 'payment_intent.succeeded' AND payment_intent_id = :pi",
                pi=done["payment_intent_id"],
            )[0][0]
            == 1
        ),
        "the registered endpoint's event stored",
    )

    # The key swapped for one Stripe refuses (revoked at the emulator): Connect shows the refusal.
    status, _ = emulator_admin(st.emu, "POST", "/_emulator/keys/revoke", {"key": "sk_test_emulator"})
    assert status == 200
    page.get_by_role("button", name="Check the connection again").click()
    expect(page.locator(".flash-error").first).to_contain_text("Stripe refused the API key (401)")
    expect(page.locator("#stripe-blocker")).to_contain_text("Stripe refused the API key (401)")
    other = st.invoice(client["id"], total=1_000)
    page.goto(f"{st.base}/admin/invoices/{other['id']}")
    expect(page.get_by_role("button", name="Charge buyer")).to_be_disabled()
    expect(page.locator("#charge-button-wrap")).to_have_attribute(
        "title", re.compile(r"Stripe refused the API key \(401\)")
    )


def test_connect_with_stripe_through_oauth_then_deauthorized_at_stripe(
    page: Page, oauth_stack: Stack
) -> None:
    st = oauth_stack
    status, business = emulator_admin(
        st.emu,
        "POST",
        "/_emulator/accounts",
        {
            "business_name": "Corner Bakery",
            "email": "owner@bakery.example",
            "password": "bread-and-butter",
            "connect": False,
        },
    )
    assert status == 200, business
    # A card saved while the stack charged on the key's own account (the platform's).
    earlier = st.client_with_card("pm_card_visa")
    earlier_invoice = st.invoice(earlier["id"], total=2_500)
    admin_login(page, st)

    # A callback whose state this session never sent is refused, and nothing is exchanged.
    page.goto(st.base + "/admin/settings/stripe/oauth/callback?code=ac_forged&state=tampered")
    expect(page.locator(".flash-error").first).to_contain_text("state mismatch")

    page.goto(st.base + "/admin/settings")
    page.get_by_role("button", name="Connect with Stripe").click()
    page.wait_for_url(re.compile(re.escape(st.emu) + r"/oauth/authorize"))
    page.get_by_label("Email", exact=True).fill("owner@bakery.example")
    page.get_by_label("Password", exact=True).fill("bread-and-butter")
    page.get_by_role("button", name="Sign in and connect").click()
    page.wait_for_url("**/admin/settings")
    expect(page.locator("#stripe-account-id")).to_have_text(business["id"])
    expect(page.locator("#stripe-account-name")).to_have_text("Corner Bakery")
    endpoint_id = db_rows(st, "SELECT webhook_endpoint_id FROM settings")[0][0]
    endpoint = next(e for e in st.emulator_state()["webhook_endpoints"] if e["id"] == endpoint_id)
    assert endpoint["connect"] is True

    # The card saved under the platform's account is not charged here: the blocker says why...
    page.goto(f"{st.base}/admin/invoices/{earlier_invoice['id']}")
    expect(page.get_by_role("button", name="Charge buyer")).to_be_disabled()
    expect(page.locator("#charge-blockers")).to_contain_text(
        "saved under another Stripe account: ask the client to add it again"
    )
    status, refused = st.charge(earlier_invoice["id"])
    assert status == 409 and [b["code"] for b in refused["blockers"]] == ["card_saved_under_other_account"]
    # ... and the card saved again (in the connected account, under a customer made there) is charged.
    status, card = st.api("POST", f"/api/clients/{earlier['id']}/cards", {"payment_method": "pm_card_visa"})
    assert status == 201 and card["stripe_account_id"] == business["id"], card
    status, again = st.charge(earlier_invoice["id"])
    assert status == 202, again
    assert st.wait_charge(again["id"])["status"] == "succeeded"
    [first_payment] = st.payment_intents_for(earlier_invoice["id"])
    assert first_payment["account"] == business["id"]
    assert first_payment["payment_method"] == card["payment_method"]

    # Every call now carries Stripe-Account: the customer, the card and the charge live there.
    client = st.client_with_card("pm_card_visa")
    invoice = st.invoice(client["id"], total=3_300)
    status, charge = st.charge(invoice["id"])
    assert status == 202, charge
    assert st.wait_charge(charge["id"])["status"] == "succeeded"
    [payment_intent] = st.payment_intents_for(invoice["id"])
    assert payment_intent["account"] == business["id"]

    # The business disconnects the platform at Stripe: the event greys the button with the reason.
    status, _ = emulator_admin(st.emu, "POST", f"/_emulator/accounts/{business['id']}/deauthorize", {})
    assert status == 200
    _wait(
        lambda: db_rows(st, "SELECT stripe_connected FROM settings")[0][0] is False,
        "account.application.deauthorized applied",
    )
    other = st.invoice(client["id"], total=1_000)
    page.goto(f"{st.base}/admin/invoices/{other['id']}")
    expect(page.get_by_role("button", name="Charge buyer")).to_be_disabled()
    expect(page.locator("#charge-button-wrap")).to_have_attribute(
        "title", re.compile("deauthorized at Stripe")
    )

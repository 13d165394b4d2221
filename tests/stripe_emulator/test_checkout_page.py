"""The emulator's pages in a real browser (Playwright + Debian's Chromium), with JavaScript switched off
to prove they need none: the hosted Checkout page (stripe_emulator/checkout_page.py), the bank's page
(bank_page.py) and the Connect OAuth authorize page (oauth.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import stripe
from playwright.sync_api import Page, expect

from tests.support.browser import ChromiumThread
from tests.support.emulator import ReturnSite, charge, create_account

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chromium() -> Iterator[ChromiumThread]:
    browser = ChromiumThread()
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def site() -> Iterator[ReturnSite]:
    shop = ReturnSite()
    yield shop
    shop.close()


def session_for(client: stripe.StripeClient, site: ReturnSite) -> tuple[Any, Any]:
    customer = client.v1.customers.create({"email": "client@example.com"})
    session = client.v1.checkout.sessions.create({
        "mode": "setup", "customer": customer.id, "currency": "usd",
        "success_url": f"{site.base}/client/cards/added?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{site.base}/client/cards", "metadata": {"client_id": "42"},
    })
    return customer, session


def type_card(page: Page, number: str) -> None:
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiration date").fill("12 / 34")
    page.get_by_label("Security code").fill("123")
    page.get_by_label("Cardholder name").fill("Jo Client")
    page.get_by_role("button", name="Save card").click()


def saved_cards(client: stripe.StripeClient, customer: Any) -> list[str]:
    return [pm.card.last4 for pm in client.v1.customers.payment_methods.list(customer.id).data]


def test_typing_the_plain_visa_returns_to_success_url_with_the_card_saved(
    chromium: ChromiumThread, client: stripe.StripeClient, site: ReturnSite
) -> None:
    customer, session = session_for(client, site)

    def steps(page: Page) -> None:
        page.goto(session.url)
        expect(page.get_by_role("heading", name="Emulator Test Business")).to_be_visible()
        type_card(page, "4242 4242 4242 4242")
        page.wait_for_url(f"{site.base}/client/cards/added?session_id={session.id}")

    chromium.run(steps, javascript=False)
    assert saved_cards(client, customer) == ["4242"]
    done = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["setup_intent.payment_method"]})
    assert done.status == "complete" and done.setup_intent.payment_method.billing_details.name == "Jo Client"


def test_a_card_asking_for_authentication_goes_through_the_bank_page(
    chromium: ChromiumThread, client: stripe.StripeClient, site: ReturnSite
) -> None:
    customer, session = session_for(client, site)

    def steps(page: Page) -> None:
        page.goto(session.url)
        type_card(page, "4000 0025 0000 3155")
        page.wait_for_url(re.compile(r"/_emulator/3ds/seti_"))
        page.get_by_role("button", name="Complete authentication").click()
        page.wait_for_url(f"{site.base}/client/cards/added?session_id={session.id}")

    chromium.run(steps, javascript=False)
    assert saved_cards(client, customer) == ["3155"]
    pm = client.v1.customers.payment_methods.list(customer.id).data[0]
    assert charge(client, customer, pm).status == "succeeded"  # off session, no authentication now


def test_a_declined_card_is_shown_on_the_page_and_nothing_is_saved(
    chromium: ChromiumThread, client: stripe.StripeClient, site: ReturnSite
) -> None:
    customer, session = session_for(client, site)

    def decline(page: Page) -> str:
        page.goto(session.url)
        type_card(page, "4000 0000 0000 0002")
        expect(page.get_by_role("alert")).to_have_text("Your card was declined.")
        declined_at = page.url
        # The person may go back to the shop instead.
        page.get_by_role("link", name="Back to Emulator Test Business").click()
        page.wait_for_url(f"{site.base}/client/cards")
        return declined_at

    assert chromium.run(decline, javascript=False) == session.url
    assert saved_cards(client, customer) == []
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert [v for v in site.visits if v != "/favicon.ico"] == ["/client/cards"]


def test_picking_a_test_card(chromium: ChromiumThread, client: stripe.StripeClient, site: ReturnSite) -> None:
    customer, session = session_for(client, site)

    def steps(page: Page) -> None:
        page.goto(session.url)
        page.get_by_label("Or pick a test card").select_option("5555555555554444")
        page.get_by_role("button", name="Save card").click()
        page.wait_for_url(re.compile(re.escape(site.base) + r"/client/cards/added"))

    chromium.run(steps, javascript=False)
    assert saved_cards(client, customer) == ["4444"]


def test_connect_oauth_sign_in_in_a_browser(chromium: ChromiumThread, base: str, site: ReturnSite) -> None:
    create_account(base, id="acct_1Business", business_name="Business Ltd", email="boss@business.example",
                   password="letmein-please", connect=False)
    platform = stripe.StripeClient("sk_test_emulator", base_addresses={"api": base, "connect": base},
                                   client_id="ca_emulator")
    url = platform.oauth.authorize_url({"scope": "read_write", "state": "s-42",
                                        "redirect_uri": f"{site.base}/admin/settings/stripe/callback"})

    def sign_in(page: Page) -> str:
        page.goto(url)
        page.get_by_label("Email", exact=True).fill("boss@business.example")
        page.get_by_label("Password", exact=True).fill("letmein-please")
        page.get_by_role("button", name="Sign in and connect").click()
        page.wait_for_url(re.compile(re.escape(site.base) + r"/admin/settings/stripe/callback\?code=ac_"))
        return page.url

    back = dict(parse_qsl(urlsplit(chromium.run(sign_in, javascript=False)).query))
    assert (back["scope"], back["state"]) == ("read_write", "s-42")
    token = platform.oauth.token({"grant_type": "authorization_code", "code": back["code"]})
    assert token.stripe_user_id == "acct_1Business"

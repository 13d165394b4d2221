"""A client saves cards in the Client Zone through the emulator's hosted Checkout page (setup mode), on the
real stack (gunicorn, a Celery worker, the emulator delivering signed webhooks, PostgreSQL, Redis); then
the cards saved this way are charged off-session."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Page, Route, expect

from tests.support.browser import client_login
from tests.support.stack import Stack, db_rows
from tests.support.waiting import wait_until


def new_client(st: Stack, name: str) -> dict[str, Any]:
    status, client = st.api("POST", "/api/clients", {"name": name, "email": f"{name.lower()}@example.com"})
    assert status == 201, client
    return client


def cards_of(st: Stack, client_id: int) -> list[tuple[str, bool]]:
    status, client = st.api("GET", f"/api/clients/{client_id}")
    assert status == 200, client
    return [(card["last4"], card["is_default"]) for card in client["cards"]]


def add_card_on_stripes_page(page: Page, st: Stack, number: str, *, save: bool = True) -> None:
    """From the card page: Add a card, then type the card on the hosted Checkout page and save it."""
    page.goto(f"{st.base}/client/cards")
    page.get_by_role("button", name="Add a card").click()
    page.wait_for_url(re.compile(re.escape(st.emu) + r"/c/pay/cs_test_"))
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiration date").fill("12 / 34")
    page.get_by_label("Security code").fill("123")
    page.get_by_label("Cardholder name").fill("Cara Client")
    if save:
        page.get_by_role("button", name="Save card").click()


def processed_setup_events(st: Stack, client_id: int) -> list[str]:
    """The card setup events naming this client that were processed, by type."""
    rows = db_rows(
        st,
        "SELECT DISTINCT type FROM webhook_event WHERE processed_at IS NOT NULL "
        "AND type IN ('checkout.session.completed', 'setup_intent.succeeded') "
        "AND CAST(payload AS TEXT) LIKE :named ORDER BY type",
        named=f'%"offsession_client_id": "{client_id}"%',
    )
    return [row[0] for row in rows]


def charge_succeeds_off_session(st: Stack, client_id: int) -> dict[str, Any]:
    invoice = st.invoice(client_id, total=4_200)
    status, charge = st.charge(invoice["id"])
    assert status == 202, charge
    done = st.wait_charge(charge["id"])
    assert done["status"] == "succeeded", done
    return done


def test_client_saves_cards_through_stripe_checkout_and_they_charge_off_session(
    page: Page, web_stack: Stack
) -> None:
    st = web_stack
    client = new_client(st, "Cara")
    client_login(page, st, client["email"])
    page.get_by_role("link", name="My cards").click()
    expect(page.locator("#card-consent")).to_contain_text("charge it")
    expect(page.locator("#card-consent")).to_contain_text("for your invoices when they are due")
    expect(page.get_by_role("radio")).to_have_count(0)  # no emulator test tokens on our page

    # The plain Visa test number: saved, and the default as the first card.
    add_card_on_stripes_page(page, st, "4242 4242 4242 4242")
    page.wait_for_url(f"{st.base}/client/cards")
    expect(page.get_by_text("Visa ending 4242 saved. It is your default card.")).to_be_visible()
    expect(page.locator(".cards")).to_contain_text("Default")
    assert cards_of(st, client["id"]) == [("4242", True)]
    # At Stripe too: the customer's default PaymentMethod is that card.
    (customer,) = [c for c in st.emulator_state()["customers"] if c["email"] == client["email"]]
    (stored_pm,) = db_rows(
        st, "SELECT stripe_payment_method_id FROM card WHERE client_id = :id", id=client["id"]
    )
    assert customer["invoice_settings"]["default_payment_method"] == stored_pm[0]

    # A card that needs authentication at setup: the bank's page, then saved (not the default).
    add_card_on_stripes_page(page, st, "4000 0025 0000 3155")
    page.wait_for_url(re.compile(r"/_emulator/3ds/seti_"))
    page.get_by_role("button", name="Complete authentication").click()
    page.wait_for_url(f"{st.base}/client/cards")
    expect(page.get_by_text("Visa ending 3155 saved.")).to_be_visible()
    assert cards_of(st, client["id"]) == [("4242", True), ("3155", False)]

    # A declined card: the decline on the hosted page, nothing saved; Back returns to us.
    add_card_on_stripes_page(page, st, "4000 0000 0000 0002")
    expect(page.get_by_role("alert")).to_have_text("Your card was declined.")
    assert page.url.startswith(st.emu)
    page.get_by_role("link", name=re.compile("^Back to ")).click()
    page.wait_for_url(f"{st.base}/client/cards")
    expect(page.get_by_text("No card was added.")).to_be_visible()
    assert cards_of(st, client["id"]) == [("4242", True), ("3155", False)]

    # The cards saved this way charge off-session: the plain Visa, then the one authenticated at setup.
    charge_succeeds_off_session(st, client["id"])
    page.get_by_role("button", name="Make Visa ending 3155 my default").click()
    expect(page.get_by_text("Visa ending 3155 is now your default card.")).to_be_visible()
    charge_succeeds_off_session(st, client["id"])


def test_closing_the_tab_before_returning_still_saves_the_card_once(page: Page, web_stack: Stack) -> None:
    st = web_stack
    client = new_client(st, "Tabby")
    client_login(page, st, client["email"])

    success: list[str] = []

    def tab_closed(route: Route) -> None:
        # Stripe's page gets the card and saves it; the tab is closed before its redirect back to us is
        # followed: only the webhooks can tell.
        answer = route.fetch(max_redirects=0)
        success.append(answer.headers.get("location", ""))
        route.fulfill(status=200, content_type="text/plain", body="(the tab was closed)")

    add_card_on_stripes_page(page, st, "5555 5555 5555 4444", save=False)
    page.route(re.compile(re.escape(st.emu) + r"/c/pay/cs_test_\w+$"), tab_closed)
    page.get_by_role("button", name="Save card").click()
    expect(page.get_by_text("(the tab was closed)")).to_be_visible()
    (success_address,) = success
    assert success_address.startswith(f"{st.base}/client/cards/added?session_id=cs_test_")

    saved = wait_until(
        lambda: cards_of(st, client["id"]),
        timeout=30,
        what="the webhook storing the card saved on Stripe's page",
    )
    assert saved == [("4444", True)]
    # Both events (checkout.session.completed, setup_intent.succeeded) came and were processed: one card.
    wait_until(
        lambda: (
            processed_setup_events(st, client["id"])
            == ["checkout.session.completed", "setup_intent.succeeded"]
        ),
        timeout=30,
        what="both card setup events processed",
    )
    assert cards_of(st, client["id"]) == [("4444", True)]
    # Coming back later (the success address from the history) stores nothing more.
    page.goto(success_address)
    expect(page.get_by_text("Mastercard ending 4444 saved.")).to_be_visible()
    assert cards_of(st, client["id"]) == [("4444", True)]
    charge_succeeds_off_session(st, client["id"])

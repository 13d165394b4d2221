"""The admin's work in the browser: invoice parameters, clients and their cards, the dashboard.
One stack for the module (real web, worker, emulator, PostgreSQL, Redis)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import ARTIFACTS, admin_login
from tests.support.stack import Stack
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_bank_transfer_to_online_card_unblocks_charge_buyer(page: Page, web_stack: Stack) -> None:
    st = web_stack
    client = st.client_with_card("pm_card_visa")
    invoice = st.invoice(client["id"], total=18_000, payment_method="bank_transfer")
    admin_login(page, st)
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    button = page.get_by_role("button", name="Charge buyer")
    expect(button).to_be_disabled()
    expect(page.locator("#charge-button-wrap")).to_have_attribute(
        "title", re.compile("set to be paid by bank transfer")
    )

    page.get_by_label("How the client pays").select_option("online_card")
    page.get_by_role("button", name="Save invoice parameters").click()

    # Only this page was drawn again: the button is usable, its tooltip and blockers gone.
    expect(page.get_by_text("Invoice updated: payment method.")).to_be_visible()
    expect(button).to_be_enabled()
    expect(page.locator("#charge-button-wrap")).not_to_have_attribute("title", re.compile("."))
    expect(page.locator("#charge-blockers")).to_have_count(0)
    expect(page.locator("#timeline")).to_contain_text(
        "invoice payment method changed by admin:ops@example.com"
    )
    expect(page.locator("#timeline")).to_contain_text("from: bank_transfer, to: online_card")

    page.evaluate("window.__sameDocument = true")
    button.click()
    expect(page.locator("#charge-status")).to_contain_text("Succeeded", timeout=20_000)
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    status, after = st.api("GET", f"/api/invoices/{invoice['id']}")
    assert (status, after["payment_method"], after["amount_due"]) == (200, "online_card", 0)
    assert [c["status"] for c in after["charges"]] == ["succeeded"]


def test_an_unpaid_invoice_is_voided_from_its_page(page: Page, web_stack: Stack) -> None:
    st = web_stack
    client = st.client_with_card("pm_card_visa")
    invoice = st.invoice(client["id"], total=9_000)
    admin_login(page, st)
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    page.get_by_role("button", name="Void this invoice").click()
    expect(page.get_by_text("Invoice voided: it takes no more")).to_be_visible()
    expect(page.locator("#invoice-status")).to_have_text("Void")
    expect(page.get_by_role("button", name="Charge buyer")).to_be_disabled()
    expect(page.locator("#timeline")).to_contain_text("invoice voided by admin:ops@example.com")
    expect(page.get_by_role("button", name="Save invoice parameters")).to_have_count(0)


def test_client_list_to_client_page_with_two_cards_and_a_sign_in_link(page: Page, web_stack: Stack) -> None:
    st = web_stack
    status, client = st.api("POST", "/api/clients", {"name": "Cora Twocards", "email": "cora@example.com"})
    assert status == 201, client
    for token in ("pm_card_visa", "pm_card_mastercard"):
        status, card = st.api("POST", f"/api/clients/{client['id']}/cards", {"payment_method": token})
        assert status == 201, card
    invoice = st.invoice(client["id"], total=4_200)
    outbox = st.dir / "var" / "outbox"
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()

    admin_login(page, st)
    page.get_by_role("link", name="Clients").click()
    page.get_by_label("Search by name or email").fill("twocards")
    page.get_by_role("button", name="Search clients").click()
    page.get_by_role("link", name="Cora Twocards").click()

    cards = page.locator("#cards tbody tr")
    expect(cards).to_have_count(2)
    expect(page.locator('#cards tr[data-default="yes"]')).to_have_count(1)
    # The first card saved is the default (shared.services.clients): Visa, shown first with its badge.
    expect(cards.nth(0)).to_contain_text("Visa ending 4242")
    expect(cards.nth(0).locator(".badge")).to_have_text("Default")
    expect(cards.nth(1)).to_contain_text("Mastercard ending 4444")
    expect(cards.nth(1).locator(".badge")).to_have_count(0)  # (the emulator's account id says "Default")
    expect(cards.nth(0)).to_contain_text("acct_1EmulatorDefault0")  # where each card lives, and the mode
    expect(cards.nth(0)).to_contain_text("test")
    expect(page.locator("#client-invoices")).to_contain_text(invoice["number"])
    expect(page.locator("#client-invoices")).to_contain_text("$42.00")

    page.get_by_role("button", name="Send sign-in link").click()
    expect(page.get_by_text("Sign-in link sent to cora@example.com.")).to_be_visible()
    # The worker sends it from the outbox: wait for the file, then check there is exactly one.
    wait_until(lambda: set(outbox.glob("*.eml")) - before, timeout=30, what="the sign-in email")
    sent = [path for path in set(outbox.glob("*.eml")) - before if "cora@example.com" in path.read_text()]
    assert len(sent) == 1
    assert "/client/login/" in sent[0].read_text()


def outcome_numbers(page: Page, chart_id: str) -> dict[str, dict[str, int]]:
    """A chart's numbers as the page shows them ({label: {series: value}}), from the table the chart
    helper writes from the data it draws."""
    page.locator(f'#{chart_id}[data-chart-state="drawn"]').wait_for()
    rows: list[dict[str, Any]] = page.locator(f"#{chart_id} table.chart-numbers tbody tr").evaluate_all(
        """rows => rows.map(row => ({label: row.querySelector("th").textContent,
             cells: [...row.querySelectorAll("td")]
                      .map(td => [td.dataset.series, Number(td.dataset.value)])}))"""
    )
    return {row["label"]: dict(row["cells"]) for row in rows}


def test_dashboard_shows_the_days_collected_money_and_charts_of_the_charges_made(
    page: Page, web_stack: Stack
) -> None:
    st = web_stack
    today = datetime.now(UTC).date().isoformat()
    admin_login(page, st)
    page.goto(f"{st.base}/admin/")
    before = outcome_numbers(page, "charges-by-outcome").get(today, {})
    declines_before = (
        outcome_numbers(page, "decline-reasons") if page.locator("#decline-reasons").count() else {}
    )

    # Charges in euros, a currency nothing else in this module uses: what is collected in EUR is theirs.
    good = st.client_with_card("pm_card_visa")
    poor = st.client_with_card("pm_card_chargeDeclinedInsufficientFunds")
    made = [
        (st.invoice(good["id"], total=12_34, currency="eur"), "succeeded"),
        (st.invoice(good["id"], total=56_78, currency="eur"), "succeeded"),
        (st.invoice(poor["id"], total=9_00, currency="eur"), "failed"),
    ]
    for invoice, outcome in made:
        status, charge = st.charge(invoice["id"])
        assert status == 202, charge
        assert st.wait_charge(charge["id"])["status"] == outcome

    page.goto(f"{st.base}/admin/")
    collected = page.locator('#collected tr[data-currency="eur"] td[data-period="today"]')
    expect(collected).to_have_text("€69.12")
    after = outcome_numbers(page, "charges-by-outcome")[today]
    assert after["Succeeded"] - before.get("Succeeded", 0) == 2
    assert after["Failed"] - before.get("Failed", 0) == 1
    # The EUR collected chart draws the same amount (minor units in the chart's data).
    assert outcome_numbers(page, "collected-eur")["Today"] == {"Collected (EUR)": 69_12}
    declines = outcome_numbers(page, "decline-reasons")
    grew = declines["insufficient funds"]["Declined charges"] - declines_before.get(
        "insufficient funds", {}
    ).get("Declined charges", 0)
    assert grew == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    # What needs a person links to the page that lists it.
    page.locator('[data-attention="unknown_charges"] a').click()
    page.wait_for_url("**/admin/charges?status=unknown")

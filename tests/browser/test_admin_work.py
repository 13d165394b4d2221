"""The admin's whole job in the browser (issue 20's pages): invoice parameters, clients, the dashboard.
One stack for the module (real web, worker, emulator, PostgreSQL, Redis)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import admin_login
from tests.support.stack import Stack

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

    page.get_by_label("Payment method").select_option("online_card")
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

"""Refunds and disputes on the admin pages, in Chromium, against the real stack (gunicorn, a Celery
worker, the emulator sending its webhooks)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import admin_login
from tests.support.stack import Stack, http
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def _paid_invoice(st: Stack, token: str) -> dict[str, object]:
    invoice = st.invoice(st.client_with_card(token)["id"], total=10_000)
    status, charge = st.charge(invoice["id"])
    assert status == 202, charge
    assert st.wait_charge(charge["id"])["status"] == "succeeded"
    return invoice


def _reload_until(page: Page, shown: Callable[[], bool], timeout: float = 20.0) -> None:
    """Reload the page until `shown()` is true (what the webhooks bring has no live update)."""
    deadline = time.monotonic() + timeout
    while not shown():
        assert time.monotonic() < deadline, f"not shown after {timeout}s"
        page.wait_for_timeout(200)
        page.reload()


def test_an_admin_refunds_part_of_a_paid_invoice_and_more_than_remains_is_refused(
    page: Page, web_stack: Stack
) -> None:
    st = web_stack
    # Stripe's test card whose refunds stay pending a moment, then succeed (the emulator's settle delay).
    invoice = _paid_invoice(st, "pm_card_pendingRefund")
    admin_login(page, st)
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    expect(page.locator("#amount-due")).to_have_text("$0.00")
    amount = page.get_by_label("Amount to refund (USD)")
    expect(amount).to_have_value("100.00")  # all that remains, by default
    amount.fill("30")
    page.get_by_label("Reason").select_option("requested_by_customer")
    page.get_by_role("button", name="Refund").click()
    expect(page.get_by_text("Refund of $30.00 requested")).to_be_visible()
    status = page.locator("#refund-list .refund-status").first
    expect(status).to_have_text("Pending")
    # The page asks for the refund while it is pending and shows Stripe's word once it comes.
    expect(status).to_have_text("Refunded", timeout=20_000)
    expect(page.locator("#amount-due")).to_have_text("$30.00")
    expect(page.locator("#invoice-status")).to_have_text("Partially paid")
    expect(page.locator("#payments")).to_contain_text("-$30.00")
    expect(page.locator("#refunds")).to_contain_text("$70.00 remains refundable")

    page.get_by_label("Amount to refund (USD)").fill("70.01")
    page.get_by_role("button", name="Refund").click()
    expect(
        page.get_by_text("Refund not made: $70.01 is more than the $70.00 that remains refundable")
    ).to_be_visible()
    expect(page.locator("#refund-list tbody tr")).to_have_count(1)
    expect(page.locator("#amount-due")).to_have_text("$30.00")


def test_a_refund_the_bank_fails_after_it_succeeded_is_given_back(page: Page, web_stack: Stack) -> None:
    st = web_stack
    # Stripe's test card whose refunds succeed, then fail (refund.failed): the ledger gives it back.
    invoice = _paid_invoice(st, "pm_card_refundFail")
    admin_login(page, st)
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    page.get_by_label("Amount to refund (USD)").fill("25.00")
    page.get_by_role("button", name="Refund").click()
    status = page.locator("#refund-list .refund-status").first
    # The page follows a pending refund by itself; one that succeeded and then fails (days later at a real
    # bank) is seen by opening the page again, as an admin would.
    expect(status).to_have_text(re.compile("Refunded|Failed"), timeout=20_000)

    def shows_failed() -> bool:
        page.reload()
        return status.inner_text().strip() == "Failed"

    wait_until(shows_failed, timeout=30, what="the refund's failure on the invoice page", every=0.5)
    expect(page.locator("#refunds")).to_contain_text("expired or canceled card")
    expect(page.locator("#amount-due")).to_have_text("$0.00")
    expect(page.locator("#payments")).to_contain_text("given back")
    expect(page.locator("#refunds")).to_contain_text("$100.00 remains refundable")


def test_a_dispute_shows_on_the_invoice_and_the_charges_page_and_the_ledger_follows(
    page: Page, web_stack: Stack
) -> None:
    st = web_stack
    # Stripe's dispute test card (4000 0000 0000 0259): the charge succeeds, then it is disputed.
    invoice = _paid_invoice(st, "pm_card_createDispute")
    admin_login(page, st)
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    # The dispute's webhooks arrive after the charge's: look again until the funds withdrawn are in.
    _reload_until(page, lambda: page.locator("#amount-due").inner_text() == "$100.00")
    banner = page.locator(".dispute-banner")
    expect(banner).to_contain_text("Disputed")
    expect(banner).to_contain_text("$100.00")
    expect(banner).to_contain_text("fraudulent")
    expect(banner.locator(".dispute-due")).to_contain_text("UTC")
    expect(page.locator("#amount-due")).to_have_text("$100.00")  # the funds withdrawn
    # Due again, but the card may not be charged for it while the dispute is open: greyed, with why.
    expect(page.locator("#charge-button")).to_be_disabled()
    expect(page.locator("#charge-button-wrap")).to_have_attribute(
        "title",
        "A card payment of $100.00 is disputed with the card's bank: the card cannot be charged again "
        "until the dispute is resolved.",
    )
    page.goto(f"{st.base}/admin/charges")
    row = page.locator("#disputes tr.open-dispute").filter(has_text=str(invoice["number"]))
    expect(row).to_contain_text("$100.00")
    expect(row).to_contain_text("UTC")

    dispute_id = row.locator("code").inner_text()
    status, body = http("POST", f"{st.emu}/_emulator/disputes/{dispute_id}/settle", {"status": "won"})
    assert status == 200, body
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    _reload_until(page, lambda: page.locator("#amount-due").inner_text() == "$0.00")
    expect(page.locator("#amount-due")).to_have_text("$0.00")  # the funds reinstated
    expect(page.locator(".dispute-banner")).to_have_count(0)


def test_a_refund_the_emulator_fails_never_leaves_the_ledger(page: Page, web_stack: Stack) -> None:
    st = web_stack
    invoice = _paid_invoice(st, "pm_card_visa")
    st.faults(refund_failure_rate=1.0)  # every new refund: pending, then failed (refund.failed)
    try:
        admin_login(page, st)
        page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
        page.get_by_label("Amount to refund (USD)").fill("40")
        page.get_by_role("button", name="Refund").click()
        status = page.locator("#refund-list .refund-status").first
        expect(status).to_have_text("Failed", timeout=20_000)
    finally:
        st.faults(refund_failure_rate=0.0)
    expect(page.locator("#amount-due")).to_have_text("$0.00")
    expect(page.locator("#payments")).not_to_contain_text("Refund re_")
    expect(page.locator("#refunds")).to_contain_text("$100.00 remains refundable")

"""Issue 5's pages as a person uses them, in Chromium."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import admin_login, client_login
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def test_charge_buyer_shows_queued_then_succeeded_without_reload(page: Page, web_stack: Stack) -> None:
    st = web_stack
    client = st.client_with_card("pm_card_visa")
    invoice = st.invoice(client["id"], total=25_000)
    admin_login(page, st)
    page.get_by_label("Search by number or client").fill(invoice["number"])
    page.get_by_role("button", name="Filter invoices").click()
    page.get_by_role("link", name=invoice["number"]).click()
    expect(page.locator("#invoice-status")).to_have_text("Open")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    page.get_by_role("button", name="Charge buyer").click()
    status = page.locator("#charge-status")
    expect(status).to_contain_text("Queued", timeout=2_000)  # at once: the web app only queues
    expect(status).to_contain_text("Succeeded", timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    expect(page.locator("#amount-due")).to_have_text("$0.00")

    page.reload()
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    expect(page.locator("#payments")).to_contain_text("$250.00")
    expect(page.locator("#timeline")).to_contain_text("charge requested by admin:ops@example.com")

    client_page = page.context.browser.new_context().new_page()
    client_login(client_page, st, client["email"])
    row = client_page.get_by_role("row").filter(has_text=invoice["number"])
    expect(row).to_contain_text("Paid")
    client_page.context.close()


def test_greyed_button_names_its_blocker_and_a_forged_post_is_refused(page: Page, web_stack: Stack) -> None:
    st = web_stack
    status, nocard = st.api("POST", "/api/clients", {"name": "Nora Nocard", "email": "nora@example.com"})
    assert status == 201
    invoice = st.invoice(nocard["id"])
    admin_login(page, st)
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    button = page.get_by_role("button", name="Charge buyer")
    expect(button).to_be_disabled()
    expect(page.locator("#charge-button-wrap")).to_have_attribute(
        "title", re.compile("Nora Nocard has no saved card")
    )
    expect(page.locator("#charge-blockers")).to_contain_text("Nora Nocard has no saved card.")

    # Forge the POST the greyed button would make, with a valid session and CSRF token: still refused.
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    answer = page.request.post(
        f"{st.base}/admin/invoices/{invoice['id']}/charge",
        form={"csrf_token": token or ""},
        headers={"Accept": "application/json"},
    )
    assert answer.status == 409
    assert [b["code"] for b in answer.json()["blockers"]] == ["no_saved_card"]

    # Stripe not connected: the tooltip says so too.
    paid_client = st.client_with_card("pm_card_visa")
    other = st.invoice(paid_client["id"])
    page.goto(f"{st.base}/admin/settings")
    page.get_by_label("Connect Stripe").uncheck()
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_text("Card charges do not work until Stripe is connected")).to_be_visible()
    try:
        page.goto(f"{st.base}/admin/invoices/{other['id']}")
        expect(page.get_by_role("button", name="Charge buyer")).to_be_disabled()
        expect(page.locator("#charge-button-wrap")).to_have_attribute(
            "title", re.compile("Stripe is not connected")
        )
    finally:
        page.goto(f"{st.base}/admin/settings")
        page.get_by_label("Connect Stripe").check()
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_text("Settings saved.")).to_be_visible()


def test_manual_partial_payment_changes_amount_due_and_status(page: Page, web_stack: Stack) -> None:
    st = web_stack
    invoice = st.invoice(st.client_with_card()["id"], total=10_000)
    admin_login(page, st)
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    page.get_by_text("Record a payment received another way").click()
    page.get_by_label("Amount (USD)").fill("40.5")
    page.get_by_label("Method").select_option("cash")
    page.get_by_label("Reference").fill("Receipt 77")
    page.get_by_role("button", name="Record payment").click()
    expect(page.get_by_text("Payment recorded.")).to_be_visible()
    expect(page.locator("#amount-due")).to_have_text("$59.50")
    expect(page.locator("#invoice-status")).to_have_text("Partially paid")
    expect(page.locator("#payments")).to_contain_text("Receipt 77")
    # An overpayment is refused with the amount still due, and nothing is recorded.
    page.get_by_text("Record a payment received another way").click()
    page.get_by_label("Amount (USD)").fill("60")
    page.get_by_role("button", name="Record payment").click()
    expect(page.get_by_text("is more than the $59.50 still due")).to_be_visible()
    expect(page.locator("#amount-due")).to_have_text("$59.50")


def test_client_manages_cards_and_completes_authentication(page: Page, web_stack: Stack) -> None:
    st = web_stack
    client = st.client_with_card("pm_card_authenticationRequired")
    invoice = st.invoice(client["id"], total=7_700)
    client_login(page, st, client["email"])

    page.get_by_role("link", name="My cards").click()
    page.get_by_label("Visa 4242 — succeeds").check()
    page.get_by_role("button", name="Save card").click()
    expect(page.get_by_text("Visa ending 4242 saved.")).to_be_visible()
    page.get_by_label("Mastercard 4444 — succeeds").check()
    page.get_by_role("button", name="Save card").click()
    expect(page.get_by_text("Mastercard ending 4444 saved.")).to_be_visible()
    page.get_by_role("button", name="Make Mastercard ending 4444 my default").click()
    expect(page.get_by_text("Mastercard ending 4444 is now your default card.")).to_be_visible()
    page.get_by_role("button", name="Delete Visa ending 4242").click()
    expect(page.get_by_text("Visa ending 4242 deleted.")).to_be_visible()
    expect(page.locator(".cards")).not_to_contain_text("ending 4242")
    _, saved = st.api("GET", f"/api/clients/{client['id']}")
    assert [(c["last4"], c["is_default"]) for c in saved["cards"]] == [("3184", False), ("4444", True)]

    # Back to the card that needs authentication, then the admin charges off-session.
    page.get_by_role("button", name="Make Visa ending 3184 my default").click()
    status, charge = st.charge(invoice["id"])
    assert status == 202
    assert st.wait_charge(charge["id"])["status"] == "requires_action"

    page.goto(f"{st.base}/client/invoices/{invoice['id']}")
    expect(page.locator("#charge-status")).to_contain_text("Waiting for the client to authenticate")
    page.get_by_role("button", name="Complete authentication with your bank").click()
    page.get_by_role("button", name=re.compile("Complete", re.I)).first.click()  # the bank's 3-D Secure page
    page.wait_for_url(re.compile(rf"/client/invoices/{invoice['id']}"))
    expect(page.get_by_text("your payment went through")).to_be_visible()
    expect(page.locator("#invoice-status")).to_have_text("Paid")

    admin_page = page.context.browser.new_context().new_page()
    admin_login(admin_page, st)
    admin_page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    expect(admin_page.locator("#charge-status")).to_contain_text("Succeeded")
    expect(admin_page.locator("#invoice-status")).to_have_text("Paid")
    admin_page.context.close()


def test_client_isolation_and_csrf(page: Page, web_stack: Stack) -> None:
    st = web_stack
    alice, bob = st.client_with_card(), st.client_with_card()
    bobs_invoice = st.invoice(bob["id"])
    client_login(page, st, alice["email"])
    answer = page.goto(f"{st.base}/client/invoices/{bobs_invoice['id']}")
    assert answer is not None and answer.status == 404
    assert page.request.get(f"{st.base}/client/charges/no-such.json").status == 404
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    # Without the CSRF token the same POST is refused, and nothing is paid.
    refused = page.request.post(f"{st.base}/client/invoices/{bobs_invoice['id']}/pay", form={})
    assert refused.status == 400
    with_token = page.request.post(
        f"{st.base}/client/invoices/{bobs_invoice['id']}/pay",
        form={"csrf_token": token or ""},
        max_redirects=0,
    )
    assert with_token.status == 404  # not Alice's invoice, even with a valid token
    assert st.api("GET", f"/api/charges?invoice_id={bobs_invoice['id']}")[1]["data"] == []
    # A client session is not an admin session.
    admin_answer = page.goto(f"{st.base}/admin/invoices")
    assert admin_answer is not None and "/admin/login" in page.url


def test_batch_runs_page_shows_progress_and_the_invoice_its_retry_state(page: Page, web_stack: Stack) -> None:
    st = web_stack
    declined = st.client_with_card("pm_card_chargeDeclinedInsufficientFunds")
    invoice = st.invoice(declined["id"], total=3_300, auto_charge=True, due_date="2026-01-01")
    ok = st.invoice(
        st.client_with_card("pm_card_visa")["id"], total=1_100, auto_charge=True, due_date="2026-01-01"
    )
    run = st.cli("charge-due", "--no-wait")
    assert "queued" in run.stdout
    admin_login(page, st)
    page.get_by_role("link", name="Batch runs").click()
    latest = page.locator("article.batch").first
    expect(latest.locator(".settled")).to_have_text(re.compile(r"^[1-9]\d*$"), timeout=20_000)
    expect(latest).to_contain_text(re.compile(r"Succeeded: [1-9]"), timeout=20_000)
    expect(latest).to_contain_text(re.compile(r"Failed: [1-9]"), timeout=20_000)
    assert ok["id"]
    page.goto(f"{st.base}/admin/invoices/{invoice['id']}")
    retry = page.locator("#retry-state")
    expect(retry).to_contain_text("insufficient funds")
    expect(retry).to_contain_text("Next retry:")
    expect(retry).to_contain_text("3 automatic attempts left")


def test_client_pays_now_with_the_saved_card(page: Page, web_stack: Stack) -> None:
    st = web_stack
    client = st.client_with_card("pm_card_visa")
    invoice = st.invoice(client["id"], total=5_400)
    client_login(page, st, client["email"])
    page.get_by_role("link", name=invoice["number"]).click()
    expect(page.get_by_text("Pay $54.00 now with your Visa ending 4242.")).to_be_visible()
    page.get_by_role("button", name="Pay now").click()
    expect(page.get_by_text("Payment started.")).to_be_visible()
    expect(page.locator("#charge-status")).to_contain_text("Succeeded", timeout=15_000)
    expect(page.locator("#invoice-status")).to_have_text("Paid")
    _, charges = st.api("GET", f"/api/charges?invoice_id={invoice['id']}")
    assert [(c["source"], c["status"]) for c in charges["data"]] == [("client", "succeeded")]

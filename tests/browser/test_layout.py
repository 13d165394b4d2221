"""Every page reads whole: each admin page at 1280 px (a laptop) and each Client Zone page at 375 px (a
phone: clients open emailed links on phones), with screenshots of every page at both widths kept under
test-artifacts/layout/ for a person to look at.

What "reads whole" means here is measured in the page (tests/browser/layout_facts.js): the page does not
scroll sideways, no control sticks out of the window or cuts its text (a select's choices and a text
field's placeholder included, which the browser draws where scrollWidth cannot see), and at 1280 px no
button is stretched wider than its label (the invoice list's filter bar once cut "Any due date" to "Any
due da" and stretched its button across half the page)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser import ARTIFACTS, admin_login, client_login, client_sign_in_link
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

LAPTOP, PHONE = 1280, 375
SHOTS = ARTIFACTS / "layout"
LAYOUT_FACTS = (Path(__file__).parent / "layout_facts.js").read_text()
# Swagger UI draws the API documentation with its own stylesheet (and scrolls its code samples
# sideways by design): its widgets are Swagger's, the page around them ours.
SWAGGER = "#api-docs"
# Buttons that size to their label on a laptop screen: every button of ours but the sign-in forms'
# (a narrow card, where a full-width button is the design).
SNUG_BUTTONS = "main button:not(.narrow button, #api-docs button)"
# Amounts and status badges read as one piece: "$1,250.00" never breaks into "$1,250." and "00".
ONE_LINE = ".figure, .num, .badge"

ADMIN_PAGES = (
    "sign-in",
    "invoices",
    "invoices-filtered",
    "invoice-blocked",
    "invoice-declined",
    "charges",
    "batch-runs",
    "reconciliation",
    "reconciliation-day",
    "settings",
    "password",
    "api-docs",
)
PAGED_INVOICES = 60
CLIENT_PAGES = ("sign-in", "sign-in-link", "invoices", "invoice", "invoice-authenticate", "cards")


@dataclass
class World:
    """Data that fills every page, and signed-in browser states to open them with."""

    admin_state: Any
    client_state: Any
    admin_paths: dict[str, str] = field(default_factory=dict)
    client_paths: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(browser: Browser, web_stack: Stack) -> Iterator[World]:
    st = web_stack
    # A long name and two cards; invoices paid in part, waiting for a bank transfer, declined in a batch
    # run (with its retry state), waiting for the client's authentication.
    status, ada = st.api(
        "POST", "/api/clients", {"name": "Adaeze Okonkwo-Fairweather", "email": "adaeze@example.com"}
    )
    assert status == 201, ada
    for token in ("pm_card_visa", "pm_card_mastercard", "pm_card_authenticationRequired"):
        assert st.api("POST", f"/api/clients/{ada['id']}/cards", {"payment_method": token})[0] == 201
    cards = st.api("GET", f"/api/clients/{ada['id']}")[1]["cards"]
    visa, auth_card = cards[0], cards[2]

    partly = st.invoice(ada["id"], total=125_000, description="Consulting, November: 25 hours")
    status, charge = st.charge(partly["id"], amount=50_000)
    assert status == 202, charge
    assert st.wait_charge(charge["id"])["status"] == "succeeded"
    blocked = st.invoice(ada["id"], total=42_000, payment_method="bank_transfer")
    st.api("POST", f"/api/clients/{ada['id']}/cards/{auth_card['id']}/default")
    waiting = st.invoice(ada["id"], total=9_900, description="Support plan, December")
    status, charge = st.charge(waiting["id"])
    assert status == 202, charge
    assert st.wait_charge(charge["id"])["status"] == "requires_action"
    st.api("POST", f"/api/clients/{ada['id']}/cards/{visa['id']}/default")

    declined = st.invoice(
        st.client_with_card("pm_card_chargeDeclinedInsufficientFunds")["id"],
        total=3_300,
        auto_charge=True,
        due_date="2026-01-01",
    )
    # Enough invoices of one client for three pages of the invoice list (25 a page).
    status, paget = st.api("POST", "/api/clients", {"name": "Paget Pagination", "email": "paget@example.com"})
    assert status == 201, paget
    for n in range(PAGED_INVOICES):
        st.invoice(paget["id"], total=1_000 + n, number=f"PG-{n:03d}")
    assert "queued" in st.cli("charge-due", "--no-wait").stdout
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    st.cli("reconcile", "--day", yesterday)

    admin_page = browser.new_context().new_page()
    admin_login(admin_page, st)
    # The declined batch charge settles (its retry state then shows on the invoice page).
    admin_page.goto(f"{st.base}/admin/invoices/{declined['id']}")
    expect(admin_page.locator("#retry-state")).to_contain_text("Next retry", timeout=30_000)
    admin_page.goto(f"{st.base}/admin/reconciliation")
    admin_page.get_by_role("link", name="Findings").first.click()
    reconciliation_day = admin_page.url.removeprefix(st.base)

    client_page = browser.new_context().new_page()
    client_login(client_page, st, ada["email"])
    # A second link, never used, for its page (opening it uses nothing; its button would).
    link = client_sign_in_link(browser.new_context().new_page(), st, ada["email"])

    yield World(
        admin_state=admin_page.context.storage_state(),
        client_state=client_page.context.storage_state(),
        admin_paths={
            "sign-in": "/admin/login",
            "invoices": "/admin/invoices",
            "invoices-filtered": "/admin/invoices?q=Adaeze&status=partially_paid&due=overdue&auto_charge=no",
            "invoice-blocked": f"/admin/invoices/{blocked['id']}",
            "invoice-declined": f"/admin/invoices/{declined['id']}",
            "charges": "/admin/charges",
            "batch-runs": "/admin/batches",
            "reconciliation": "/admin/reconciliation",
            "reconciliation-day": reconciliation_day,
            "settings": "/admin/settings",
            "password": "/admin/password",
            "api-docs": "/admin/api-docs",
        },
        client_paths={
            "sign-in": "/client/login",
            "sign-in-link": link.removeprefix(st.base),
            "invoices": "/client/invoices",
            "invoice": f"/client/invoices/{partly['id']}",
            "invoice-authenticate": f"/client/invoices/{waiting['id']}",
            "cards": "/client/cards",
        },
    )
    for pg in (admin_page, client_page):
        pg.context.close()


def _open(browser: Browser, st: Stack, state: Any, path: str, width: int) -> Page:
    signed_out = path.endswith("/login") or "/login/" in path
    context = browser.new_context(
        viewport={"width": width, "height": 900}, storage_state=None if signed_out else state
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    answer = page.goto(st.base + path)
    assert answer is not None and answer.status == 200, f"{path}: {answer and answer.status}"
    assert page.url.removeprefix(st.base) == path, f"{path} led to {page.url}"
    if path == "/admin/api-docs":
        expect(page.locator("#api-docs .opblock").first).to_be_visible()
    page.evaluate("document.fonts.ready")
    return page


def _shoot(page: Page, zone: str, name: str, width: int) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{zone}-{name}-{width}.png"), full_page=True)


@pytest.mark.parametrize("width", [LAPTOP, PHONE])
@pytest.mark.parametrize("name", ADMIN_PAGES)
def test_admin_page_reads_whole(
    browser: Browser, web_stack: Stack, world: World, name: str, width: int
) -> None:
    page = _open(browser, web_stack, world.admin_state, world.admin_paths[name], width)
    try:
        _shoot(page, "admin", name, width)
        problems = page.evaluate(
            LAYOUT_FACTS,
            {"snugButtons": SNUG_BUTTONS if width == LAPTOP else None, "skip": SWAGGER, "oneLine": ONE_LINE},
        )
        assert not problems, f"/admin {name} at {width}px:\n" + "\n".join(problems)
    finally:
        page.context.close()


@pytest.mark.parametrize("width", [PHONE, LAPTOP])
@pytest.mark.parametrize("name", CLIENT_PAGES)
def test_client_zone_page_reads_whole(
    browser: Browser, web_stack: Stack, world: World, name: str, width: int
) -> None:
    page = _open(browser, web_stack, world.client_state, world.client_paths[name], width)
    try:
        _shoot(page, "client", name, width)
        problems = page.evaluate(LAYOUT_FACTS, {"snugButtons": None, "skip": None, "oneLine": ONE_LINE})
        assert not problems, f"/client {name} at {width}px:\n" + "\n".join(problems)
    finally:
        page.context.close()


def test_the_invoice_list_pages_through_a_filtered_list(
    browser: Browser, web_stack: Stack, world: World
) -> None:
    context = browser.new_context(storage_state=world.admin_state)
    page = context.new_page()
    try:
        page.goto(f"{web_stack.base}/admin/invoices?q=Paget")
        pager = page.get_by_role("navigation", name="Pages of invoices")
        expect(pager).to_contain_text(f"Page 1 of 3 · {PAGED_INVOICES} invoices")
        seen: list[str] = []
        for number in (1, 2, 3):
            expect(pager.get_by_role("link", name=f"Page {number}")).to_have_attribute("aria-current", "page")
            expect(page.get_by_label("Search by number or client")).to_have_value("Paget")  # the filter stays
            seen += page.locator("tbody tr td:first-child").all_inner_texts()
            if number < 3:
                pager.get_by_role("link", name="Next page").click()
        assert sorted(seen) == [f"PG-{n:03d}" for n in range(PAGED_INVOICES)]  # each row once
        expect(pager.get_by_role("link", name="Next page")).to_have_count(0)
        pager.get_by_role("link", name="Page 1").click()
        expect(pager.get_by_role("link", name="Previous page")).to_have_count(0)
        expect(page.locator("tbody tr")).to_have_count(25)
    finally:
        context.close()


def test_the_layout_checks_catch_a_cut_select_and_a_stretched_button(browser: Browser) -> None:
    """The measurements themselves: the invoice list's old filter bar (Pico's role="search" group, which
    lays its children in one row) fails them, with the words a person would use."""
    page = browser.new_context(viewport={"width": LAPTOP, "height": 600}).new_page()
    try:
        pico = Path(__file__).resolve().parents[2] / "web" / "static" / "vendor" / "pico" / "pico.min.css"
        page.set_content(
            f"<style>{pico.read_text()}</style><main class='container'>"
            "<form role='search'><div class='grid'>"
            "<div><label for='q'>Search by number or client</label><input id='q' type='search'></div>"
            "<div><label for='status'>Status</label><select id='status'><option>Any status</option>"
            "<option>Partially paid</option></select></div>"
            "<div><label for='due'>Due</label><select id='due'><option>Any due date</option></select></div>"
            "<div><label for='auto'>Auto-charge</label><select id='auto'><option>Either</option></select>"
            "</div></div><button type='submit' class='secondary'>Filter invoices</button></form></main>"
        )
        problems = page.evaluate(LAYOUT_FACTS, {"snugButtons": SNUG_BUTTONS, "skip": None})
        assert any(re.search(r'select#due cuts "Any due date"', p) for p in problems), problems
        assert any(re.search(r"button \"Filter invoices\" is stretched", p) for p in problems), problems
    finally:
        page.context.close()

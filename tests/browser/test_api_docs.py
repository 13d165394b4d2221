"""The API documentation page (/admin/api-docs): the served OpenAPI document drawn by the vendored
Swagger UI, behind the admin sign-in, under the app's Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser import ARTIFACTS, admin_login
from tests.support.stack import TOKEN, Stack, http

pytestmark = pytest.mark.integration

RECORD_CSP_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture
def docs_page(browser: Browser, web_stack: Stack, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(RECORD_CSP_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
        assert errors == [], errors
        assert page.evaluate("window.__violations") == []
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()


def test_the_api_docs_need_an_admin(docs_page: Page, web_stack: Stack) -> None:
    docs_page.goto(f"{web_stack.base}/admin/api-docs")
    assert docs_page.url.startswith(f"{web_stack.base}/admin/login?next=")
    expect(docs_page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(docs_page.locator("#api-docs")).to_have_count(0)


def test_every_operation_of_the_document_is_on_the_page_and_try_it_out_works(
    docs_page: Page, web_stack: Stack
) -> None:
    st, page = web_stack, docs_page
    status, document = http("GET", f"{st.base}/api/openapi.json")
    assert status == 200
    operations = sorted(
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    )
    admin_login(page, st)
    page.get_by_role("link", name="API docs").click()
    expect(page.get_by_role("heading", name="JSON API documentation")).to_be_visible()
    expect(page.locator("#api-docs .opblock").first).to_be_visible()
    shown = page.locator("#api-docs .opblock-summary").evaluate_all(
        """blocks => blocks.map(b => [b.querySelector(".opblock-summary-method").textContent,
                                     b.querySelector(".opblock-summary-path").dataset.path])"""
    )
    assert sorted(map(tuple, shown)) == operations
    expect(page.locator("#api-docs .info .title")).to_contain_text(document["info"]["title"])

    # Authorize with the API token, then send GET /api/settings from the page: a real answer.
    page.get_by_role("button", name="Authorize").first.click()
    page.locator(".auth-container input").fill(TOKEN)
    page.get_by_role("button", name="Apply credentials").click()
    page.locator(".modal-ux").get_by_role("button", name="Close", exact=True).click()
    settings = page.locator(".opblock-get", has=page.locator('[data-path="/api/settings"]'))
    settings.locator(".opblock-summary").click()
    settings.get_by_role("button", name="Try it out").click()
    settings.get_by_role("button", name="Execute").click()
    answer = settings.locator(".live-responses-table .response")
    expect(answer.locator(".response-col_status")).to_contain_text("200")
    expect(answer).to_contain_text('"stripe_connected"')


def test_the_page_shows_our_document_whatever_the_address_says(docs_page: Page, web_stack: Stack) -> None:
    """Swagger UI can read a document address from ?url= or ?configUrl=; this page never does."""
    st, page = web_stack, docs_page
    elsewhere: list[str] = []
    page.context.on("request", lambda r: None if r.url.startswith(st.base) else elsewhere.append(r.url))
    admin_login(page, st)
    page.goto(
        f"{st.base}/admin/api-docs?url=https://example.com/evil.json&configUrl=https://example.com/c.json"
    )
    expect(page.locator("#api-docs .info .title")).to_contain_text("Offsession JSON API")
    expect(page.locator("#api-docs .opblock").first).to_be_visible()
    assert elsewhere == []

"""Browser tests: Playwright driving Debian's Chromium (/usr/bin/chromium, headless) against the real
stack. Screenshots are kept under test-artifacts/ for a person to look at."""

from __future__ import annotations

import email
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.conftest import broker_url
from tests.support.services import PostgresServer, RedisServer
from tests.support.stack import Stack

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ADMIN_EMAIL = "ops@example.com"
ADMIN_PASSWORD = "browser-test-password"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: make test installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def web_stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, postgres_server: PostgresServer
) -> Iterator[Stack]:
    st = Stack(postgres_server.create_database("browser"), broker_url(redis_server), workers=1)
    try:
        st.cli("create-admin", ADMIN_EMAIL, "--password", ADMIN_PASSWORD)
        yield st
    finally:
        st.stop()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    try:
        yield pg
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
        pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        context.close()


def admin_login(page: Page, st: Stack) -> None:
    page.goto(st.base + "/admin/login")
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/invoices")


def client_login(page: Page, st: Stack, address: str) -> None:
    """Ask for a sign-in link, read it from the email the app wrote under var/outbox, open it."""
    page.goto(client_sign_in_link(page, st, address))  # the link's page: nothing used until its button
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/client/invoices")


def client_sign_in_link(page: Page, st: Stack, address: str) -> str:
    """Ask for a sign-in link on the Client Zone's sign-in page; the link, read from the email the app
    wrote under var/outbox."""
    outbox = st.dir / "var" / "outbox"
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()
    page.goto(st.base + "/client/login")
    page.get_by_label("Your email").fill(address)
    page.get_by_role("button", name="Email me a sign-in link").click()
    page.get_by_text("a sign-in link is on its way").wait_for()
    # A worker sends it (the request only queued it): wait for the email to appear.
    deadline = time.monotonic() + 30
    new: list[Path] = []
    while not new and time.monotonic() < deadline:
        new = sorted(set(outbox.glob("*.eml")) - before) if outbox.exists() else []
        if not new:
            time.sleep(0.1)
    assert new, "no sign-in email was written"
    message = email.message_from_bytes(new[-1].read_bytes())
    assert message["To"] == address
    body = next(
        part.get_payload(decode=True).decode()
        for part in message.walk()
        if part.get_content_type() == "text/plain"
    )
    return next(word for word in body.split() if "/client/login/" in word)

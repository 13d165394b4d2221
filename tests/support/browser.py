"""Signing in through the real pages with Playwright, as the browser tests do."""

from __future__ import annotations

import email
from pathlib import Path

from playwright.sync_api import Page

from tests.support.stack import Stack
from tests.support.waiting import wait_until

ADMIN_EMAIL = "ops@example.com"
ADMIN_PASSWORD = "browser-test-password"


def admin_login(page: Page, st: Stack) -> None:
    page.goto(st.base + "/admin/login")
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin/invoices")


def client_login(page: Page, st: Stack, address: str) -> None:
    """Ask for a sign-in link, read it from the email the app wrote under var/outbox, open it."""
    outbox = st.dir / "var" / "outbox"
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()
    page.goto(st.base + "/client/login")
    page.get_by_label("Your email").fill(address)
    page.get_by_role("button", name="Email me a sign-in link").click()
    page.get_by_text("a sign-in link is on its way").wait_for()
    # A worker sends it (the request only queued it): wait for the email to appear.
    new: list[Path] = wait_until(
        lambda: sorted(set(outbox.glob("*.eml")) - before) if outbox.exists() else [],
        timeout=30,
        what="the sign-in email",
    )
    message = email.message_from_bytes(new[-1].read_bytes())
    assert message["To"] == address
    body = next(
        part.get_payload(decode=True).decode()
        for part in message.walk()
        if part.get_content_type() == "text/plain"
    )
    link = next(word for word in body.split() if "/client/login/" in word)
    page.goto(link)  # the link's page: nothing used until its button is pressed
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/client/invoices")

"""Debian's Chromium (/usr/bin/chromium, headless) driven by Playwright, as the project's browser tests
launch it, and signing in through the real pages (the admin's password, the client's emailed link)."""

from __future__ import annotations

import email
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.support.stack import Stack
from tests.support.waiting import wait_until

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
T = TypeVar("T")

# Screenshots of every page the browser tests visit, for a person to look at.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# The admin the browser tests' stack creates.
ADMIN_EMAIL = "ops@example.com"
ADMIN_PASSWORD = "browser-test-password"


def launch_chromium(playwright: Playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: make test installs Debian's chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))


class ChromiumThread:
    """Chromium driven from a thread of its own. Playwright's sync API allows one instance per thread,
    and the browser tests' session-wide one holds the main thread's; every call on this browser's pages
    happens in ``run``."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._pool.submit(self._start).result()

    def _start(self) -> None:
        self._playwright = sync_playwright().start()
        self._browser = launch_chromium(self._playwright)

    def run(self, steps: Callable[[Page], T], *, javascript: bool = True) -> T:
        """``steps(page)`` in a fresh browser context; its result, or its exception raised here."""

        def task() -> T:
            assert self._browser is not None
            context = self._browser.new_context(java_script_enabled=javascript)
            page = context.new_page()
            page.set_default_timeout(15_000)
            try:
                return steps(page)
            finally:
                context.close()

        return self._pool.submit(task).result()

    def close(self) -> None:
        def stop() -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        self._pool.submit(stop).result()
        self._pool.shutdown()


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
    return next(word for word in body.split() if "/client/login/" in word)

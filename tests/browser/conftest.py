"""Browser tests: Playwright driving Debian's Chromium (/usr/bin/chromium, headless) against the real
stack. Screenshots are kept under test-artifacts/ for a person to look at."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.browser import ADMIN_EMAIL, ADMIN_PASSWORD, ARTIFACTS
from tests.support.services import PostgresServer, RedisServer
from tests.support.stack import Stack, broker_url

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


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

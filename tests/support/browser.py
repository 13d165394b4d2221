"""Debian's Chromium (/usr/bin/chromium, headless) driven by Playwright, as the project's browser tests
launch it."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from playwright.sync_api import Browser, Page, Playwright, sync_playwright

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

"""Waiting for a positive signal: poll until something has happened, never sleep and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.05) -> T:
    """Call `check` until it returns something truthy, and return that. After `timeout` seconds an
    AssertionError says what did not happen (`what`) and what `check` returned last."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g}s for {what}; last seen: {result!r}")
        time.sleep(every)

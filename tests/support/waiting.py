"""Waiting for a positive signal: poll until something has happened, never sleep and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

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


def sessions_waiting_for_a_lock(factory: sessionmaker[Session]) -> int:
    """How many sessions of this PostgreSQL database wait for a lock. A transaction of its own per look:
    PostgreSQL keeps one snapshot of pg_stat_activity per transaction, so a session polling inside one
    transaction would never see the wait begin."""
    with factory() as observer:
        return int(
            observer.scalar(
                text(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                    "and datname = current_database()"
                )
            )
            or 0
        )

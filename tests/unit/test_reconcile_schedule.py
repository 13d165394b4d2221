"""The daily reconciliation's beat entry fires at 02:30 UTC, whatever the batch's local time zone."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from shared.config import get_config


@pytest.fixture
def celeryconfig_in_new_york(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    monkeypatch.setenv("OFFSESSION_HOME", str(tmp_path))
    monkeypatch.setenv("OFFSESSION_BATCH_TIMEZONE", "America/New_York")
    get_config.cache_clear()
    sys.modules.pop("shared.adapters.celeryconfig", None)
    try:
        yield importlib.import_module("shared.adapters.celeryconfig")
    finally:
        sys.modules.pop("shared.adapters.celeryconfig", None)
        get_config.cache_clear()


def test_yesterday_is_reconciled_daily_at_0230_utc(celeryconfig_in_new_york: ModuleType) -> None:
    config = celeryconfig_in_new_york
    assert config.timezone == "America/New_York"
    entry = config.beat_schedule["reconcile-yesterday"]
    assert entry["task"] == "offsession.reconcile_day"
    assert "kwargs" not in entry and "args" not in entry  # no day: the task takes yesterday when it runs
    schedule = entry["schedule"]
    schedule.nowfun = lambda: datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
    last_run = datetime(2026, 11, 20, 2, 30, tzinfo=UTC)
    assert schedule.remaining_estimate(last_run) == timedelta(minutes=30)
    schedule.nowfun = lambda: datetime(2026, 11, 21, 2, 30, 1, tzinfo=UTC)
    assert schedule.remaining_estimate(last_run) <= timedelta(0)

"""The daily reconciliation's beat entry fires at 02:30 UTC, whatever the batch's local time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.celeryconfig import celery_settings
from shared.config import load_config


@pytest.fixture
def settings_in_new_york(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    monkeypatch.setenv("OFFSESSION_HOME", str(tmp_path))
    monkeypatch.setenv("OFFSESSION_BATCH_TIMEZONE", "America/New_York")
    return celery_settings(load_config())


def test_yesterday_is_reconciled_daily_at_0230_utc(settings_in_new_york: dict[str, Any]) -> None:
    settings = settings_in_new_york
    assert settings["timezone"] == "America/New_York"
    entry = settings["beat_schedule"]["reconcile-yesterday"]
    assert entry["task"] == "offsession.reconcile_day"
    assert "kwargs" not in entry and "args" not in entry  # no day: the task takes yesterday when it runs
    schedule = entry["schedule"]
    schedule.nowfun = lambda: datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
    last_run = datetime(2026, 11, 20, 2, 30, tzinfo=UTC)
    assert schedule.remaining_estimate(last_run) == timedelta(minutes=30)
    schedule.nowfun = lambda: datetime(2026, 11, 21, 2, 30, 1, tzinfo=UTC)
    assert schedule.remaining_estimate(last_run) <= timedelta(0)

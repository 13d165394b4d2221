"""A threads-pool worker's engine keeps a connection per thread (issue 8): no thread waits for another's
connection, and none is closed and reopened between two charges."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import config
from shared.adapters import database as db


def test_a_threads_worker_keeps_a_connection_per_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(db, "_pool_limits", {})
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'pool.db'}")
    config.get_config.cache_clear()
    try:
        default_pool = db.get_engine().pool
        assert (default_pool.size(), default_pool._max_overflow) == (  # type: ignore[attr-defined]
            db.DEFAULT_POOL_SIZE,
            db.DEFAULT_MAX_OVERFLOW,
        )
        db.size_pool_for_threads(24)  # drops the engine built with the defaults
        pool = db.get_engine().pool
        assert pool is not default_pool
        assert (pool.size(), pool._max_overflow) == (24, 0)  # type: ignore[attr-defined]
    finally:
        db.reset_engine_cache()
        config.get_config.cache_clear()


def test_no_threads_is_refused() -> None:
    with pytest.raises(ValueError):
        db.size_pool_for_threads(0)

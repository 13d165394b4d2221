"""A threads-pool worker's engine keeps a connection per thread: no thread waits for another's
connection, and none is closed and reopened between two charges."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.adapters import database as db
from shared.bootstrap import bootstrap
from shared.config import load_config


def test_a_threads_worker_keeps_a_connection_per_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'pool.db'}")
    default = bootstrap(load_config())
    threaded = bootstrap(load_config())
    threaded.size_pool_for_threads(24)
    try:
        default_pool = default.engine.pool
        assert (default_pool.size(), default_pool._max_overflow) == (  # type: ignore[attr-defined]
            db.DEFAULT_POOL_SIZE,
            db.DEFAULT_MAX_OVERFLOW,
        )
        pool = threaded.engine.pool
        assert (pool.size(), pool._max_overflow) == (24, 0)  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError):
            threaded.size_pool_for_threads(8)  # too late: the engine is built
    finally:
        default.close()
        threaded.close()


def test_no_threads_is_refused() -> None:
    with pytest.raises(ValueError):
        db.pool_limits_for_threads(0)

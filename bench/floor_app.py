"""The floor for bench_enqueue.py: the least an enqueue can cost on this machine.

A bare WSGI app, served by gunicorn with the web app's settings: every POST does one INSERT into a
scratch table of the same PostgreSQL and one LPUSH to the same Redis, then answers 202. No Flask, no
ORM, no Celery: what is left is HTTP parsing, one database round trip with its commit, one Redis round
trip. Each gunicorn worker process keeps one connection to each, as a pooled web app would.

    DATABASE_URL=postgresql+psycopg://... CELERY_BROKER_URL=redis://... gunicorn -w 2 "bench.floor_app:app"
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import redis

SCRATCH_TABLE = "bench_floor"
QUEUE_KEY = "bench_floor"
ANSWER = json.dumps({"status": "queued"}).encode()


def _libpq_url(sqlalchemy_url: str) -> str:
    # postgresql+psycopg://... is SQLAlchemy's spelling; libpq wants postgresql://...
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


class Connections:
    """One database and one Redis connection per process, opened on the first request (after fork)."""

    def __init__(self) -> None:
        self._pid = 0
        self._db: psycopg.Connection[Any] | None = None
        self._redis: redis.Redis | None = None

    def get(self) -> tuple[psycopg.Connection[Any], redis.Redis]:
        if self._pid != os.getpid() or self._db is None or self._redis is None:
            self._pid = os.getpid()
            # Autocommit: the INSERT is its own transaction, one round trip with its commit.
            self._db = psycopg.connect(_libpq_url(os.environ["DATABASE_URL"]), autocommit=True)
            self._redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
        return self._db, self._redis


def create_scratch_table(database_url: str) -> None:
    with psycopg.connect(_libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCRATCH_TABLE} "
            "(id bigserial PRIMARY KEY, payload jsonb NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )


_connections = Connections()
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ["REQUEST_METHOD"] != "POST":
        start_response("405 Method Not Allowed", [("Content-Length", "0")])
        return [b""]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b"{}"
    db, broker = _connections.get()
    row = db.execute(
        f"INSERT INTO {SCRATCH_TABLE} (payload) VALUES (%s) RETURNING id", (body.decode() or "{}",)
    ).fetchone()
    assert row is not None
    # After commit, as the real path publishes after its transaction.
    broker.lpush(QUEUE_KEY, row[0])
    start_response(
        "202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]
    )
    return [ANSWER]

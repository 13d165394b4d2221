"""The web suite's world: the Flask app through its test client, on a migrated SQLite database in a
temporary OFFSESSION_HOME, with the Stripe emulator running in-process and a memory:// broker (the helpers:
tests/support/web_app.py). Every secret has a distinctive value of its own, so the suite can look for it
in pages and logs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

import shared.services.admins
import web
from shared.bootstrap import bootstrap
from shared.services.admins import create_admin
from tests.support.emulator import running_emulator
from tests.support.web_app import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    API_TOKEN,
    SECRET_KEY,
    STRIPE_API_KEY,
    WEBHOOK_SECRET,
    Env,
    World,
    api,
    party,
)


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    with running_emulator(webhook_secret=WEBHOOK_SECRET, api_keys=(STRIPE_API_KEY,)) as base:
        yield base


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: str, sqlite_template: Path
) -> Iterator[Env]:
    home = tmp_path / "home"
    home.mkdir()
    db_path = tmp_path / "offsession.db"
    shutil.copyfile(sqlite_template, db_path)  # migrated once (tests/conftest.py)
    for name in ("REDIS_URL", "MAIL_URL", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "OFFSESSION_HOME": str(home),
        "DATABASE_URL": f"sqlite:///{db_path}",
        "OFFSESSION_API_TOKEN": API_TOKEN,
        "SECRET_KEY": SECRET_KEY,
        "CELERY_BROKER_URL": "memory://",
        "STRIPE_API_KEY": STRIPE_API_KEY,
        "STRIPE_API_BASE": emulator,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_RATE_LIMIT": "1000",
    }.items():
        monkeypatch.setenv(name, value)
    # Argon2 at its production cost takes ~0.1 s a hash; the throttle tests hash dozens of passwords.
    monkeypatch.setattr(
        shared.services.admins, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    runtime = bootstrap()
    app = web.create_app(runtime=runtime)
    app.testing = True
    env = Env(home, runtime, app, emulator, db_path)
    try:
        yield env
    finally:
        env.runtime.close()


# ---- requests ----------------------------------------------------------------------------------------


@pytest.fixture
def world(env: Env) -> World:
    client = env.app.test_client()
    assert api(client, "PUT", "/api/settings", {"stripe_connected": True}).status_code == 200
    with env.session() as s:
        create_admin(s, ADMIN_EMAIL, ADMIN_PASSWORD)
        s.commit()
    return World(party(client, "alice", "Alice A"), party(client, "bob", "Bob B"))

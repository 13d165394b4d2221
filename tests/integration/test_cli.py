"""The `offsession` command as a user runs it: migrations, demo data (twice), admins, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.services import free_port, wait_for_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "offsession"), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OFFSESSION_HOME": str(tmp_path), "DATABASE_URL": database_url}


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: conn.execute(text(f"select count(*) from {t}")).scalar_one()
                for t in ("client", "card", "invoice", "payment", "admin_user")
            }
    finally:
        engine.dispose()


def test_db_upgrade_then_seed_demo_twice_keeps_one_copy(env: dict[str, str], database_url: str) -> None:
    result = run(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "database at head" in result.stdout
    port = free_port()
    emulator = subprocess.Popen(
        [str(BIN / "offsession"), "emulator", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        env = {**env, "STRIPE_API_BASE": f"http://127.0.0.1:{port}"}
        first = run(env, "seed-demo")
        assert first.returncode == 0, first.stderr
        assert "8 clients, 7 cards and 15 invoices created" in first.stdout
        assert "demo admin: admin@demo.offsession.test / " in first.stdout
        after_first = counts(database_url)
        second = run(env, "seed-demo")
        assert second.returncode == 0, second.stderr
        assert "0 clients, 0 cards and 0 invoices created" in second.stdout
        assert counts(database_url) == after_first
        assert after_first == {"client": 8, "card": 7, "invoice": 15, "payment": 3, "admin_user": 1}
    finally:
        emulator.terminate()
        emulator.wait(10)


def test_seed_demo_starts_the_embedded_emulator_when_none_runs(tmp_path: Path) -> None:
    """With every embedded default, seed-demo needs no running process at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL"))}
    env["OFFSESSION_HOME"] = str(tmp_path)
    if _port_open(12111):
        pytest.skip("something already listens on the emulator's default port 12111")
    assert run(env, "db", "upgrade").returncode == 0
    result = run(env, "seed-demo")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var" / "emulator-state.json").exists()
    assert counts(f"sqlite:///{tmp_path / 'var' / 'offsession.db'}")["card"] == 7


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_create_admin_and_errors_are_one_line_with_exit_2(env: dict[str, str]) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    ok = run(env, "create-admin", "Ops@Example.com", "--password", "correct horse battery")
    assert ok.returncode == 0 and "admin ops@example.com can sign in" in ok.stdout
    short = run(env, "create-admin", "ops@example.com", "--password", "short")
    assert short.returncode == 2
    assert short.stderr.strip() == "offsession: The password needs at least 10 characters."
    bad = run(env, "create-admin", "not-an-email", "--password", "long enough password")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    no_tty = subprocess.run(
        [str(BIN / "offsession"), "create-admin", "x@example.com"],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert no_tty.returncode == 2 and "no --password" in no_tty.stderr


def test_a_live_key_aimed_at_the_emulator_refuses_to_start(env: dict[str, str]) -> None:
    env = {**env, "STRIPE_API_KEY": "sk_live_abc", "STRIPE_API_BASE": "http://127.0.0.1:12111"}
    result = run(env, "db", "upgrade")
    assert result.returncode == 2
    assert "live key may only talk to Stripe itself" in result.stderr


def test_db_downgrade_one_step_then_upgrade_again(env: dict[str, str], database_url: str) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            head = conn.execute(text("select version_num from alembic_version")).scalar_one()
        down = run(env, "db", "downgrade", "-1")
        assert down.returncode == 0, down.stderr
        with engine.connect() as conn:
            assert conn.execute(text("select version_num from alembic_version")).scalar_one() != head
        assert run(env, "db", "upgrade").returncode == 0
        with engine.connect() as conn:
            assert conn.execute(text("select version_num from alembic_version")).scalar_one() == head
    finally:
        engine.dispose()
    nowhere = run(env, "db", "downgrade", "no-such-revision")
    assert nowhere.returncode == 2
    assert nowhere.stderr.count("\n") == 1 and "downgrade failed" in nowhere.stderr

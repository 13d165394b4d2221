"""CPU per enqueue request in one process: POST /api/invoices/<id>/charges without gunicorn.

Starts a throwaway PostgreSQL 15 and redis-server (the broker), builds the web app as gunicorn does
(create_app(), JSON log lines, written to /dev/null here) and sends N POSTs through Flask's test client,
each for a distinct eligible invoice, in rounds. Reports CPU per POST (time.process_time: the client
side of the test client included, gunicorn's HTTP parsing not) per round and the database round trips
one POST makes (pool checkouts and statements). Optionally profiles one more round (cProfile on the
CPU clock). The workers are not started: each accepted charge waits on the broker.

    .venv/bin/python bench/profile_enqueue.py --posts 300
    .venv/bin/python bench/profile_enqueue.py --posts 300 --profile   # CPU profile to stdout

Goal: <= 5 ms CPU per POST, what >= 40% of the floor's throughput on 2 cores needs; reported,
not enforced. Exits 1 if a POST is not answered 202 or an accepted charge lacks its published outbox row.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import event, func, insert, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from tests.support.services import PostgresServer, RedisServer  # noqa: E402

API_TOKEN = "profile-enqueue-token"
CLIENTS = 5
CPU_GOAL_MS = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=300, help="POSTs per measured round")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (the best is the figure)")
    parser.add_argument("--warmup", type=int, default=30, help="POSTs before measuring")
    parser.add_argument("--profile", action="store_true", help="print a CPU profile (cProfile) of a round")
    parser.add_argument("--profile-lines", type=int, default=50)
    args = parser.parse_args()

    pg, redis = PostgresServer(), RedisServer()
    try:
        return run(args, pg.create_database("enqueue"), redis.url)
    finally:
        redis.close()
        pg.stop()


def run(args: argparse.Namespace, database_url: str, redis_url: str) -> int:
    os.environ.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=redis_url + "/0",
        REDIS_URL=redis_url + "/1",
        OFFSESSION_API_TOKEN=API_TOKEN,
        SECRET_KEY="profile-enqueue-secret",
        OFFSESSION_LOG_FORMAT="json",
    )
    from shared.adapters.migrate import upgrade
    from shared.bootstrap import bootstrap
    from shared.domain.models import ChargeAttempt, OutboxMessage

    upgrade(database_url)
    runtime = bootstrap()  # the web process's, as create_app() would build it
    engine = runtime.engine
    total = args.warmup + args.posts * (args.rounds + (1 if args.profile else 0)) + 1
    invoice_ids = iter(seed_invoices(engine, total))
    # As under gunicorn: create_app() sets up JSON logging to stderr; the lines go to /dev/null here.
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        from web import create_app

        client = create_app(runtime=runtime).test_client()
        headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
        refused: list[tuple[int, int]] = []
        made = [0]

        def post(count: int) -> None:
            for _ in range(count):
                invoice_id = next(invoice_ids)
                path = f"/api/invoices/{invoice_id}/charges"
                status = client.post(path, headers=headers, data=b"{}").status_code
                made[0] += 1
                if status != 202:
                    refused.append((invoice_id, status))

        post(args.warmup)
        rounds_ms = []
        for _ in range(args.rounds):
            started = time.process_time()
            post(args.posts)
            rounds_ms.append((time.process_time() - started) / args.posts * 1000)
        trips = round_trips(engine, lambda: post(1))
        profile = None
        if args.profile:
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            post(args.posts)
            profile.disable()
    finally:
        os.dup2(saved_stderr, 2)
        os.close(devnull)
        os.close(saved_stderr)

    with Session(engine) as session:
        attempts = session.scalar(select(func.count()).select_from(ChargeAttempt)) or 0
        unpublished = (
            session.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.published_at.is_(None))
            )
            or 0
        )
    best = min(rounds_ms)
    print(f"{args.posts} POSTs per round, {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    print("CPU per POST, ms, per round: " + ", ".join(f"{ms:.2f}" for ms in rounds_ms))
    verdict = "met" if best <= CPU_GOAL_MS else "NOT met"
    print(f"goal: CPU per POST <= {CPU_GOAL_MS:.0f} ms: best round {best:.2f} ms, {verdict}")
    checkouts, statements = trips["checkouts"], trips["statements"]
    print(f"one POST: {checkouts} pool checkout(s), each pinged; {statements} statements + COMMIT")
    if profile is not None:
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(args.profile_lines)
        stats.sort_stats("tottime").print_stats(args.profile_lines // 2)
    failures = [f"invoice {i} answered {s}" for i, s in refused[:5]]
    if unpublished:
        failures.append(f"{unpublished} outbox rows left unpublished")
    accepted = made[0] - len(refused)
    if attempts != accepted:
        failures.append(f"{attempts} attempt rows for {accepted} accepted POSTs")
    for failure in failures:
        print(f"VIOLATION: {failure}")
    return 1 if failures else 0


def seed_invoices(engine: Any, count: int, *, tag: str = "bench", auto_charge: bool = False) -> list[int]:
    """`count` chargeable invoices over a few clients with a saved default card, numbered and named by
    `tag` (a second seeding under another tag adds its own); returns their ids."""
    from shared.domain.models import Card, Client, Invoice
    from shared.services.settings import update_settings

    with Session(engine) as session, session.begin():
        update_settings(session, "bench", stripe_connected=True)
        clients = []
        for n in range(CLIENTS):
            client = Client(
                name=f"Client {tag} {n}", email=f"c-{tag}-{n}@example.com", stripe_customer_id=f"cus_{tag}{n}"
            )
            client.cards.append(
                Card(
                    stripe_payment_method_id=f"pm_{tag}{n}",
                    brand="visa",
                    last4="4242",
                    exp_month=1,
                    exp_year=2030,
                    is_default=True,
                )
            )
            session.add(client)
            clients.append(client)
        session.flush()
        rows = [
            {
                "number": f"{tag.upper()}-{n:07d}",
                "client_id": clients[n % CLIENTS].id,
                "currency": "usd",
                "total": 1_000 + n,
                "due_date": date.today(),
                "auto_charge": auto_charge,
                "payment_method": "online_card",
            }
            for n in range(count)
        ]
        first_new = session.scalar(select(func.coalesce(func.max(Invoice.id), 0)))
        session.execute(insert(Invoice), rows)
        return list(session.scalars(select(Invoice.id).where(Invoice.id > first_new).order_by(Invoice.id)))


def round_trips(engine: Any, action: Any) -> dict[str, int]:
    """Pool checkouts and statements `action` makes (each checkout also pings: pool_pre_ping)."""
    counts = {"checkouts": 0, "statements": 0}

    def on_checkout(*_args: Any) -> None:
        counts["checkouts"] += 1

    def on_statement(*_args: Any) -> None:
        counts["statements"] += 1

    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(engine, "before_cursor_execute", on_statement)
    try:
        action()
    finally:
        event.remove(engine.pool, "checkout", on_checkout)
        event.remove(engine, "before_cursor_execute", on_statement)
    return counts


if __name__ == "__main__":
    sys.exit(main())

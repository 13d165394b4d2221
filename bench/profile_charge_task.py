"""CPU per charge of the charge task itself, in one process: no broker consumer, no threads.

Starts a throwaway PostgreSQL 15 and redis-server and an in-process Stripe emulator (no latency, no rate
limit), opens N queued attempts over N invoices (one client, pm_card_visa), then runs the Celery task
`offsession.charge_attempt` eagerly for each (`Task.apply`: Celery's tracer, its signals and our log
lines, JSON-formatted to /dev/null as in production) and reports CPU per charge: time.thread_time of
the thread that runs the tasks (the emulator serves from threads of its own), beside the process's.
Optionally profiles the loop (cProfile on the same clock).

    .venv/bin/python bench/profile_charge_task.py --charges 300
    .venv/bin/python bench/profile_charge_task.py --charges 300 --profile   # CPU profile to stdout
    .venv/bin/python bench/profile_charge_task.py --charges 300 --group 10  # the batch's messages

With --group N the attempts are opened as the batch opens them and run N to a message by the batch's task
`offsession.charge_attempts` (shared.services.charge_batches); the default, 1, is a click's message.

Exits 1 if a charge did not succeed or an invoice has more than one payment.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import event, func, select  # noqa: E402

from tests.support.services import PostgresServer, RedisServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=300)
    parser.add_argument("--profile", action="store_true", help="print a CPU profile (cProfile) of the loop")
    parser.add_argument("--profile-lines", type=int, default=60)
    parser.add_argument("--group", type=int, default=1, help="charges per message (1: the click's task)")
    args = parser.parse_args()

    pg, redis = PostgresServer(), RedisServer()
    try:
        return run(args, pg.create_database("profile"), redis.url)
    finally:
        redis.close()
        pg.stop()


def run(args: argparse.Namespace, database_url: str, redis_url: str) -> int:
    from tests.support.emulator import running_emulator

    with running_emulator() as base:
        os.environ.update(
            DATABASE_URL=database_url,
            CELERY_BROKER_URL=redis_url + "/0",
            REDIS_URL=redis_url + "/1",
            STRIPE_API_KEY="sk_test_emulator",
            STRIPE_API_BASE=base,
            STRIPE_RATE_LIMIT="100000",
            OFFSESSION_LOG_FORMAT="json",
        )
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from shared.adapters.logs import install_formatter, make_formatter
    from shared.adapters.migrate import upgrade
    from shared.domain.models import Card, ChargeAttempt, Client, Invoice, Payment, Settings
    from shared.services.charge_requests import load_invoice_for_charge, request_charge
    from tests.support.unit_of_work import InSession
    from worker import runtime, tasks

    config = runtime.config
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    devnull = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
    root.addHandler(logging.StreamHandler(devnull))
    install_formatter(root, make_formatter("json", config.log_secrets()))

    runtime.size_pool_for_threads(4)
    upgrade(config.database_url)
    gateway = runtime.gateway
    factory = runtime.sessions
    customer = gateway.ensure_customer("Ada", "ada@example.com", idempotency_key="offsession:customer:1")
    card = gateway.attach_payment_method(customer, "pm_card_visa", idempotency_key="offsession:card:1")
    with factory() as s, s.begin():
        settings = s.get_one(Settings, 1)  # the migration inserts the single row
        settings.stripe_connected, settings.online_card_payments_enabled = True, True
        client = Client(name="Ada", email="ada@example.com", stripe_customer_id=customer)
        client.cards.append(
            Card(
                stripe_payment_method_id=card.payment_method_id,
                brand=card.brand,
                last4=card.last4,
                exp_month=card.exp_month,
                exp_year=card.exp_year,
                is_default=True,
            )
        )
        s.add(client)
        s.flush()
        for n in range(args.charges):
            s.add(
                Invoice(
                    number=f"P-{n:05d}",
                    client_id=client.id,
                    currency="usd",
                    total=1_000 + n,
                    due_date=date.today(),
                    payment_method="online_card",
                )
            )
    attempt_ids: list[str] = []
    with factory() as s, s.begin():
        for invoice_id in s.scalars(select(Invoice.id).order_by(Invoice.id)).all():
            invoice = load_invoice_for_charge(s, invoice_id, lock=True)
            assert invoice is not None
            attempt = request_charge(
                InSession(s),
                invoice,
                source="admin" if args.group == 1 else "schedule",
                requested_by="bench",
                own_message=args.group == 1,
            )
            attempt_ids.append(attempt.id)

    def run_tasks(ids: list[str]) -> None:
        if args.group == 1:
            for attempt_id in ids:
                tasks.charge_attempt.apply(kwargs={"attempt_id": attempt_id})
        else:
            for start in range(0, len(ids), args.group):
                tasks.charge_attempts.apply(kwargs={"attempt_ids": ids[start : start + args.group]})

    # Warm up (first statements compile and cache, the first HTTP connection opens) on a few messages.
    warm = min(max(5, 2 * args.group), len(attempt_ids))
    run_tasks(attempt_ids[:warm])
    measured = attempt_ids[warm:]

    # cProfile on this thread's CPU clock: time spent waiting on PostgreSQL, Redis or the emulator does not
    # count, only what the task computes (inflated by the profiler's own overhead, evenly).
    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    if profiler is not None:
        profiler.enable()
    statements = [0]

    @event.listens_for(runtime.engine, "before_cursor_execute")
    def _count(*_args: object) -> None:
        statements[0] += 1

    cpu_before, task_before, wall_before = time.process_time(), time.thread_time(), time.perf_counter()
    calls_before = _stripe_call_threads_cpu()
    run_tasks(measured)
    cpu = time.process_time() - cpu_before
    # The tasks run on this thread and, grouped, their Stripe calls on the call threads; the emulator
    # serves from threads of its own.
    task_cpu = time.thread_time() - task_before + _stripe_call_threads_cpu() - calls_before
    wall = time.perf_counter() - wall_before
    if profiler is not None:
        profiler.disable()

    with factory() as s:
        statuses = dict(
            s.execute(select(ChargeAttempt.status, func.count()).group_by(ChargeAttempt.status)).all()
        )
        most_payments = s.scalar(
            select(func.count())
            .select_from(Payment)
            .group_by(Payment.invoice_id)
            .order_by(func.count().desc())
        )
    n = len(measured)
    worker_ms = task_cpu / n * 1000
    print(f"charges per message    {args.group}")
    print(f"charges measured       {n}")
    print(f"statuses               {statuses}")
    print(f"SQL per charge         {statements[0] / n:.1f} statements (pool pre-pings not counted)")
    print(f"wall per charge        {wall / n * 1000:.2f} ms")
    print(f"CPU per charge, all    {cpu / n * 1000:.2f} ms (this process, emulator included)")
    print(f"CPU per charge, task   {worker_ms:.2f} ms (task thread + Stripe call threads; goal <= 8 ms)")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile_lines)
    if statuses != {"succeeded": len(attempt_ids)} or (most_payments or 0) > 1:
        print("FAILED: not every charge succeeded exactly once")
        return 1
    return 0


def _stripe_call_threads_cpu() -> float:
    """CPU seconds of this process's Stripe call threads (shared.services.charge_batches), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip().startswith("stripe-call"):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except OSError:
            continue  # the thread ended meanwhile
    return total


if __name__ == "__main__":
    sys.exit(main())

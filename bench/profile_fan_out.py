"""CPU per opened attempt of the batch's fan-out: `offsession charge-due --no-wait` on N due invoices.

Starts a throwaway PostgreSQL 15 and redis-server (the broker: the messages wait there, no worker runs),
seeds N due auto-charge invoices over a few clients with a saved card, and runs the CLI as production
does. Reports the CLI's CPU (its whole process, start-up included, and start-up alone from
`offsession --help`) and PostgreSQL's (the postmaster and its backends, reaped ones included) per
attempt opened, beside the wall time. Rounds repeat on fresh invoices (each run is its own slot).

    .venv/bin/python bench/profile_fan_out.py --invoices 2000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, update  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.bench_batch_limit import cpu_seconds  # noqa: E402
from bench.profile_enqueue import seed_invoices  # noqa: E402
from tests.support.services import PostgresServer, RedisServer  # noqa: E402


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pg, redis = PostgresServer(), RedisServer()
    try:
        database_url = pg.create_database("fanout")
        env = os.environ | {
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": redis.url + "/0",
            "REDIS_URL": redis.url + "/1",
            "SECRET_KEY": "profile-fan-out-secret",
            "OFFSESSION_LOG_FORMAT": "json",
        }
        from shared.adapters.migrate import upgrade

        upgrade(database_url)
        cli = str(ROOT / ".venv" / "bin" / "offsession")
        before = children_cpu_seconds()
        subprocess.run([cli, "--help"], env=env, check=True, capture_output=True)
        startup = children_cpu_seconds() - before
        print(f"{args.invoices} invoices per round; load average {os.getloadavg()[0]:.2f}")
        print(f"CLI start-up alone (offsession --help): {startup * 1000:.0f} ms CPU")
        from shared.domain.models import ChargeAttempt, Invoice

        engine = create_engine(database_url)
        for round_no in range(args.rounds):
            seed_invoices(engine, args.invoices, tag=f"fan{round_no}", auto_charge=True)
            with Session(engine) as session:
                opened_before = session.scalar(select(func.count()).select_from(ChargeAttempt)) or 0
            cli_from, pg_from, wall_from = (
                children_cpu_seconds(),
                cpu_seconds(pg.postmaster_pid),
                time.monotonic(),
            )
            out = subprocess.run(
                [cli, "charge-due", "--no-wait"], env=env, check=True, capture_output=True, text=True
            ).stdout
            wall = time.monotonic() - wall_from
            time.sleep(1.0)  # the CLI's backends exit once it has gone, and are reaped by the postmaster
            cli_cpu, pg_cpu = (
                children_cpu_seconds() - cli_from,
                cpu_seconds(pg.postmaster_pid) - pg_from,
            )
            with Session(engine) as session:
                opened = (
                    session.scalar(select(func.count()).select_from(ChargeAttempt)) or 0
                ) - opened_before
                # Only the next round's invoices are due then.
                session.execute(update(Invoice).values(auto_charge=False))
                session.commit()
            if opened != args.invoices:
                print(f"VIOLATION: {opened} attempts opened for {args.invoices} invoices: {out!r}")
                return 1
            without_startup = (cli_cpu - startup) / opened * 1000
            print(
                f"round {round_no + 1}: {opened} attempts in {wall:.2f} s wall; CPU per attempt: "
                f"CLI {cli_cpu / opened * 1000:.2f} ms ({without_startup:.2f} without start-up), "
                f"PostgreSQL {pg_cpu / opened * 1000:.2f} ms"
            )
        engine.dispose()
        return 0
    finally:
        redis.close()
        pg.stop()


if __name__ == "__main__":
    raise SystemExit(main())

"""Grants per second of the shared Stripe rate budget against the configured rate, for each backend.

Worker threads take tokens for one account as fast as the budget allows; a row per backend shows the
rate achieved and the most grants seen in any one second (at most rate + burst by construction).

    .venv/bin/python bench/bench_ratelimit.py                       # throwaway redis-server + SQLite
    .venv/bin/python bench/bench_ratelimit.py --rate 90 --workers 16 --seconds 5
    .venv/bin/python bench/bench_ratelimit.py --redis-url redis://127.0.0.1:6379/15 \
        --database-url postgresql+psycopg://localhost/offsession_bench
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import redis
from sqlalchemy.orm import sessionmaker

from shared.adapters.database import make_engine
from shared.adapters.migrate import upgrade
from shared.adapters.rate_budget import DatabaseRateBudget, RateBudget, RedisRateBudget
from shared.services.ports import RateBudgetTimeout


@contextmanager
def throwaway_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def run(budget: RateBudget, workers: int, seconds: float) -> tuple[int, float, int]:
    """(grants, seconds elapsed, most grants in any one second)."""
    account = f"acct_bench_{uuid.uuid4().hex[:8]}"
    started = time.time()
    deadline = started + seconds
    grants: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        while (remaining := deadline - time.time()) > 0:
            try:
                budget.acquire(account, timeout=remaining)
            except RateBudgetTimeout:
                return
            with lock:
                grants.append(time.time())

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    grants.sort()
    busiest = max((sum(1 for t in grants if s <= t < s + 1.0) for s in grants), default=0)
    return len(grants), time.time() - started, busiest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20.0, help="STRIPE_RATE_LIMIT to configure")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--redis-url", help="default: a throwaway redis-server")
    parser.add_argument("--database-url", help="default: a throwaway SQLite file")
    args = parser.parse_args()

    print(f"{'backend':<10} {'configured/s':>12} {'burst':>6} {'achieved/s':>10} {'max in 1s':>9}")

    def report(name: str, budget: RedisRateBudget | DatabaseRateBudget) -> None:
        count, elapsed, busiest = run(budget, args.workers, args.seconds)
        print(f"{name:<10} {args.rate:>12.1f} {budget.burst:>6.0f} {count / elapsed:>10.1f} {busiest:>9}")

    with throwaway_redis() if args.redis_url is None else nullcontext(args.redis_url) as url:
        report("redis", RedisRateBudget(redis.Redis.from_url(url), args.rate))

    with tempfile.TemporaryDirectory() as tmp:
        database_url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(database_url)
        engine = make_engine(database_url)
        try:
            report(database_url.split(":", 1)[0], DatabaseRateBudget(sessionmaker(bind=engine), args.rate))
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()

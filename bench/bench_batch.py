"""Charges per second of one due-invoice batch under the shared Stripe rate budget.

Starts a throwaway redis-server and PostgreSQL 15 (or a SQLite file), then the real stack (emulator,
gunicorn, celery workers) with STRIPE_RATE_LIMIT=20 and the budget in Redis, so every worker process
draws from one budget. The emulator answers 429 above 25 requests/s per account. N due auto-charge
invoices over mixed test cards are charged by `offsession charge-due --no-wait`; the table shows the
time to settle, charges/s, the Stripe requests the emulator saw, its 429s and any double charge.

    .venv/bin/python bench/bench_batch.py                                # 1000 invoices, 2 workers x 4
    .venv/bin/python bench/bench_batch.py --invoices 300 --workers 2 --concurrency 4 --database sqlite

Exits 1 when the emulator answered any 429, an invoice was charged twice, a charge did not settle or
ended in another state than its card dictates. The goal of >= 18 charges/s is reported, not enforced:
it depends on the machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

# Run as a script from anywhere: the repo root must be importable for `shared` and `tests.support`.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from shared.domain.models import BatchRun, ChargeAttempt, Client, Invoice, OutboxMessage  # noqa: E402
from shared.services.outbox import TASK_CHARGE_ATTEMPT  # noqa: E402
from tests.support.services import PostgresServer, RedisServer  # noqa: E402
from tests.support.stack import FINAL, Stack, bench_main, measuring  # noqa: E402

STRIPE_RATE_LIMIT = 20
EMULATOR_RATE_LIMIT = 25
GOAL_CHARGES_PER_SECOND = 18.0
# What each test card must end as (a decline is `failed`, never retried within the batch).
CARD_OUTCOMES = {
    "pm_card_visa": "succeeded",
    "pm_card_mastercard": "succeeded",
    "pm_card_chargeDeclined": "failed",
    "pm_card_chargeDeclinedInsufficientFunds": "failed",
    "pm_card_authenticationRequired": "requires_action",
    "pm_card_chargeCustomerFail": "failed",
}
NUMBER_PREFIX = "BENCH-"
OPEN_STATUSES = ("queued", "processing", "unknown")
assert set(FINAL) >= set(CARD_OUTCOMES.values())


@dataclass
class Result:
    invoices: int
    workers: int
    concurrency: int
    database: str
    fan_out_seconds: float = 0.0
    # Where the time goes: launch -> batch row (CLI start-up), launch -> first settled charge, and the
    # span from first to last settled charge (the part the rate budget governs).
    startup_seconds: float = 0.0
    first_published_seconds: float = 0.0
    first_settled_seconds: float = 0.0
    charging_span_seconds: float = 0.0
    seconds: float = 0.0
    settled: int = 0
    requests: int = 0
    rate_limited: int = 0
    rate_limited_after: int = 0
    double_charges: int = 0
    missing_payment_intents: int = 0
    peak_creates_per_second: int = 0
    mismatched: int = 0
    log_dir: Path | None = None
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def charges_per_second(self) -> float:
        return self.settled / self.seconds if self.seconds else 0.0

    @property
    def violations(self) -> list[str]:
        found = []
        if self.rate_limited or self.rate_limited_after:
            found.append(f"{self.rate_limited + self.rate_limited_after} requests answered 429")
        if self.double_charges:
            found.append(f"{self.double_charges} invoices with more than one PaymentIntent")
        if self.settled < self.invoices:
            found.append(f"{self.invoices - self.settled} charges not settled")
        if self.mismatched:
            found.append(f"{self.mismatched} charges ended in another state than their card dictates")
        return found


@contextmanager
def servers(database: str) -> Iterator[tuple[str, RedisServer]]:
    """(database URL, redis server), both thrown away on exit, also on errors and Ctrl-C."""
    with ExitStack() as stack:
        redis = RedisServer()
        stack.callback(redis.close)
        if database == "postgres":
            pg = PostgresServer()
            stack.callback(pg.stop)
            url = pg.create_database("bench")
        else:
            folder = Path(tempfile.mkdtemp(prefix="offsession-bench-"))
            stack.callback(shutil.rmtree, folder, True)
            url = f"sqlite:///{folder / 'bench.db'}"
        yield url, redis


def create_invoices(st: Stack, engine: Engine, count: int) -> dict[str, str]:
    """One client per card (through the API: Stripe customer + SetupIntent), `count` invoices due today
    spread over them round-robin, inserted directly. Returns the expected status per invoice number."""
    clients = {token: st.client_with_card(token)["id"] for token in CARD_OUTCOMES}
    tokens = list(CARD_OUTCOMES)
    expected: dict[str, str] = {}
    with Session(engine) as s, s.begin():
        owners = {token: s.get(Client, client_id) for token, client_id in clients.items()}
        for n in range(count):
            token = tokens[n % len(tokens)]
            number = f"{NUMBER_PREFIX}{n:05d}"
            expected[number] = CARD_OUTCOMES[token]
            s.add(
                Invoice(
                    number=number,
                    client=owners[token],
                    currency="usd",
                    total=1_000 + n,
                    due_date=date.today(),
                    payment_method="online_card",
                    auto_charge=True,
                )
            )
    return expected


def counters(st: Stack) -> dict[str, int]:
    return {k: int(v) for k, v in st.emulator_state()["requests"].items()}


def open_count(engine: Engine, batch_id: int) -> int:
    """Attempts of the batch not yet in a final state."""
    open_ = ", ".join(f"'{status}'" for status in OPEN_STATUSES)  # constants of this file, not input
    query = text(f"select count(*) from charge_attempt where batch_run_id = :b and status in ({open_})")
    with engine.connect() as c:
        return int(c.execute(query, {"b": batch_id}).scalar_one())


def run(args: argparse.Namespace) -> Result:
    result = Result(args.invoices, args.workers, args.concurrency, args.database)
    with servers(args.database) as (database_url, redis):
        st = Stack(
            database_url,
            f"{redis.url}/1",
            workers=args.workers,
            concurrency=args.concurrency,
            # Another db of the same server: the budget must be one for every worker process.
            extra_env={"STRIPE_RATE_LIMIT": str(STRIPE_RATE_LIMIT), "REDIS_URL": f"{redis.url}/2"},
        )
        result.log_dir = st.dir
        with measuring(st) as engine:
            _bench(st, engine, result, args.timeout)
    return result


def _bench(st: Stack, engine: Engine, result: Result, timeout: float) -> None:
    # Clients and cards first, while the emulator has no limit: setup must not spend the batch's seconds.
    expected = create_invoices(st, engine, result.invoices)
    st.faults(rate_limit=EMULATOR_RATE_LIMIT)
    time.sleep(1.0)  # let the shared budget's burst refill after the setup's requests
    before = counters(st)

    started = time.monotonic()
    launched = datetime.now(UTC)
    out = st.cli("charge-due", "--no-wait").stdout
    result.fan_out_seconds = time.monotonic() - started
    match = re.search(r"batch (\d+): (\d+) due, (\d+) queued", out)
    if match is None or int(match.group(3)) != result.invoices:
        raise RuntimeError(f"charge-due did not queue {result.invoices} charges: {out!r}")
    batch_id = int(match.group(1))

    deadline = started + timeout
    while time.monotonic() < deadline and open_count(engine, batch_id):
        time.sleep(0.1)  # fine-grained: the poll's granularity adds to the measured seconds
    result.seconds = time.monotonic() - started
    at_settle = counters(st)
    # Webhook events still being processed may call Stripe after the last charge: count their 429s too.
    time.sleep(3.0)
    state = st.emulator_state()
    after = {k: int(v) for k, v in state["requests"].items()}

    result.requests = at_settle["total"] - before["total"]
    result.rate_limited = at_settle["rate_limited"] - before["rate_limited"]
    result.rate_limited_after = after["rate_limited"] - at_settle["rate_limited"]

    # Through the models, so that SQLite's timestamps come back as datetimes too.
    with Session(engine) as session:
        rows = session.execute(
            select(Invoice.number, ChargeAttempt.status, ChargeAttempt.finished_at, ChargeAttempt.updated_at)
            .join(Invoice, Invoice.id == ChargeAttempt.invoice_id)
            .where(ChargeAttempt.batch_run_id == batch_id)
        ).all()
        batch_started = session.scalars(select(BatchRun.started_at).where(BatchRun.id == batch_id)).one()
        # The fan-out publishes a page's messages only once the whole page is committed.
        first_published = session.scalar(
            select(func.min(OutboxMessage.published_at)).where(
                OutboxMessage.task_name == TASK_CHARGE_ATTEMPT, OutboxMessage.created_at >= batch_started
            )
        )
    settled_at = sorted(_aware(r.finished_at or r.updated_at) for r in rows if r.status in FINAL)
    result.startup_seconds = (_aware(batch_started) - launched).total_seconds()
    if first_published is not None:
        result.first_published_seconds = (_aware(first_published) - launched).total_seconds()
    if settled_at:
        result.first_settled_seconds = (settled_at[0] - launched).total_seconds()
        result.charging_span_seconds = (settled_at[-1] - settled_at[0]).total_seconds()
    result.outcomes = Counter(r.status for r in rows)
    result.settled = sum(n for status, n in result.outcomes.items() if status in FINAL)
    result.mismatched = sum(1 for r in rows if r.status != expected.get(r.number))

    pis = [
        pi
        for pi in state["payment_intents"]
        if str((pi.get("metadata") or {}).get("invoice_number", "")).startswith(NUMBER_PREFIX)
    ]
    per_invoice = Counter(pi["metadata"]["invoice_number"] for pi in pis)
    result.double_charges = sum(1 for n in per_invoice.values() if n > 1)
    result.missing_payment_intents = result.invoices - len(per_invoice)
    # PaymentIntent `created` is in whole seconds: a coarse view of the charge rate the emulator saw.
    result.peak_creates_per_second = max(Counter(int(pi["created"]) for pi in pis).values(), default=0)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the application stores UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def table(r: Result) -> str:
    met = "met" if r.charges_per_second >= GOAL_CHARGES_PER_SECOND else "NOT met"
    steady = (r.settled - 1) / r.charging_span_seconds if r.charging_span_seconds else 0.0
    outcomes = ", ".join(f"{n} {status}" for status, n in sorted(r.outcomes.items())) or "none"
    rows = [
        ("invoices", f"{r.invoices}"),
        ("database", r.database),
        ("workers x concurrency", f"{r.workers} x {r.concurrency}"),
        ("STRIPE_RATE_LIMIT", f"{STRIPE_RATE_LIMIT}/s (budget in Redis)"),
        ("emulator limit", f"{EMULATOR_RATE_LIMIT}/s"),
        ("fan-out (charge-due)", f"{r.fan_out_seconds:.1f} s"),
        ("seconds to settle", f"{r.seconds:.1f} s"),
        ("  CLI start-up", f"{r.startup_seconds:.1f} s (launch to the batch row)"),
        ("  first charge published", f"at {r.first_published_seconds:.1f} s"),
        ("  first charge settled", f"at {r.first_settled_seconds:.1f} s"),
        ("  first to last settled", f"{r.charging_span_seconds:.1f} s ({steady:.1f} charges/s)"),
        ("charges/s", f"{r.charges_per_second:.1f} (goal >= {GOAL_CHARGES_PER_SECOND:.0f}: {met})"),
        ("Stripe requests", f"{r.requests} ({r.requests / max(r.settled, 1):.2f} per charge)"),
        ("requests/s", f"{r.requests / r.seconds:.1f}" if r.seconds else "-"),
        ("peak PI creates in 1 s", f"{r.peak_creates_per_second}"),
        ("429s", f"{r.rate_limited} (+{r.rate_limited_after} after settle)"),
        ("double charges", f"{r.double_charges} (invoices without a PI: {r.missing_payment_intents})"),
        ("outcomes", outcomes + (f"; {r.mismatched} unexpected" if r.mismatched else "")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--invoices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="pool processes per worker")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs on success too")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the batch")
    args = parser.parse_args(argv)
    if args.invoices < 1 or args.workers < 1 or args.concurrency < 1:
        parser.error("--invoices, --workers and --concurrency must be >= 1")
    return bench_main(
        lambda: run(args),
        lambda result: print(table(result)),
        ok="OK: no 429, no double charge",
        keep_logs=args.keep_logs,
    )


if __name__ == "__main__":
    sys.exit(main())

"""A due-invoice batch at Stripe's physical limit, the naive loop beside it, and the charge worker's memory.

Starts a throwaway redis-server and PostgreSQL 15, then the real stack in its production shape
(Procfile): the emulator, gunicorn (where the emulator's webhooks arrive), a `worker-charges` process
(`-Q charges --pool threads -c 64`) and a prefork worker for the webhooks and maintenance queues. The
emulator answers every request after 300 ms and 429 above 100 requests/s; STRIPE_RATE_LIMIT=95 keeps
the shared budget (GCRA, burst 9) just under it. 10,000 due invoices over mixed test cards are charged by
`offsession charge-due --no-wait`. The emulator delivers only the events Offsession acts on, as the
README's webhook endpoint is configured (one event per charge instead of three; --all-webhook-events
delivers every event).

Why 95 gives no 429: the emulator's limiter is a token bucket of 100 tokens refilled at 100/s, checked
when a request arrives. The GCRA grants at most 95 * W + 9 requests in any window of W seconds, so over
any window the bucket loses at most 9 - 5 * W tokens and never falls below ~91; only network delay
bunching more than ~90 extra requests into one arrival burst could empty it.

Then, against the same emulator settings, the loop a user might write instead: one
`stripe.PaymentIntent.create(confirm=True, off_session=True)` after the other. It runs on a sample
(200 invoices by default): the full 10,000 at ~300 ms each would take ~50 minutes.

    .venv/bin/python bench/bench_batch_limit.py                           # 10,000 invoices, naive 200
    .venv/bin/python bench/bench_batch_limit.py --invoices 2000 --naive-sample 50
    .venv/bin/python bench/bench_batch_limit.py --charge-workers 0        # before: prefork on every queue

Figures: charges/s sustained (10th to 90th percentile of settle times) and overall, total time, Stripe
requests the emulator saw, its 429s, double charges, outcomes, the naive loop's charges/s and the ratio,
the charge worker's RSS (all its processes, from /proc) after the first and the last thousand settled
charges, the peak of PostgreSQL connections, the machine's load average, and CPU ms per charge of every
process of the stack, from the launch until every webhook is processed: gunicorn (master and workers),
each Celery worker (a prefork pool's children included), PostgreSQL (the postmaster and every backend),
redis-server, the batch's fan-out (`offsession charge-due`), and apart from them the Stripe stand-in (the
emulator). A process tree's CPU is read from /proc/<pid>/stat: utime + stime of every live process in it,
plus cutime + cstime, which hold the CPU of the children it has reaped (PostgreSQL backends that closed,
pool processes replaced). "Whole-stack CPU per charge" is the sum over the stack without the Stripe
stand-in (what Offsession's design spends; the goal is <= 12 ms) and is printed with it too; the load
generator (this script) is in neither. Goals: >= 95 charges/s sustained, 0 x 429, 0 double charges, whole-
stack CPU <= 12 ms per charge, no RSS growth between the first and the last thousand. Exits 1 on a 429, a
double charge or a charge that did not settle (or settled in another state than its card dictates);
timing, CPU and memory goals are reported, not enforced: they depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Run as a script from anywhere: the repo root (shared, tests.support) and bench/ must be importable.
ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import stripe  # noqa: E402
from bench_batch import NUMBER_PREFIX, _aware, create_invoices  # noqa: E402
from sqlalchemy import select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from shared.domain.models import Card, ChargeAttempt, Client, Invoice  # noqa: E402
from shared.services.webhooks import EVENTS_WITH_WORK  # noqa: E402
from tests.support.services import PostgresServer, RedisServer  # noqa: E402
from tests.support.stack import FINAL, Stack, bench_main, measuring  # noqa: E402

STRIPE_RATE_LIMIT = 95
EMULATOR_RATE_LIMIT = 100
LATENCY_MS = 300
GOAL_CHARGES_PER_SECOND = 95.0
GOAL_STACK_CPU_MS_PER_CHARGE = 12.0
# The names of the measured processes that are not Offsession's stack: the emulator stands in for Stripe.
STRIPE_STAND_IN = "emulator"
# The batch's fan-out runs in the `offsession charge-due` process (shared.services.batch.run_batch).
FAN_OUT = "charge-due"
# Under this RSS growth from the first to the last thousand, memory counts as flat (allocator noise).
RSS_GROWTH_TOLERANCE_MB = 5.0
NAIVE_PREFIX = "NAIVE-"
RSS_SAMPLE_EVERY = 1000
FINAL_SQL = ", ".join(f"'{status}'" for status in FINAL)  # constants, not input


@dataclass
class Result:
    invoices: int
    charge_workers: int
    charge_pool: str
    charge_concurrency: int
    workers: int
    concurrency: int
    seconds: float = 0.0
    first_settled_seconds: float = 0.0
    sustained_per_second: float = 0.0
    settled: int = 0
    requests: int = 0
    rate_limited: int = 0
    double_charges: int = 0
    missing_payment_intents: int = 0
    mismatched: int = 0
    peak_creates_per_second: int = 0
    webhook_lag_seconds: float = 0.0
    webhook_events: int = 0
    # Stored processed by the endpoint: they repeated what the charge had recorded (no drain needed).
    webhooks_already_recorded: int = 0
    # Of those, the ones a drain marked in bulk: stored while their charge was in flight, recorded since.
    webhooks_marked_by_drains: int = 0
    # Drain tasks run (Celery messages on the webhooks queue: one per drain, none per event).
    webhook_drains: int = 0
    webhooks_unprocessed: int = 0
    peak_db_connections: int = 0
    rss_first_mb: float = 0.0
    rss_last_mb: float = 0.0
    # CPU seconds each process of the stack (and its children) spent from the launch until every webhook
    # was processed, by name: the Stack's processes, "postgres", "redis", FAN_OUT.
    cpu: dict[str, float] = field(default_factory=dict)
    # The machine's 1- and 5-minute load averages when the batch had settled: CPU figures on a loaded
    # machine (other work beside the stack) are higher than on a quiet one.
    load_average: tuple[float, float] = (0.0, 0.0)
    naive_charges: int = 0
    naive_seconds: float = 0.0
    naive_outcomes: Counter[str] = field(default_factory=Counter)
    log_dir: Path | None = None
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def charges_per_second(self) -> float:
        return self.settled / self.seconds if self.seconds else 0.0

    def cpu_ms_per_charge(self, *, with_stripe_stand_in: bool) -> float:
        """The stack's CPU per settled charge: every process but the Stripe stand-in, or with it."""
        seconds = sum(v for k, v in self.cpu.items() if with_stripe_stand_in or k != STRIPE_STAND_IN)
        return seconds * 1000 / max(self.settled, 1)

    @property
    def naive_per_second(self) -> float:
        return self.naive_charges / self.naive_seconds if self.naive_seconds else 0.0

    @property
    def violations(self) -> list[str]:
        found = []
        if self.rate_limited:
            found.append(f"{self.rate_limited} requests answered 429")
        if self.double_charges:
            found.append(f"{self.double_charges} invoices with more than one PaymentIntent")
        if self.settled < self.invoices:
            found.append(f"{self.invoices - self.settled} charges not settled")
        if self.mismatched:
            found.append(f"{self.mismatched} charges ended in another state than their card dictates")
        return found


# ---- memory -------------------------------------------------------------------------------------------


def process_tree(root_pid: int) -> list[int]:
    """`root_pid` and every descendant, from /proc (a prefork pool's children included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU time of a process tree, its reaped children included (from /proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(root_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14 to 17 of stat(5); fields[0] here is field 3.
        total += sum(int(value) for value in fields[11:15])
    return total / ticks


def stack_cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """cpu_seconds of each named process tree."""
    return {name: cpu_seconds(pid) for name, pid in roots.items()}


def reaped_children_cpu_seconds() -> float:
    """User + system CPU of this script's children that have exited and been waited for (the CLI)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(root_pid: int) -> float:
    """Resident memory of a process tree in MiB (VmRSS summed; shared pages count in every process)."""
    total_kb = 0
    for pid in process_tree(root_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total_kb += int(match.group(1)) if match else 0
    return total_kb / 1024


# ---- the run ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Result:
    result = Result(
        args.invoices,
        args.charge_workers,
        args.charge_pool,
        args.charge_concurrency,
        args.workers,
        args.concurrency,
    )
    with ExitStack() as cleanup:
        redis = RedisServer()
        cleanup.callback(redis.close)
        postgres = PostgresServer()
        cleanup.callback(postgres.stop)
        database_url = postgres.create_database("bench")
        st = Stack(
            database_url,
            f"{redis.url}/1",
            workers=args.workers,
            concurrency=args.concurrency,
            charge_workers=args.charge_workers,
            charge_pool=args.charge_pool,
            charge_concurrency=args.charge_concurrency,
            # Another db of the same server: one budget for every worker process and thread.
            extra_env={"STRIPE_RATE_LIMIT": str(args.rate_limit), "REDIS_URL": f"{redis.url}/2"},
            # As the README's webhook endpoint is configured: only the events Offsession acts on
            # (one per charge here instead of three).
            emulator_flags=()
            if args.all_webhook_events
            else ("--webhook-events", ",".join(EVENTS_WITH_WORK)),
        )
        result.log_dir = st.dir
        assert redis.process is not None
        roots = {name: proc.pid for name, proc in st.procs.items()}
        roots |= {"postgres": postgres.postmaster_pid, "redis": redis.process.pid}
        with measuring(st) as engine:
            # One delivery per event, as in production: to the endpoint configured with
            # STRIPE_WEBHOOK_SECRET, not once more to the one connecting registered.
            st.unregister_webhook_endpoints()
            _batch(st, engine, result, args, roots)
            _naive_loop(st, engine, result, args.naive_sample)
    return result


def _scalar(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as c:
        return int(c.execute(text(sql), params).scalar_one())


def _batch(
    st: Stack, engine: Engine, result: Result, args: argparse.Namespace, roots: dict[str, int]
) -> None:
    # Clients and cards first, with neither latency nor limit: setup must not spend the batch's seconds.
    expected = create_invoices(st, engine, result.invoices)
    st.faults(rate_limit=EMULATOR_RATE_LIMIT, latency_ms=LATENCY_MS, webhook_delay_ms=args.webhook_delay_ms)
    time.sleep(1.0)  # let the shared budget's burst refill after the setup's requests
    before = st.emulator_state()["requests"]
    # The processes that run the charges: every worker-charges process, else the prefork workers.
    prefix = "charges" if result.charge_workers else "worker"
    charge_pids = [proc.pid for name, proc in st.procs.items() if name.startswith(prefix)]

    cpu_before = stack_cpu_seconds(roots)
    started = time.monotonic()
    launched = datetime.now(UTC)
    fan_out_before = reaped_children_cpu_seconds()
    # The fan-out of 10,000 invoices outlasts the CLI helper's default 2 minutes on a busy machine.
    out = st.cli("charge-due", "--no-wait", timeout=args.timeout).stdout
    fan_out_cpu = reaped_children_cpu_seconds() - fan_out_before
    match = re.search(r"batch (\d+): (\d+) due, (\d+) queued", out)
    if match is None or int(match.group(3)) != result.invoices:
        raise RuntimeError(f"charge-due did not queue {result.invoices} charges: {out!r}")
    batch_id = int(match.group(1))

    settled_sql = f"select count(*) from charge_attempt where batch_run_id = :b and status in ({FINAL_SQL})"
    connections_sql = "select count(*) from pg_stat_activity where datname = current_database()"
    first_mark = min(RSS_SAMPLE_EVERY, result.invoices)
    deadline = started + args.timeout
    settled = 0
    while time.monotonic() < deadline and settled < result.invoices:
        time.sleep(0.2)  # the poll's granularity adds to the measured seconds, at most this much
        settled = _scalar(engine, settled_sql, b=batch_id)
        result.peak_db_connections = max(result.peak_db_connections, _scalar(engine, connections_sql))
        if not result.rss_first_mb and settled >= first_mark:
            result.rss_first_mb = sum(rss_mb(pid) for pid in charge_pids)
    result.seconds = time.monotonic() - started
    result.rss_last_mb = sum(rss_mb(pid) for pid in charge_pids)
    result.load_average = os.getloadavg()[:2]
    settled_at_monotonic = time.monotonic()

    # The webhooks of the last charges are still on their way: wait until the emulator has none left to
    # send, none arrives any more and every stored one is processed (the figure says whether the prefork
    # worker keeps up). The endpoint stores most of them processed at once, so an empty backlog alone
    # does not mean they have all arrived. The stack's CPU is read then: the webhooks are part of the cost.
    unprocessed_sql = "select count(*) from webhook_event where processed_at is null"
    stored_sql = "select count(*) from webhook_event"
    quiet_since, stored = None, -1
    cpu_after = stack_cpu_seconds(roots)
    while time.monotonic() < settled_at_monotonic + args.webhook_timeout:
        stored, stored_before = _scalar(engine, stored_sql), stored
        busy = stored != stored_before or _scalar(engine, unprocessed_sql) > 0
        if not busy and quiet_since is None:
            busy = int(st.emulator_state()["webhooks"]["queued"]) > 0
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
            cpu_after = stack_cpu_seconds(roots)
        elif time.monotonic() - quiet_since >= 2.0:  # nothing left and nothing new arriving
            break
        time.sleep(0.2)
    result.webhook_lag_seconds = (quiet_since or time.monotonic()) - settled_at_monotonic
    result.cpu = {name: cpu_after[name] - cpu_before[name] for name in roots} | {FAN_OUT: fan_out_cpu}
    result.webhooks_unprocessed = _scalar(engine, unprocessed_sql)
    result.webhook_events = _scalar(engine, "select count(*) from webhook_event")
    result.webhooks_already_recorded = _scalar(
        engine, "select count(*) from webhook_event where processed_reason = 'already_recorded'"
    )
    # The endpoint stores a repeat with processed_at = received_at; a drain marks it later.
    result.webhooks_marked_by_drains = _scalar(
        engine,
        "select count(*) from webhook_event where processed_reason = 'already_recorded'"
        " and processed_at > received_at",
    )
    result.webhook_drains = st.log_count("webhook drain: ")
    state = st.emulator_state()
    after = state["requests"]
    result.requests = int(after["total"]) - int(before["total"])
    result.rate_limited = int(after.get("rate_limited", 0)) - int(before.get("rate_limited", 0))

    with Session(engine) as session:
        rows = session.execute(
            select(Invoice.number, ChargeAttempt.status, ChargeAttempt.finished_at, ChargeAttempt.updated_at)
            .join(Invoice, Invoice.id == ChargeAttempt.invoice_id)
            .where(ChargeAttempt.batch_run_id == batch_id)
        ).all()
    result.outcomes = Counter(r.status for r in rows)
    result.settled = sum(n for status, n in result.outcomes.items() if status in FINAL)
    result.mismatched = sum(1 for r in rows if r.status != expected.get(r.number))
    settled_at = sorted(_aware(r.finished_at or r.updated_at) for r in rows if r.status in FINAL)
    if settled_at:
        result.first_settled_seconds = (settled_at[0] - launched).total_seconds()
        # Steady state: the middle 80 % of the settled charges, without the start-up and the tail.
        low, high = len(settled_at) // 10, (len(settled_at) * 9) // 10
        span = (settled_at[high - 1] - settled_at[low]).total_seconds() if high - 1 > low else 0.0
        result.sustained_per_second = (high - 1 - low) / span if span > 0 else 0.0

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


def _naive_loop(st: Stack, engine: Engine, result: Result, sample: int) -> None:
    """What a user might write instead of the batch: one blocking SDK call per invoice, in order, on
    the same emulator settings (latency and limit), on clients and cards of the same kinds."""
    if sample < 1:
        return
    with Session(engine) as session:
        owners = session.execute(
            select(Client.stripe_customer_id, Card.stripe_payment_method_id)
            .join(Card, Card.client_id == Client.id)
            .where(Card.is_default.is_(True), Client.stripe_customer_id.is_not(None))
            .order_by(Client.id)
        ).all()
    stripe.api_key = st.env["STRIPE_API_KEY"]
    stripe.api_base = st.emu
    started = time.monotonic()
    for n in range(sample):
        customer, payment_method = owners[n % len(owners)]
        try:
            intent = stripe.PaymentIntent.create(
                amount=1_000 + n,
                currency="usd",
                customer=customer,
                payment_method=payment_method,
                confirm=True,
                off_session=True,
                allowed_payment_method_types=["card"],
                metadata={"invoice_number": f"{NAIVE_PREFIX}{n:05d}"},
            )
            result.naive_outcomes[str(intent.status)] += 1
        except stripe.CardError as exc:
            result.naive_outcomes[f"declined ({exc.code})"] += 1
    result.naive_seconds = time.monotonic() - started
    result.naive_charges = sample


# ---- the report ---------------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


_CPU_LABELS = {
    "web": "web (gunicorn master + workers)",
    "postgres": "PostgreSQL (postmaster + backends)",
    "redis": "redis-server",
    FAN_OUT: "fan-out (offsession charge-due)",
}


def table(r: Result, args: argparse.Namespace) -> str:
    growth = r.rss_last_mb - r.rss_first_mb
    stack_ms = r.cpu_ms_per_charge(with_stripe_stand_in=False)
    stand_in_ms = r.cpu_ms_per_charge(with_stripe_stand_in=True) - stack_ms
    outcomes = ", ".join(f"{n} {status}" for status, n in sorted(r.outcomes.items())) or "none"
    naive = ", ".join(f"{n} {status}" for status, n in sorted(r.naive_outcomes.items())) or "none"
    ratio = r.sustained_per_second / r.naive_per_second if r.naive_per_second else 0.0
    if r.charge_workers:
        shape = (
            f"{r.charge_workers} x worker-charges ({r.charge_pool} x {r.charge_concurrency}) + "
            f"{r.workers} x prefork {r.concurrency} on webhooks,maintenance"
        )
    else:
        shape = f"{r.workers} x prefork {r.concurrency} on every queue (no charges worker)"
    rows = [
        ("invoices", f"{r.invoices}"),
        ("workers", shape),
        (
            "emulator",
            f"{LATENCY_MS} ms per request, 429 above {EMULATOR_RATE_LIMIT}/s, webhooks "
            f"{args.webhook_delay_ms:.0f} ms after their event",
        ),
        ("STRIPE_RATE_LIMIT", f"{args.rate_limit}/s (budget in Redis)"),
        ("total time", f"{r.seconds:.1f} s (first charge settled at {r.first_settled_seconds:.1f} s)"),
        (
            "charges/s sustained",
            f"{r.sustained_per_second:.1f} (goal >= {GOAL_CHARGES_PER_SECOND:.0f}: "
            f"{_met(r.sustained_per_second >= GOAL_CHARGES_PER_SECOND)})",
        ),
        ("charges/s overall", f"{r.charges_per_second:.1f}"),
        ("Stripe requests", f"{r.requests} ({r.requests / max(r.settled, 1):.2f} per charge)"),
        ("peak PI creates in 1 s", f"{r.peak_creates_per_second}"),
        ("429s", f"{r.rate_limited} (goal 0: {_met(r.rate_limited == 0)})"),
        (
            "double charges",
            f"{r.double_charges} (goal 0: {_met(r.double_charges == 0)}; "
            f"invoices without a PI: {r.missing_payment_intents})",
        ),
        ("outcomes", outcomes + (f"; {r.mismatched} unexpected" if r.mismatched else "")),
        (
            "webhooks",
            f"{r.webhook_events} events ({r.webhooks_already_recorded - r.webhooks_marked_by_drains} stored "
            f"processed at intake, {r.webhooks_marked_by_drains} marked in bulk by a drain: already "
            "recorded; "
            f"{r.webhook_drains} drain messages), all processed {r.webhook_lag_seconds:.1f} s after the last "
            "charge" + (f"; {r.webhooks_unprocessed} NOT processed" if r.webhooks_unprocessed else ""),
        ),
        ("peak PostgreSQL connections", f"{r.peak_db_connections}"),
        (
            "load average",
            f"{r.load_average[0]:.2f} (1 min), {r.load_average[1]:.2f} (5 min) on {os.cpu_count()} CPUs",
        ),
        (
            "whole-stack CPU per charge",
            f"{stack_ms:.1f} ms (goal <= {GOAL_STACK_CPU_MS_PER_CHARGE:.0f}: "
            f"{_met(stack_ms <= GOAL_STACK_CPU_MS_PER_CHARGE)}) at {r.sustained_per_second:.1f} charges/s "
            f"sustained; every process but the Stripe stand-in and the load generator",
        ),
        (
            "  with the Stripe stand-in",
            f"{r.cpu_ms_per_charge(with_stripe_stand_in=True):.1f} ms",
        ),
        (
            "CPU ms per charge",
            ", ".join(
                f"{_CPU_LABELS.get(name, name)} {seconds * 1000 / max(r.settled, 1):.1f}"
                for name, seconds in sorted(r.cpu.items())
                if name != STRIPE_STAND_IN
            )
            + f"; Stripe stand-in (emulator) {stand_in_ms:.1f}",
        ),
        (
            "charge workers' RSS",
            f"{r.rss_first_mb:.1f} MiB after the first thousand, {r.rss_last_mb:.1f} MiB after the last",
        ),
        (
            "RSS growth",
            f"{growth:+.1f} MiB (goal < {RSS_GROWTH_TOLERANCE_MB:.0f}: "
            f"{_met(growth < RSS_GROWTH_TOLERANCE_MB)})",
        ),
        (
            "naive loop",
            f"{r.naive_per_second:.2f} charges/s ({r.naive_charges} invoices' sample in "
            f"{r.naive_seconds:.1f} s: {naive})",
        ),
        (
            "  all invoices at that pace",
            f"{r.invoices / r.naive_per_second / 60:.1f} min" if r.naive_per_second else "-",
        ),
        ("batch / naive", f"{ratio:.1f} x (sustained charges/s)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--naive-sample", type=int, default=200, help="invoices of the naive loop")
    parser.add_argument("--rate-limit", type=float, default=STRIPE_RATE_LIMIT, help="STRIPE_RATE_LIMIT")
    parser.add_argument(
        "--charge-workers", type=int, default=1, help="worker-charges processes (0: prefork on every queue)"
    )
    parser.add_argument("--charge-pool", choices=("threads", "gevent", "prefork"), default="threads")
    parser.add_argument("--charge-concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="prefork worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per prefork worker")
    parser.add_argument(
        "--webhook-delay-ms",
        type=float,
        default=0.0,
        help="the emulator delivers each event this late (0: at once, often before the worker has "
        "recorded the answer that caused it)",
    )
    parser.add_argument(
        "--all-webhook-events",
        action="store_true",
        help="deliver every event (the emulator's default), not only those Offsession acts on",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs on success too")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for the batch")
    parser.add_argument("--webhook-timeout", type=float, default=300.0, help="seconds to wait for webhooks")
    args = parser.parse_args(argv)
    if min(args.invoices, args.workers, args.concurrency, args.charge_concurrency) < 1:
        parser.error("--invoices, --workers, --concurrency and --charge-concurrency must be >= 1")
    return bench_main(
        lambda: run(args),
        lambda result: print(table(result, args)),
        ok="OK: no 429, no double charge, every charge settled as its card dictates",
        keep_logs=args.keep_logs,
    )


if __name__ == "__main__":
    sys.exit(main())

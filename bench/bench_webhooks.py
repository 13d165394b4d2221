"""Webhooks: signed events accepted per second by POST /webhooks/stripe beside a floor, and processed per
second by the Celery workers.

Starts a throwaway redis-server (broker, and the Stripe rate budget) and PostgreSQL 15, then the real
stack (emulator, gunicorn with the Procfile's settings) without workers. Setup charges N attempts
through the emulator the way a worker does (shared.services.charging.run_attempt); a share of them "die" after
Stripe answered and before recording anything, so their events carry news. The emulator only stores
its events (no webhook URL): the bench takes Stripe's own payment_intent.* and charge.* events, adds
duplicates (same event id), shuffles them (Stripe's delivery is unordered) and signs each one with the
webhook secret just before posting it.

1. Accepted: closed-loop client processes, a fresh connection per request (gunicorn's sync workers
   close every connection), post every delivery to /webhooks/stripe; the same bodies go to the floor
   (bench/floor_app.py: one INSERT, one LPUSH, 202) under the same gunicorn settings, in the same run.
   The first deliveries warm both apps up and are not timed.
2. Processed: the workers (the Procfile's `worker`: webhooks and maintenance queues, prefork, one
   process per CPU unless told otherwise) start only once every event is stored; the clock runs from
   their launch until the webhook_event table has no unprocessed row. Events with nothing to apply
   (payment_intent.created, charge.*), and outcomes their attempt had already recorded (the attempts
   whose worker did not die), are stored processed by the endpoint and never reach a worker: the table
   shows them apart, and the rate of the events the workers did process, from their launch
   and from the first to the last (without their start-up), with the CPU each one cost. The endpoint
   publishes no message per event: a drain task when none is pending (a flag in the broker's Redis), and
   each drain takes every pending event batch after batch, recruiting one more worker process while its
   batches are full (shared/services/webhooks.py drain_events).

    .venv/bin/python bench/bench_webhooks.py                    # 1000 attempts (~3,300 deliveries), 8 clients
    .venv/bin/python bench/bench_webhooks.py --attempts 200 --clients 4 --pool threads --concurrency 16

Goals: accepted >= 60% of the floor's throughput; processed >= 300 events/s. They are
reported, not enforced. Exits 1 on a correctness violation only: an answer other than 200 (or 202 from
the floor), an event stored twice or not at all, a duplicate not recognised as one, an event left
unprocessed or in error, an attempt in another state than its card dictates, a payment recorded twice.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

# Run as a script from anywhere: the repo root must be importable for `shared`, `bench` and `tests.support`.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from bench.floor_app import create_scratch_table  # noqa: E402
from shared.adapters.stripe_gateway import StripeGateway  # noqa: E402
from shared.domain.models import ChargeAttempt, Client, Invoice, Payment, WebhookEvent, utcnow  # noqa: E402
from shared.services.charge_requests import request_charge  # noqa: E402
from shared.services.charging import charge_request_for, claim_attempt, run_attempt  # noqa: E402
from shared.services.webhook_intake import ALREADY_RECORDED  # noqa: E402
from tests.support.services import PostgresServer, RedisServer, free_port, wait_for_port  # noqa: E402
from tests.support.signing import stripe_signature  # noqa: E402
from tests.support.stack import BIN, WEBHOOK_SECRET, Stack, bench_main, measuring  # noqa: E402
from tests.support.unit_of_work import InSession  # noqa: E402

# The web command of the Procfile and of tests/support/stack.py; both apps are served alike.
GUNICORN_ARGS = ("-w", "2", "--timeout", "60")
GOAL_SHARE_OF_FLOOR = 0.60
GOAL_PROCESSED_PER_SECOND = 300.0
# What each test card's attempt must end as, whoever records it: the worker or the webhooks.
CARD_OUTCOMES = {
    "pm_card_visa": "succeeded",
    "pm_card_mastercard": "succeeded",
    "pm_card_chargeDeclined": "failed",
    "pm_card_chargeDeclinedInsufficientFunds": "failed",
    "pm_card_authenticationRequired": "requires_action",
}
EVENT_PREFIXES = ("payment_intent.", "charge.")
NUMBER_PREFIX = "BENCH-W-"
SETUP_THREADS = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StoringStack(Stack):
    """The stack with an emulator that stores its events without delivering them: the bench delivers."""

    def start_emulator(self, *flags: str) -> None:
        argv = [str(BIN / "offsession"), "emulator", "--port", str(self.emu_port)]
        self.start("emulator", [*argv, "--webhook-secret", WEBHOOK_SECRET, *flags])
        wait_for_port(self.emu_port, 30)


@contextmanager
def servers() -> Iterator[tuple[str, RedisServer, int]]:
    """(PostgreSQL database URL, redis server, postmaster pid), thrown away on exit, also on errors and
    Ctrl-C."""
    with ExitStack() as stack:
        redis_server = RedisServer()
        stack.callback(redis_server.close)
        pg = PostgresServer()
        stack.callback(pg.stop)
        url = pg.create_database("bench")
        postmaster = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
        yield url, redis_server, postmaster


def cpu_seconds(*, group: int | None = None, parent: int | None = None) -> float:
    """CPU time (user + system) of the live processes of a process group, or of a parent and its
    children. Wall-clock rates swing with whatever else the machine runs; CPU time per event does not
    (much): it shows what each request or event costs, whatever the load."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid, ppid, pgrp = int(entry.name), int(fields[1]), int(fields[2])
        if pgrp == group or (parent is not None and parent in (pid, ppid)):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


# ---- setup: attempts charged on the emulator, its events ---------------------------------------------


def create_attempts(st: Stack, engine: Engine, count: int, unrecorded_share: float) -> dict[str, str]:
    """`count` attempts over the test cards, charged on the emulator; returns the expected final status
    per attempt id. A share of them is charged as by a worker that died before recording the answer."""
    client_ids = {token: st.client_with_card(token)["id"] for token in CARD_OUTCOMES}
    tokens = list(CARD_OUTCOMES)
    expected: dict[str, str] = {}
    with Session(engine, expire_on_commit=False) as session, session.begin():
        owners = {token: session.get_one(Client, client_id) for token, client_id in client_ids.items()}
        for n in range(count):
            token = tokens[n % len(tokens)]
            invoice = Invoice(
                number=f"{NUMBER_PREFIX}{n:06d}",
                client=owners[token],
                currency="usd",
                total=1_000 + n,
                due_date=date.today(),
                payment_method="online_card",
            )
            session.add(invoice)
            session.flush()
            attempt = request_charge(InSession(session), invoice, source="admin", requested_by="bench")
            expected[attempt.id] = CARD_OUTCOMES[token]
    factory = sessionmaker(engine, expire_on_commit=False)
    # The emulator without the rate budget: setup must not spend the measured seconds.
    gateway = StripeGateway("sk_test_emulator", st.emu, WEBHOOK_SECRET)
    ids = list(expected)
    unrecorded = set(random.Random(7).sample(ids, round(len(ids) * unrecorded_share)))

    def charge(attempt_id: str) -> None:
        if attempt_id in unrecorded:
            _charge_without_recording(factory, gateway, attempt_id)
        else:
            run_attempt(factory, gateway, attempt_id, lease_seconds=600, max_transient_retries=3)

    with ThreadPoolExecutor(SETUP_THREADS) as pool:
        list(pool.map(charge, ids))
    return expected


def _charge_without_recording(
    factory: sessionmaker[Session], gateway: StripeGateway, attempt_id: str
) -> None:
    with factory() as session, session.begin():
        claimed = claim_attempt(session, attempt_id, now=utcnow(), lease_seconds=600)
        assert isinstance(claimed, tuple), claimed
        attempt, invoice = claimed
        request = charge_request_for(attempt, invoice)
    gateway.create_offsession_payment_intent(request)  # and the worker dies here


def deliveries(st: Stack, duplicate_share: float, seed: int) -> tuple[list[bytes], int, int]:
    """The emulator's charge events as webhook bodies, with duplicates, shuffled.
    Returns (bodies, distinct events, duplicates)."""
    events = [e for e in st.emulator_state()["events"] if str(e["type"]).startswith(EVENT_PREFIXES)]
    rng = random.Random(seed)
    duplicates = rng.sample(events, round(len(events) * duplicate_share))
    bodies = [json.dumps(event).encode() for event in events + duplicates]
    rng.shuffle(bodies)
    return bodies, len(events), len(duplicates)


# ---- the load generator --------------------------------------------------------------------------------


@dataclass
class Load:
    """One app's run over every delivery: latencies and answers of the timed requests."""

    app: str
    clients: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    duplicates_answered: int = 0
    # CPU seconds over every delivery (warm-up included): (the app's processes, PostgreSQL's).
    cpu: tuple[float, float] = (0.0, 0.0)

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Nearest rank; 0 for no values."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5))) - 1]


def post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    """One signed POST on its own connection; returns the status and the answer."""
    headers = {
        "Content-Type": "application/json",
        "Connection": "close",
        # Signed now: the endpoint refuses a timestamp older than its tolerance.
        "Stripe-Signature": stripe_signature(body, WEBHOOK_SECRET),
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _client(
    port: int,
    path: str,
    bodies: list[bytes],
    next_index: Synchronized,  # type: ignore[type-arg]
    start_at: float,
    out: Connection,
) -> None:
    """One closed-loop client: take the next delivery, POST it, wait for the answer, until none is left."""
    timed: list[tuple[float, float]] = []
    statuses: Counter[int] = Counter()
    duplicates = 0
    while time.monotonic() < start_at:
        time.sleep(0.001)
    while True:
        with next_index.get_lock():
            index = next_index.value
            next_index.value += 1
        if index >= len(bodies):
            break
        began = time.monotonic()
        status, answer = post(port, path, bodies[index])
        timed.append((began, time.monotonic()))
        statuses[status] += 1
        if status == 200 and json.loads(answer).get("duplicate") is True:
            duplicates += 1
    out.send((timed, dict(statuses), duplicates))
    out.close()


def load(app: str, port: int, path: str, bodies: list[bytes], clients: int, warmup: int) -> Load:
    """`clients` processes post every body once; the first `warmup` are posted first, and not timed."""
    result = Load(app, clients)
    for phase, share in (("warmup", bodies[:warmup]), ("timed", bodies[warmup:])):
        ctx = multiprocessing.get_context("fork")
        next_index = ctx.Value("q", 0)
        start_at = time.monotonic() + 0.5  # every process forked and waiting before the first request
        pipes, procs = [], []
        for _ in range(clients):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_client, args=(port, path, share, next_index, start_at, sender))
            proc.start()
            sender.close()
            pipes.append(receiver)
            procs.append(proc)
        first, last = float("inf"), 0.0
        for receiver, proc in zip(pipes, procs, strict=True):
            timed, statuses, duplicates = receiver.recv()
            proc.join()
            result.statuses.update(statuses)
            result.duplicates_answered += duplicates
            if phase == "timed" and timed:
                result.latencies_ms.extend((end - began) * 1000 for began, end in timed)
                first, last = min(first, timed[0][0]), max(last, timed[-1][1])
        if phase == "timed":
            result.seconds = max(last - first, 0.0)
    return result


# ---- the run -------------------------------------------------------------------------------------------


@dataclass
class Result:
    attempts: int
    workers: int
    concurrency: int
    pool: str
    distinct_events: int = 0
    duplicates_sent: int = 0
    setup_seconds: float = 0.0
    floor: Load | None = None
    webhooks: Load | None = None
    stored: int = 0
    stored_distinct: int = 0
    processed: int = 0
    stored_processed: int = 0
    # Of those: events that repeated what their attempt had recorded (shared/services/webhook_intake.py).
    already_recorded: int = 0
    errors: int = 0
    unprocessed: int = 0
    launch_to_done_seconds: float = 0.0
    first_to_last_seconds: float = 0.0
    stripe_requests: int = 0
    types: Counter[str] = field(default_factory=Counter)
    mismatched: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    double_payments: int = 0
    missing_payments: int = 0
    log_dir: Path | None = None
    # CPU seconds of the workers and of PostgreSQL from a tenth of the events processed on, and the
    # events left to process at that point.
    processing_cpu: tuple[float, float, int] = (0.0, 0.0, 0)

    @property
    def deliveries(self) -> int:
        return self.distinct_events + self.duplicates_sent

    @property
    def drained_per_second(self) -> float:
        """Every stored event over the time from the workers' launch until none is left unprocessed."""
        return self.stored / self.launch_to_done_seconds if self.launch_to_done_seconds else 0.0

    @property
    def processed_per_second(self) -> float:
        return self.processed / self.launch_to_done_seconds if self.launch_to_done_seconds else 0.0

    @property
    def steady_per_second(self) -> float:
        return (self.processed - 1) / self.first_to_last_seconds if self.first_to_last_seconds else 0.0

    @property
    def violations(self) -> list[str]:
        found = []
        for load_ in (self.floor, self.webhooks):
            if load_ is None:
                continue
            wanted = 202 if load_.app == "floor" else 200
            wrong = sum(n for status, n in load_.statuses.items() if status != wanted)
            if wrong:
                found.append(f"{wrong} {load_.app} answers other than {wanted}: {dict(load_.statuses)}")
        if self.stored != self.distinct_events or self.stored_distinct != self.distinct_events:
            found.append(f"{self.stored} events stored for {self.distinct_events} distinct events sent")
        if self.webhooks is not None and self.webhooks.duplicates_answered != self.duplicates_sent:
            found.append(
                f"{self.webhooks.duplicates_answered} answers said duplicate for {self.duplicates_sent} sent"
            )
        if self.unprocessed or self.errors:
            found.append(f"{self.unprocessed} events unprocessed, {self.errors} with an error")
        if self.mismatched:
            found.append(f"{self.mismatched} attempts ended in another state than their card dictates")
        if self.double_payments or self.missing_payments:
            found.append(f"{self.double_payments} payments recorded twice, {self.missing_payments} missing")
        return found


def run(args: argparse.Namespace) -> Result:
    result = Result(args.attempts, args.workers, args.concurrency, args.pool)
    with servers() as (database_url, redis_server, postmaster):
        st = StoringStack(
            database_url,
            f"{redis_server.url}/1",
            workers=0,  # started once every event is stored
            concurrency=args.concurrency,
            lease_seconds=300,
            # The rate budget in Redis, as in production: the refetches of events with news draw on it.
            extra_env={"REDIS_URL": f"{redis_server.url}/2"},
        )
        result.log_dir = st.dir
        with measuring(st) as engine:
            # Else the emulator delivers the setup's events itself: the bench's would be duplicates.
            st.unregister_webhook_endpoints()
            _bench(st, engine, postmaster, result, args)
    return result


def _bench(st: Stack, engine: Engine, postmaster: int, result: Result, args: argparse.Namespace) -> None:
    started = time.monotonic()
    expected = create_attempts(st, engine, args.attempts, args.unrecorded_share)
    bodies, result.distinct_events, result.duplicates_sent = deliveries(st, args.duplicate_share, args.seed)
    result.setup_seconds = time.monotonic() - started
    warmup = min(args.warmup, len(bodies) // 10)

    create_scratch_table(st.database_url)
    floor_port = free_port()
    floor_argv = [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{floor_port}", *GUNICORN_ARGS]
    st.start("floor", [*floor_argv, "bench.floor_app:app"])
    wait_for_port(floor_port, 30)
    floor_group, web_group = st.procs["floor"].pid, st.procs["web"].pid
    cpu = cpu_seconds(group=floor_group), cpu_seconds(parent=postmaster)
    result.floor = load("floor", floor_port, "/", bodies, args.clients, warmup)
    result.floor.cpu = (cpu_seconds(group=floor_group) - cpu[0], cpu_seconds(parent=postmaster) - cpu[1])
    st.kill("floor", signal.SIGTERM)
    cpu = cpu_seconds(group=web_group), cpu_seconds(parent=postmaster)
    result.webhooks = load("webhooks", st.web_port, "/webhooks/stripe", bodies, args.clients, warmup)
    result.webhooks.cpu = (cpu_seconds(group=web_group) - cpu[0], cpu_seconds(parent=postmaster) - cpu[1])

    with engine.connect() as conn:
        result.stored = conn.execute(select(func.count()).select_from(WebhookEvent)).scalar_one()
        result.stored_distinct = conn.execute(
            select(func.count(func.distinct(WebhookEvent.stripe_event_id)))
        ).scalar_one()
    before = int(st.emulator_state()["requests"]["total"])

    to_process = _open_events(engine)
    launched = datetime.now(UTC)
    launched_at = time.monotonic()
    for index in range(args.workers):
        start_worker(st, index, args.pool, args.concurrency, args.prefetch_multiplier)
    deadline = launched_at + args.timeout
    groups = [st.procs[f"worker{index}"].pid for index in range(args.workers)]
    cpu_from: tuple[float, float, int] | None = None
    while time.monotonic() < deadline and (left := _open_events(engine)):
        if cpu_from is None and left <= to_process * 0.9:
            # From a tenth processed on: the workers' start-up (imports, forks, each pool process's first
            # connections) is not counted.
            cpu_from = sum(cpu_seconds(group=g) for g in groups), cpu_seconds(parent=postmaster), left
        time.sleep(0.05)  # fine-grained: the poll's granularity adds to the measured seconds
    result.launch_to_done_seconds = time.monotonic() - launched_at
    if cpu_from is not None:
        workers_cpu = sum(cpu_seconds(group=g) for g in groups) - cpu_from[0]
        result.processing_cpu = (workers_cpu, cpu_seconds(parent=postmaster) - cpu_from[1], cpu_from[2])
    result.stripe_requests = int(st.emulator_state()["requests"]["total"]) - before
    _check(engine, expected, result, launched)


def start_worker(st: Stack, index: int, pool: str, concurrency: int, prefetch: int | None) -> None:
    """A worker of the Procfile's `worker` line: the webhooks and maintenance queues."""
    name = f"worker{index}"
    argv = [str(BIN / "celery"), "-A", "worker", "worker", "--loglevel", "INFO", "-Q", "webhooks,maintenance"]
    pool_options = ["--pool", pool, "-c", str(concurrency)]
    if prefetch is not None:
        pool_options += ["--prefetch-multiplier", str(prefetch)]
    st.start(
        name, [*argv, *pool_options, "-n", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    )


def _open_events(engine: Engine) -> int:
    """Events no worker has finished yet (an event in error counts while it may still be retried)."""
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.processed_at.is_(None))
        ).scalar_one()


def _check(engine: Engine, expected: dict[str, str], result: Result, launched: datetime) -> None:
    with Session(engine) as session:
        rows = session.execute(
            select(
                WebhookEvent.type,
                WebhookEvent.processed_at,
                WebhookEvent.processing_attempts,
                WebhookEvent.error,
                WebhookEvent.processed_reason,
            )
        ).all()
        result.types = Counter(row.type for row in rows)
        # A worker's claim counts an attempt; an event with nothing to apply is stored processed, none.
        done = sorted(
            _aware(row.processed_at)
            for row in rows
            if row.processed_at is not None and row.processing_attempts > 0
        )
        result.processed = len(done)
        result.stored_processed = sum(
            1 for row in rows if row.processed_at is not None and row.processing_attempts == 0
        )
        result.already_recorded = sum(1 for row in rows if row.processed_reason == ALREADY_RECORDED)
        result.unprocessed = sum(1 for row in rows if row.processed_at is None)
        result.errors = sum(1 for row in rows if row.error)
        if len(done) > 1:
            result.first_to_last_seconds = (done[-1] - done[0]).total_seconds()
        statuses = {
            row.id: row.status for row in session.execute(select(ChargeAttempt.id, ChargeAttempt.status))
        }
        result.outcomes = Counter(statuses.get(attempt_id, "missing") for attempt_id in expected)
        result.mismatched = sum(
            1 for attempt_id, want in expected.items() if statuses.get(attempt_id) != want
        )
        per_intent = Counter(
            session.scalars(
                select(Payment.stripe_payment_intent_id).where(
                    Payment.stripe_payment_intent_id.is_not(None), Payment.amount > 0
                )
            ).all()
        )
        succeeded = sum(1 for want in expected.values() if want == "succeeded")
        result.double_payments = sum(1 for n in per_intent.values() if n > 1)
        result.missing_payments = max(succeeded - len(per_intent), 0)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def table(r: Result) -> str:
    assert r.floor is not None and r.webhooks is not None
    floor_rate, accepted_rate = r.floor.requests_per_second, r.webhooks.requests_per_second
    share = accepted_rate / floor_rate if floor_rate else 0.0
    accepted_met = "met" if share >= GOAL_SHARE_OF_FLOOR else "NOT met"
    drained_met = "met" if r.drained_per_second >= GOAL_PROCESSED_PER_SECOND else "NOT met"
    processed_met = "met" if r.processed_per_second >= GOAL_PROCESSED_PER_SECOND else "NOT met"
    types = ", ".join(f"{n} {kind}" for kind, n in sorted(r.types.items()))
    outcomes = ", ".join(f"{n} {status}" for status, n in sorted(r.outcomes.items()))
    rows = [
        ("attempts", f"{r.attempts} ({outcomes}; {r.mismatched} unexpected)"),
        ("deliveries", f"{r.deliveries} ({r.distinct_events} events + {r.duplicates_sent} duplicates)"),
        ("setup", f"{r.setup_seconds:.1f} s"),
        ("gunicorn (both apps)", " ".join(GUNICORN_ARGS)),
        ("client processes", f"{r.webhooks.clients} (a connection per request)"),
        ("floor", f"{floor_rate:.0f} req/s, {_latencies(r.floor)}"),
        ("webhooks accepted", f"{accepted_rate:.0f} events/s, {_latencies(r.webhooks)}"),
        (
            "  CPU per request",
            f"floor {_cpu(r.floor, r.deliveries)}; webhooks {_cpu(r.webhooks, r.deliveries)}",
        ),
        ("  share of the floor", f"{share:.0%} (goal >= {GOAL_SHARE_OF_FLOOR:.0%}: {accepted_met})"),
        ("stored", f"{r.stored} events ({r.webhooks.duplicates_answered} answered as duplicates)"),
        ("  by type", types),
        ("workers x concurrency", f"{r.workers} x {r.concurrency} ({r.pool}), started after acceptance"),
        (
            "processed (every event)",
            f"{r.stored} stored events all processed {r.launch_to_done_seconds:.1f} s after the workers' "
            f"launch: {r.drained_per_second:.0f}/s (goal >= {GOAL_PROCESSED_PER_SECOND:.0f}: {drained_met})",
        ),
        (
            "  by the workers",
            f"{r.processed} events in {r.launch_to_done_seconds:.1f} s from their launch: "
            f"{r.processed_per_second:.0f}/s (goal >= {GOAL_PROCESSED_PER_SECOND:.0f}: {processed_met})",
        ),
        ("  CPU per event", _processing_cpu(r)),
        ("  first to last", f"{r.first_to_last_seconds:.1f} s: {r.steady_per_second:.0f}/s (no start-up)"),
        (
            "  stored processed",
            f"{r.stored_processed} events (no message, no task): {r.already_recorded} repeating what their "
            f"attempt had recorded, {r.stored_processed - r.already_recorded} with nothing to apply",
        ),
        ("Stripe requests", f"{r.stripe_requests} while processing (refetches of events with news)"),
        ("unprocessed / errors", f"{r.unprocessed} / {r.errors}"),
        ("payments", f"{r.double_payments} recorded twice, {r.missing_payments} missing"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cpu(load_: Load, requests: int) -> str:
    app, database = (1000 * seconds / requests for seconds in load_.cpu)
    return f"{app:.2f} ms app + {database:.2f} ms PostgreSQL"


def _processing_cpu(r: Result) -> str:
    workers, database, events = r.processing_cpu
    if not events:
        return "-"
    return f"{1000 * workers / events:.2f} ms workers + {1000 * database / events:.2f} ms PostgreSQL"


def _latencies(load_: Load) -> str:
    return f"p50 {load_.percentile(50):.1f} ms, p99 {load_.percentile(99):.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attempts", type=int, default=1000, help="charge attempts (about 3 events each)")
    parser.add_argument("--duplicate-share", type=float, default=0.1, help="events delivered twice")
    parser.add_argument(
        "--unrecorded-share", type=float, default=0.02, help="attempts whose worker died before recording"
    )
    parser.add_argument("--clients", type=int, default=8, help="load generator processes")
    parser.add_argument("--warmup", type=int, default=100, help="deliveries posted first, not timed")
    parser.add_argument("--workers", type=int, default=1, help="celery worker processes")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=os.cpu_count() or 1,
        help="pool processes or threads per worker (default: celery's, one per CPU)",
    )
    parser.add_argument("--pool", choices=("prefork", "threads"), default="prefork", help="the workers' pool")
    parser.add_argument(
        "--prefetch-multiplier", type=int, default=None, help="the workers' (default: celeryconfig's, 1)"
    )
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--keep-logs", action="store_true", help="keep the stack's logs on success too")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the processing")
    args = parser.parse_args(argv)
    if min(args.attempts, args.clients, args.workers, args.concurrency) < 1:
        parser.error("--attempts, --clients, --workers and --concurrency must be >= 1")
    if not (0 <= args.duplicate_share <= 1 and 0 <= args.unrecorded_share <= 1):
        parser.error("--duplicate-share and --unrecorded-share are fractions from 0 to 1")
    return bench_main(
        lambda: run(args),
        lambda result: print(table(result)),
        ok="OK: every event stored once and processed, no attempt off its card's outcome, no double payment",
        keep_logs=args.keep_logs,
    )


if __name__ == "__main__":
    sys.exit(main())

"""Chaos run: prove with figures that Offsession never charges twice and never loses a charge.

    .venv/bin/python bench/chaos.py [--invoices 1000] [--clicks 50] [--kill-every 4] [--short]

Starts the real processes on loopback (redis-server, PostgreSQL, the Stripe emulator, gunicorn, two
Celery workers and beat), then, with the emulator's faults on (20% 5xx, 10% drop-after-commit, 50-500 ms
latency, 25 req/s, every webhook twice and shuffled):

- charges an N-invoice batch (`offsession charge-due --no-wait`) while admins click "Charge buyer" on
  other invoices, some twice at once;
- SIGKILLs a worker every few seconds and restarts it, stops redis-server for a while, restarts
  PostgreSQL;
- delivers every event the emulator holds three times more, shuffled, plus forged ones;
- turns the faults off and runs the janitor until nothing is queued, processing or unknown.

Everything runs on the default configuration (charge lease, recovery sweep, janitor): what users run.
Then it compares the database with the emulator, prints a table of figures, among them how long the
charges a killed worker held took to reach their final state, and exits 1 when a violation count is
not 0 or such a charge took longer than a minute (2 when the run itself could not complete). Every
process it started is stopped, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, bindparam, create_engine, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from shared.domain.models import Invoice  # noqa: E402
from tests.support.services import PG_BIN, PostgresServer, RedisServer  # noqa: E402
from tests.support.signing import signed, stripe_signature  # noqa: E402
from tests.support.stack import BIN, WEBHOOK_SECRET, Stack, http  # noqa: E402

# The card mix: what each test card must end as.
CARDS: dict[str, str] = {
    "pm_card_visa": "succeeded",
    "pm_card_mastercard": "succeeded",
    "pm_card_chargeDeclined": "failed",
    "pm_card_chargeDeclinedInsufficientFunds": "failed",
    "pm_card_authenticationRequired": "requires_action",
    "pm_card_chargeCustomerFail": "failed",
}
OPEN = ("queued", "processing", "unknown")
FAULTS_ON: dict[str, Any] = {
    "error_rate": 0.2,
    "drop_after_commit_rate": 0.1,
    "latency_ms": 50,
    "latency_jitter_ms": 450,
    "rate_limit": 25,
    "webhook_duplicate_rate": 1.0,
    "webhook_reorder": True,
}
FAULTS_OFF: dict[str, Any] = {
    "error_rate": 0.0,
    "drop_after_commit_rate": 0.0,
    "latency_ms": 0,
    "latency_jitter_ms": 0,
    "rate_limit": None,
    "webhook_duplicate_rate": 0.0,
    "webhook_reorder": False,
}
FORGED_PREFIX = "evt_forged_"
# A charge whose worker was killed must be final within this of the kill (on the default configuration).
SETTLE_AFTER_KILL_BOUND_S = 60.0
FINAL_ACTIONS = ("charge.succeeded", "charge.failed", "charge.requires_action", "charge.canceled")


@dataclass(frozen=True)
class Profile:
    """The scenario's sizes and its timeline, in seconds from the start of the chaos phase."""

    invoices: int
    clicks: int
    kill_every: float
    kill_until: float
    redis_down_at: float
    redis_down_for: float
    pg_restart_at: float | None
    chaos_for: float  # clicks are spread over this; the phase lasts at least this long
    clients_per_card: int
    concurrency: int
    quiet_timeout: float
    settle_timeout: float
    forged_per_kind: int


FULL = Profile(
    invoices=1000,
    clicks=50,
    kill_every=4,
    kill_until=40,
    redis_down_at=45,
    redis_down_for=30,
    pg_restart_at=90,
    chaos_for=100,
    clients_per_card=5,
    concurrency=4,
    quiet_timeout=300,
    settle_timeout=600,
    forged_per_kind=10,
)
# The test-suite variant: two worker kills while the batch runs, then the broker and database outages.
SHORT = Profile(
    invoices=60,
    clicks=10,
    kill_every=4,
    kill_until=5,
    redis_down_at=8,
    redis_down_for=5,
    pg_restart_at=15,
    chaos_for=18,
    clients_per_card=1,
    concurrency=4,
    quiet_timeout=60,
    settle_timeout=240,
    forged_per_kind=3,
)


class Interrupted(Exception):
    """SIGTERM: leave through the same cleanup as Ctrl-C."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# Servers the script owns besides the Stack
# ---------------------------------------------------------------------------------------------------------


class DurableRedis(RedisServer):
    """redis-server as README's production row has it (AOF on, noeviction): a restart keeps the queues.

    tests.support's RedisServer keeps nothing on disk, which would turn a restart into a broker losing
    every message; that case is the janitor's too, but it is not the outage this scenario is about.
    """

    def start(self) -> None:
        argv = self._argv
        argv[argv.index("--appendonly") + 1] = "yes"
        if "--maxmemory-policy" not in argv:
            argv += ["--maxmemory-policy", "noeviction", "--appendfsync", "everysec"]
        super().start()


def restart_postgres(pg: PostgresServer) -> float:
    """`pg_ctl restart -m fast` as the postgres user, as PostgresServer starts it; returns seconds taken."""
    started = time.monotonic()
    # -l again: without it the new postmaster would write into our pipe and pg_ctl's caller would hang.
    pg._run(PG_BIN / "pg_ctl", "-D", pg.dir / "data", "-l", pg.dir / "log", "-m", "fast", "-w", "restart")
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------------------
# What the run records
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Click:
    invoice_id: int
    double: bool
    same_key: bool
    answers: list[tuple[int, Any]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # how long each answer took


@dataclass
class Record:
    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)
    clicks: list[Click] = field(default_factory=list)
    kills: int = 0
    # Charges a killed worker was processing: attempt id -> when it was killed (UTC, as the audit trail).
    orphans: dict[str, datetime] = field(default_factory=dict)
    redis_down_s: float = 0.0
    pg_restart_s: float | None = None
    batch_line: str = ""
    redelivered: Counter[int] = field(default_factory=Counter)
    forged: Counter[str] = field(default_factory=Counter)
    forged_accepted: list[str] = field(default_factory=list)
    reconcile_runs: int = 0
    reconcile_failures: int = 0
    settle_s: float | None = None
    # Seconds from the end of the chaos phase until no charge was open any more (first seen).
    closed_after_chaos_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic() - self.started

    def saw_open(self, count: int) -> None:
        if count == 0 and self.closed_after_chaos_s is None and "chaos_end" in self.marks:
            self.closed_after_chaos_s = time.monotonic() - self.started - self.marks["chaos_end"]


def post(
    st: Stack, path: str, *, raw: bytes | None = None, headers: dict[str, str] | None = None, api: bool = True
) -> tuple[int, Any]:
    """One request; a connection error is status 0 (what an admin's browser would show as an error)."""
    try:
        if api:
            return st.api("POST", path, headers=headers)
        return http("POST", st.base + path, headers=headers, raw=raw)
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


# ---------------------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------------------


def make_clients(st: Stack, per_card: int) -> dict[int, str]:
    """Clients with saved cards (through the API, so the emulator has their customers). id -> card token."""
    clients: dict[int, str] = {}
    for token in CARDS:
        for _ in range(per_card):
            clients[st.client_with_card(token)["id"]] = token
    return clients


def insert_invoices(
    engine: Engine, clients: dict[int, str], prefix: str, count: int, auto: bool
) -> list[int]:
    """Invoices written straight into the database (as test_batch_stack does), due today."""
    ids = list(clients)
    with Session(engine) as s, s.begin():
        rows = [
            Invoice(
                number=f"{prefix}-{n:05d}",
                client_id=ids[n % len(ids)],
                currency="usd",
                total=1_000 + n,
                due_date=date.today(),
                payment_method="online_card",
                auto_charge=auto,
            )
            for n in range(count)
        ]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


# ---------------------------------------------------------------------------------------------------------
# The chaos phase
# ---------------------------------------------------------------------------------------------------------


def click(st: Stack, rec: Record, c: Click, key: str | None) -> None:
    """One admin click; a 5xx or a dropped connection is clicked again, as an admin would."""
    headers = {"Idempotency-Key": key} if key else None
    for _ in range(6):
        started = time.monotonic()
        status, body = post(st, f"/api/invoices/{c.invoice_id}/charges", headers=headers)
        with rec.lock:
            c.answers.append((status, body))
            c.seconds.append(time.monotonic() - started)
        if status and status < 500:
            return
        time.sleep(1.0)


def schedule(profile: Profile, click_invoices: list[int], rng: random.Random) -> list[tuple[float, str, Any]]:
    """The timeline: (seconds into the chaos phase, action, argument)."""
    events: list[tuple[float, str, Any]] = []
    t, n = 1.0, 0
    while t <= profile.kill_until:
        events.append((t, "kill", n % 2))  # the two workers take turns
        t += profile.kill_every
        n += 1
    events.append((profile.redis_down_at, "redis_down", None))
    events.append((profile.redis_down_at + profile.redis_down_for, "redis_up", None))
    if profile.pg_restart_at is not None:
        events.append((profile.pg_restart_at, "pg_restart", None))
    posts, i = 0, 0
    clicks: list[Click] = []
    while posts < profile.clicks and i < len(click_invoices):
        double = profile.clicks - posts >= 2 and i % 3 == 1
        clicks.append(Click(click_invoices[i], double=double, same_key=double and i % 2 == 0))
        posts += 2 if double else 1
        i += 1
    for k, c in enumerate(clicks):
        at = profile.chaos_for * (k + 0.5) / len(clicks) + rng.uniform(-0.4, 0.4)
        events.append((max(0.2, at), "click", c))
    return sorted(events, key=lambda e: e[0])


def kill_worker(st: Stack, engine: Engine, rec: Record, name: str) -> int:
    """SIGKILL a worker with its pool processes, note the charges they were processing (their lease
    names the process holding them), restart it. Returns how many charges it held."""
    pids = st.pids(name)
    st.kill(name)
    killed_at = datetime.now(UTC)
    st.start_worker(int(name.removeprefix("worker")))
    rec.kills += 1
    try:
        with engine.connect() as c:
            held = c.execute(
                text("select id, lease_owner from charge_attempt where status = 'processing'")
            ).all()
    except Exception as exc:  # PostgreSQL restarting: these charges go unmeasured, not unchecked
        log(f"  could not read the killed worker's charges: {exc}")
        return 0
    mine = [r.id for r in held if r.lease_owner and int(r.lease_owner.split("/")[1]) in pids]
    for attempt_id in mine:
        rec.orphans.setdefault(attempt_id, killed_at)
    return len(mine)


def settle_after_kill(engine: Engine, rec: Record) -> tuple[list[float], list[str]]:
    """Seconds from each kill to the first final state of a charge the killed worker held, and the
    charges that never got there."""
    if not rec.orphans:
        return [], []
    with engine.connect() as c:
        rows = c.execute(
            text(
                "select charge_attempt_id, created_at from audit_event where charge_attempt_id in :ids "
                "and action in :final order by created_at"
            ).bindparams(bindparam("ids", expanding=True), bindparam("final", expanding=True)),
            {"ids": list(rec.orphans), "final": list(FINAL_ACTIONS)},
        ).all()
    first: dict[str, datetime] = {}
    for attempt_id, at in rows:
        at = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        if at >= rec.orphans[attempt_id]:
            first.setdefault(attempt_id, at)
    seconds = [(first[a] - killed).total_seconds() for a, killed in rec.orphans.items() if a in first]
    return sorted(seconds), sorted(a for a in rec.orphans if a not in first)


def run_chaos(
    st: Stack,
    engine: Engine,
    redis: RedisServer,
    pg: PostgresServer,
    profile: Profile,
    rec: Record,
    click_invoices: list[int],
    rng: random.Random,
) -> None:
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="click")
    pending: list[Future[None]] = []
    t0 = down_since = time.monotonic()
    try:
        for at, action, arg in schedule(profile, click_invoices, rng):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if action == "kill":
                name = f"worker{arg}"
                held = kill_worker(st, engine, rec, name)
                log(f"  t={at:5.1f}s SIGKILLed {name} holding {held} charge(s), restarted")
            elif action == "redis_down":
                redis.stop()
                down_since = time.monotonic()
                log(f"  t={at:5.1f}s redis-server stopped")
            elif action == "redis_up":
                redis.start()
                rec.redis_down_s = time.monotonic() - down_since
                log(f"  t={at:5.1f}s redis-server back after {rec.redis_down_s:.1f}s")
            elif action == "pg_restart":
                rec.pg_restart_s = restart_postgres(pg)
                log(f"  t={at:5.1f}s PostgreSQL restarted in {rec.pg_restart_s:.1f}s")
            elif action == "click":
                c: Click = arg
                rec.clicks.append(c)
                key = f"chaos-{c.invoice_id}-{os.urandom(4).hex()}" if c.same_key else None
                pending.append(pool.submit(click, st, rec, c, key))
                if c.double:  # the second click of a double-click, at the same moment
                    pending.append(pool.submit(click, st, rec, c, key))
        left = t0 + profile.chaos_for - time.monotonic()
        if left > 0:
            time.sleep(left)
        for f in pending:
            f.result(timeout=120)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------
# Webhooks: genuine ones again, and forged ones
# ---------------------------------------------------------------------------------------------------------


def deliver(st: Stack, payload: bytes, headers: dict[str, str]) -> int:
    return post(st, "/webhooks/stripe", raw=payload, headers=headers, api=False)[0]


def redeliver_all(st: Stack, rec: Record, events: list[dict[str, Any]], rng: random.Random) -> None:
    """Every event three more times, shuffled, each freshly signed as Stripe signs a redelivery."""
    batch = [e for e in events for _ in range(3)]
    rng.shuffle(batch)

    def one(event: dict[str, Any]) -> int:
        payload, headers = signed(event, WEBHOOK_SECRET)
        return deliver(st, payload, headers)

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook") as pool:
        for status in pool.map(one, batch):
            rec.redelivered[status] += 1


def forgeries(
    base: dict[str, Any], n: int, now: int, rng: random.Random
) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """One delivery per kind of forgery, all claiming that ``base``'s PaymentIntent succeeded."""
    fake = json.loads(json.dumps(base))
    fake["type"] = "payment_intent.succeeded"
    obj = fake["data"]["object"]
    obj.update(status="succeeded", amount_received=obj.get("amount"), last_payment_error=None)
    stem = f"{FORGED_PREFIX}{n}_{os.urandom(6).hex()}"
    json_only = {"Content-Type": "application/json"}
    out: list[tuple[str, str, bytes, dict[str, str]]] = []

    def add(kind: str, suffix: str, make: Callable[[dict[str, Any]], tuple[bytes, dict[str, str]]]) -> None:
        event = {**fake, "id": f"{stem}_{suffix}"}
        payload, headers = make(event)
        out.append((kind, event["id"], payload, headers))

    add("bad signature", "badsig", lambda e: signed(e, "whsec_not_the_secret"))
    add(
        "stale timestamp",
        "stale",
        lambda e: signed(e, WEBHOOK_SECRET, timestamp=now - 301 - rng.randint(0, 3600)),
    )
    # Signed as the genuine event was, then the body changed on the way (into the forged success).
    add(
        "tampered body",
        "tampered",
        lambda e: (json.dumps(e).encode(), signed({**base, "id": e["id"]}, WEBHOOK_SECRET)[1]),
    )
    add("no signature", "nosig", lambda e: (json.dumps(e).encode(), json_only))

    def v0_only(e: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        payload = json.dumps(e).encode()
        header = stripe_signature(payload, WEBHOOK_SECRET).replace("v1=", "v0=")
        return payload, {"Stripe-Signature": header, **json_only}

    add("v0 scheme only", "v0only", v0_only)
    return out


def forge(st: Stack, rec: Record, events: list[dict[str, Any]], per_kind: int, rng: random.Random) -> None:
    """Forged deliveries, each dangerous if accepted: a declined or pending charge told it succeeded."""
    bases = [
        e
        for e in events
        if ((e.get("data") or {}).get("object") or {}).get("object") == "payment_intent"
        and e["data"]["object"].get("status") != "succeeded"
    ] or events
    now = int(time.time())
    for n in range(per_kind):
        for kind, event_id, payload, headers in forgeries(rng.choice(bases), n, now, rng):
            status = deliver(st, payload, headers)
            rec.forged[kind] += 1
            if 200 <= status < 300:
                rec.forged_accepted.append(f"{kind}: {event_id} answered {status}")


# ---------------------------------------------------------------------------------------------------------
# Settling and the figures
# ---------------------------------------------------------------------------------------------------------


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as c:
        return c.execute(text(sql), params).scalar_one()


def open_count(engine: Engine) -> int:
    return int(
        scalar(
            engine, "select count(*) from charge_attempt where status in ('queued', 'processing', 'unknown')"
        )
    )


def unprocessed_events(engine: Engine) -> int:
    return int(
        scalar(
            engine,
            "select count(*) from webhook_event where processed_at is null and processing_attempts < 8",
        )
    )


def wait_quiet(st: Stack, engine: Engine, rec: Record, timeout: float) -> None:
    """Until the emulator has delivered its own webhooks and the charges stopped moving (bounded).

    Charges whose message a killed worker held stay queued until the recovery sweep sends it again, so
    "stopped moving" (15 s without change) ends the wait too; the settle phase waits for those.
    """
    started = time.monotonic()
    last, steady_since, said = -1, started, started
    while time.monotonic() - started < timeout:
        queued = st.emulator_state()["webhooks"].get("queued", 0)
        try:
            now_open = open_count(engine)
        except Exception:  # PostgreSQL may still be coming back
            now_open = -2
        rec.saw_open(now_open)
        if now_open != last:
            last, steady_since = now_open, time.monotonic()
        if queued == 0 and (now_open == 0 or time.monotonic() - steady_since > 15):
            break
        if time.monotonic() - said > 15:
            said = time.monotonic()
            log(f"  {now_open} charges open, {queued} webhooks queued at the emulator")
        time.sleep(1)
    log(f"  after {time.monotonic() - started:.0f}s: {last} charges open")


def reconcile(st: Stack, rec: Record) -> None:
    result = subprocess.run(
        [str(BIN / "offsession"), "reconcile"],
        cwd=ROOT,
        env=st.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    rec.reconcile_runs += 1
    if result.returncode != 0:
        rec.reconcile_failures += 1
        log(f"  offsession reconcile exited {result.returncode}: {result.stderr.strip()[-300:]}")
    elif any(f"{what}: 0" not in result.stdout for what in ("re-queued", "outbox messages published")) or (
        "resolved: none" not in result.stdout
    ):
        log(f"  offsession reconcile: {result.stdout.strip()}")


def describe_open(engine: Engine) -> None:
    """Which charges are still open and why: the evidence when one will not settle."""
    with engine.connect() as c:
        rows = c.execute(
            text(
                "select a.id, i.number, a.status, a.transient_failures, a.payment_intent_id, a.updated_at, "
                "a.next_retry_at, a.failure_code from charge_attempt a join invoice i on i.id = a.invoice_id "
                "where a.status in ('queued', 'processing', 'unknown') order by a.updated_at limit 10"
            )
        ).all()
    for r in rows:
        retry = f", retry at {r.next_retry_at:%H:%M:%S}" if r.next_retry_at else ""
        log(
            f"    open: {r.number} attempt {r.id} {r.status} ({r.failure_code}), {r.transient_failures} "
            f"transient failures, PI {r.payment_intent_id}, last moved {r.updated_at:%H:%M:%S}{retry}"
        )


def settle(st: Stack, engine: Engine, rec: Record, timeout: float) -> bool:
    """Faults off, then the janitor until nothing is queued/processing/unknown and every event is done."""
    st.faults(**FAULTS_OFF)
    describe_open(engine)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        reconcile(st, rec)
        still_open, events = open_count(engine), unprocessed_events(engine)
        rec.saw_open(still_open)
        queued = st.emulator_state()["webhooks"].get("queued", 0)
        if still_open == 0 and events == 0 and queued == 0:
            rec.settle_s = time.monotonic() - started
            return True
        log(
            f"  settling: {still_open} open charges, {events} unprocessed events, {queued} webhooks "
            f"queued at the emulator ({time.monotonic() - started:.0f}s)"
        )
        time.sleep(3)
    return False


def expected_status(pi: dict[str, Any]) -> str:
    """The attempt status a PaymentIntent stands for, read independently of shared/."""
    status = pi["status"]
    if status == "requires_payment_method":
        error = pi.get("last_payment_error") or {}
        codes = (error.get("code"), error.get("decline_code"))
        return "requires_action" if "authentication_required" in codes else "failed"
    return {"succeeded": "succeeded", "requires_action": "requires_action", "canceled": "canceled"}.get(
        status, f"(PI {status})"
    )


@dataclass
class Figures:
    rows: list[tuple[str, str, bool]]  # label, value, is a violation
    details: dict[str, list[str]]

    @property
    def violations(self) -> int:
        return sum(1 for _, value, bad in self.rows if bad)


def figures(
    st: Stack, engine: Engine, rec: Record, batch_ids: set[int], clients: dict[int, str], settled: bool
) -> Figures:
    state = st.emulator_state()
    pis: list[dict[str, Any]] = state["payment_intents"]
    with engine.connect() as c:
        attempts = c.execute(
            text(
                "select a.id, a.invoice_id, a.status, a.payment_intent_id, a.source, a.failure_code, "
                "a.amount, i.client_id from charge_attempt a join invoice i on i.id = a.invoice_id"
            )
        ).all()
        payments = c.execute(
            text(
                "select invoice_id, amount, stripe_payment_intent_id from payment where method = 'card' "
                "and stripe_refund_id is null"
            )
        ).all()
        invoices = int(c.execute(text("select count(*) from invoice")).scalar_one())
        forged_stored = (
            c.execute(
                text("select stripe_event_id from webhook_event where stripe_event_id like :p"),
                {"p": FORGED_PREFIX + "%"},
            )
            .scalars()
            .all()
        )
        given_up = int(
            c.execute(
                text(
                    "select count(*) from webhook_event "
                    "where processed_at is null and processing_attempts >= 8"
                )
            ).scalar_one()
        )
    details: dict[str, list[str]] = defaultdict(list)
    by_attempt = {a.id: a for a in attempts}
    pi_by_id = {pi["id"]: pi for pi in pis}
    pis_by_invoice: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pi in pis:
        pis_by_invoice[str((pi.get("metadata") or {}).get("invoice_id"))].append(pi)
    ledger_by_pi = Counter(p.stripe_payment_intent_id for p in payments)
    paid_by_invoice: Counter[str] = Counter()
    for p in payments:
        paid_by_invoice[str(p.invoice_id)] += p.amount

    # Double charges: more than one succeeded PaymentIntent for an invoice, or a succeeded one that is not
    # exactly one ledger payment (money taken and not recorded, or recorded twice).
    double: set[str] = set()
    for invoice_id, group in pis_by_invoice.items():
        won = [pi for pi in group if pi["status"] == "succeeded"]
        if len(won) > 1:
            double.add(invoice_id)
            details["double charges"].append(f"invoice {invoice_id}: succeeded {[pi['id'] for pi in won]}")
        for pi in won:
            if ledger_by_pi[pi["id"]] != 1:
                double.add(invoice_id)
                details["double charges"].append(
                    f"invoice {invoice_id}: {pi['id']} succeeded, {ledger_by_pi[pi['id']]} ledger payments"
                )

    # Disagreement with the emulator, per invoice, after the janitor.
    disagree: set[str] = set()

    def differ(invoice_id: Any, why: str) -> None:
        disagree.add(str(invoice_id))
        details["disagreements"].append(f"invoice {invoice_id}: {why}")

    for a in attempts:
        if a.payment_intent_id:
            pi = pi_by_id.get(a.payment_intent_id)
            if pi is None:
                differ(a.invoice_id, f"attempt {a.id} names {a.payment_intent_id}, unknown to the emulator")
            elif a.status != expected_status(pi):
                differ(a.invoice_id, f"attempt {a.id} is {a.status}, {pi['id']} is {pi['status']}")
    for pi in pis:
        meta = pi.get("metadata") or {}
        owner = by_attempt.get(meta.get("charge_attempt_id", ""))
        if owner is None:
            if meta.get("invoice_id"):
                differ(meta["invoice_id"], f"{pi['id']} ({pi['status']}) belongs to no attempt")
        elif owner.payment_intent_id != pi["id"]:
            differ(
                owner.invoice_id,
                f"{pi['id']} ({pi['status']}) made for attempt {owner.id}, which names "
                f"{owner.payment_intent_id}",
            )
        elif str(owner.invoice_id) != str(meta.get("invoice_id")):
            differ(owner.invoice_id, f"{pi['id']} says invoice {meta.get('invoice_id')}")
    for p in payments:
        pi = pi_by_id.get(p.stripe_payment_intent_id or "")
        if pi is None or pi["status"] != "succeeded":
            differ(p.invoice_id, f"ledger payment for {p.stripe_payment_intent_id}, which did not succeed")
    invoice_ids = ({str(a.invoice_id) for a in attempts} | set(pis_by_invoice)) - {"None"}
    for invoice_id in invoice_ids:
        received = sum(
            int(pi.get("amount_received") or 0)
            for pi in pis_by_invoice.get(invoice_id, [])
            if pi["status"] == "succeeded"
        )
        if received != paid_by_invoice[invoice_id]:
            differ(
                invoice_id,
                f"ledger has {paid_by_invoice[invoice_id]} paid by card, Stripe received {received}",
            )

    # Lost: still open after the janitor, a 202 without its attempt, a batch invoice without an attempt.
    lost: list[str] = [
        f"attempt {a.id} ({a.status}) of invoice {a.invoice_id}" for a in attempts if a.status in OPEN
    ]
    answered: dict[str, Click] = {}
    for c in rec.clicks:
        for status, body in c.answers:
            if status == 202 and isinstance(body, dict):
                answered[str(body.get("id"))] = c
    lost += [
        f"click on invoice {c.invoice_id} answered 202 as charge {cid}, no such attempt"
        for cid, c in answered.items()
        if cid not in by_attempt
    ]
    with_attempt = {a.invoice_id for a in attempts}
    lost += [f"batch invoice {i} has no attempt" for i in sorted(batch_ids - with_attempt)]
    details["lost attempts"] = lost

    # Each card's behaviour is known: an outcome it cannot have is worth a look even when it agrees.
    odd: list[str] = []
    for a in attempts:
        want = CARDS[clients[a.client_id]]
        if a.status != want and a.status not in OPEN:
            odd.append(
                f"attempt {a.id} on {clients[a.client_id]}: {a.status} ({a.failure_code}), expected {want}"
            )
    details["unexpected outcomes"] = odd
    details["forged webhooks accepted"] = rec.forged_accepted + [
        f"{event_id} stored in webhook_event" for event_id in forged_stored
    ]

    after_kill, never_final = settle_after_kill(engine, rec)
    slow = [f"a charge took {t:.1f}s" for t in after_kill if t > SETTLE_AFTER_KILL_BOUND_S]
    details["charges of a killed worker final after a minute, or never"] = [
        f"attempt {a}: not final" for a in never_final
    ] + slow
    click_answers = Counter(status for c in rec.clicks for status, _ in c.answers)
    doubles_twice = sum(
        1
        for c in rec.clicks
        if c.double
        and not c.same_key
        and len({str(b.get("id")) for s, b in c.answers if s == 202 and isinstance(b, dict)}) > 1
    )
    succeeded_pis = sum(1 for pi in pis if pi["status"] == "succeeded")
    status_counts = Counter(a.status for a in attempts)
    hooks = state["webhooks"]
    forged_accepted = len(details["forged webhooks accepted"])
    rows: list[tuple[str, str, bool]] = [
        ("invoices", str(invoices), False),
        ("  batch (auto-charge) / clicked", f"{len(batch_ids)} / {len(rec.clicks)}", False),
        ("attempts", str(len(attempts)), False),
        ("  by status", ", ".join(f"{n} {s}" for s, n in sorted(status_counts.items())), False),
        ("PaymentIntents in the emulator", str(len(pis)), False),
        ("succeeded charges (PIs / ledger)", f"{succeeded_pis} / {len(payments)}", False),
        ("double charges", str(len(double)), bool(double)),
        ("invoices disagreeing with the emulator", str(len(disagree)), bool(disagree)),
        ("lost attempts", str(len(lost)), bool(lost)),
        ("forged webhooks accepted", f"{forged_accepted} of {sum(rec.forged.values())}", forged_accepted > 0),
        (
            "time to settle (faults off -> nothing open)",
            f"{rec.settle_s:.1f}s" if rec.settle_s is not None else "did not settle",
            not settled,
        ),
        (
            "  from the end of the chaos phase",
            f"{rec.closed_after_chaos_s:.1f}s" if rec.closed_after_chaos_s is not None else "-",
            False,
        ),
        kill_settle_row(rec, after_kill, never_final),
        ("outcomes a card cannot have", str(len(odd)), False),
        (
            "clicks: POSTs answered",
            ", ".join(f"{n}x {s or 'conn error'}" for s, n in sorted(click_answers.items())),
            False,
        ),
        ("  double-clicks (no key) answered 202 twice", str(doubles_twice), False),
        ("  slowest answer", f"{max((t for c in rec.clicks for t in c.seconds), default=0):.1f}s", False),
        (
            "worker SIGKILLs / redis down / PG restart",
            f"{rec.kills} / {rec.redis_down_s:.0f}s / "
            + (f"{rec.pg_restart_s:.1f}s" if rec.pg_restart_s is not None else "none"),
            False,
        ),
        (
            "emulator webhooks: sent / duplicates / failed tries / gave up",
            f"{hooks.get('delivered', 0)} / {hooks.get('duplicates_sent', 0)} / "
            f"{hooks.get('failed_attempts', 0)} / {hooks.get('gave_up', 0)}",
            False,
        ),
        (
            "redelivered by the script (x3): answers",
            ", ".join(f"{n}x {s or 'conn error'}" for s, n in sorted(rec.redelivered.items())),
            False,
        ),
        ("webhook events given up (poison)", str(given_up), False),
        (
            "emulator requests (total / 429)",
            f"{state['requests'].get('total', 0)} / {state['requests'].get('rate_limited', 0)}",
            False,
        ),
        (
            "janitor runs in the settle phase (failed)",
            f"{rec.reconcile_runs} ({rec.reconcile_failures})",
            False,
        ),
        (
            "chaos phase / whole run",
            f"{rec.marks.get('chaos_end', 0) - rec.marks.get('chaos_start', 0):.0f}s"
            f" / {time.monotonic() - rec.started:.0f}s",
            False,
        ),
    ]
    return Figures(rows, details)


def kill_settle_row(rec: Record, seconds: list[float], never_final: list[str]) -> tuple[str, str, bool]:
    """From a worker's SIGKILL to the final state of each charge it held: p50 / max, and how many."""
    label = "time to settle after a kill (p50 / max)"
    if not rec.orphans:
        return label, "no charge was in flight at a kill", False
    worst = "never" if never_final else f"{max(seconds):.1f}s"
    p50 = f"{statistics.median(seconds):.1f}s" if seconds else "-"
    value = f"{p50} / {worst} ({len(rec.orphans)} charges in flight at {rec.kills} kills)"
    return label, value, bool(never_final) or max(seconds) > SETTLE_AFTER_KILL_BOUND_S


def print_table(figs: Figures) -> None:
    width = max(len(label) for label, _, _ in figs.rows)
    print()
    print(f"{'figure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for label, value, bad in figs.rows:
        print(f"{label:<{width}}  {value}{'   <-- VIOLATION' if bad else ''}")
    print()
    for name, lines in figs.details.items():
        if lines:
            print(f"{name} ({len(lines)}):")
            for line in lines[:15]:
                print(f"  {line}")
            if len(lines) > 15:
                print(f"  ... and {len(lines) - 15} more")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def on_term(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(profile: Profile, seed: int, *, volatile_redis: bool = False) -> int:
    rng = random.Random(seed)
    rec = Record()
    pg: PostgresServer | None = None
    redis: RedisServer | None = None
    st: Stack | None = None
    engine: Engine | None = None
    ok = False
    try:
        log(
            f"chaos: {profile.invoices} invoices, {profile.clicks} clicks, a worker killed every "
            f"{profile.kill_every:g}s for {profile.kill_until:g}s, redis-server "
            f"{'without' if volatile_redis else 'with'} AOF (seed {seed})"
        )
        pg = PostgresServer()
        redis = RedisServer() if volatile_redis else DurableRedis()
        st = Stack(
            pg.create_database("chaos"),
            f"{redis.url}/1",
            workers=2,
            concurrency=profile.concurrency,
            beat=True,
            extra_env={
                "REDIS_URL": f"{redis.url}/2",
                "STRIPE_RATE_LIMIT": "20",
                # The scheduled fan-out must not fire on its own during the run.
                "OFFSESSION_BATCH_CRON": "0 3 1 1 *",
            },
        )
        log(f"stack up in {st.dir} (postgres :{pg.port}, redis :{redis.port}, web {st.base})")
        engine = create_engine(st.database_url, pool_pre_ping=True)
        clients = make_clients(st, profile.clients_per_card)
        batch_ids = set(insert_invoices(engine, clients, "CHAOS", profile.invoices, auto=True))
        click_invoices = insert_invoices(engine, clients, "CLICK", profile.clicks, auto=False)
        rng.shuffle(click_invoices)
        log(
            f"{len(clients)} clients, {len(batch_ids)} due invoices set to auto-charge, "
            f"{len(click_invoices)} for clicks"
        )

        st.faults(**FAULTS_ON)
        rec.mark("chaos_start")
        batch = st.cli("charge-due", "--no-wait")
        rec.batch_line = batch.stdout.strip().splitlines()[0]
        log(f"offsession charge-due --no-wait: {rec.batch_line}")
        if f"{profile.invoices} due, {profile.invoices} queued, 0 skipped" not in rec.batch_line:
            raise RuntimeError(f"the batch did not queue every invoice: {rec.batch_line}")
        run_chaos(st, engine, redis, pg, profile, rec, click_invoices, rng)
        rec.mark("chaos_end")
        log(f"chaos phase over: {open_count(engine)} charges open; waiting for the emulator's webhooks")
        wait_quiet(st, engine, rec, profile.quiet_timeout)

        events = st.emulator_state()["events"]
        log(f"re-delivering {len(events)} events x3, shuffled; then forged ones")
        redeliver_all(st, rec, events, rng)
        forge(st, rec, events, profile.forged_per_kind, rng)

        log("faults off; running the janitor until nothing is open")
        settled = settle(st, engine, rec, profile.settle_timeout)
        figs = figures(st, engine, rec, batch_ids, clients, settled)
        print_table(figs)
        # Kept with the logs when the run fails: every example of every violation, not only the first 15.
        (st.dir / "chaos-figures.json").write_text(
            json.dumps({"rows": figs.rows, "details": figs.details, "seed": seed}, indent=2)
        )
        ok = figs.violations == 0
        print(f"chaos: {'OK, every violation count is 0' if ok else f'{figs.violations} VIOLATION(S)'}")
        return 0 if ok else 1
    except (KeyboardInterrupt, Interrupted):
        print("\nchaos: interrupted; stopping every process", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"chaos: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(BaseException):
            # Everything below runs even when one step fails or a second Ctrl-C comes.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if engine is not None:
            engine.dispose()
        if st is not None:
            st.stop()
            if pg is not None:
                with contextlib.suppress(OSError):
                    shutil.copy(pg.dir / "log", st.dir / "postgresql.log")
            if ok:  # the test suite runs this on every `make test`: leave nothing behind in /tmp
                shutil.rmtree(st.dir, ignore_errors=True)
            else:
                print(
                    f"chaos: logs are in {st.dir} (seed {seed}): "
                    + ", ".join(sorted(p.name for p in st.dir.glob("*") if p.is_file())),
                    file=sys.stderr,
                )
        if redis is not None:
            redis.close()
        if pg is not None:
            pg.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the small variant the test suite runs")
    parser.add_argument("--invoices", type=int, help="due invoices in the batch (full: 1000, short: 60)")
    parser.add_argument("--clicks", type=int, help="admin POSTs on other invoices (full: 50, short: 10)")
    parser.add_argument("--kill-every", type=float, help="seconds between worker SIGKILLs (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="for the random choices (default: random)")
    parser.add_argument(
        "--volatile-redis",
        action="store_true",
        help="redis-server without AOF: its restart loses every queued message (the janitor's case)",
    )
    args = parser.parse_args(argv)
    profile = SHORT if args.short else FULL
    overrides = {
        k: v
        for k, v in (("invoices", args.invoices), ("clicks", args.clicks), ("kill_every", args.kill_every))
        if v is not None
    }
    if any(v <= 0 for v in overrides.values()):
        parser.error("--invoices, --clicks and --kill-every must be positive")
    profile = replace(profile, **overrides)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    with sigterm_as_interrupt():
        return run(profile, seed, volatile_redis=args.volatile_redis)


if __name__ == "__main__":
    sys.exit(main())

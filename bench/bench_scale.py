"""The due-invoice selection and the admin invoice list over 1,000,000 invoices in PostgreSQL.

Starts a throwaway PostgreSQL 15, migrates it (shared.adapters.migrate, as `offsession db upgrade` does) and
bulk-loads, server-side with INSERT ... SELECT generate_series, a realistic book: 50,000 clients
(most with a saved card, some with two), invoices due over the last two years and the next two months
(most paid, some in two instalments, a few partially paid, about 1% void), a succeeded charge attempt
for most card payments, declined attempts and a few still in flight; then ANALYZE. It measures:

  * the due-invoice selection exactly as the batch runs it (shared.services.batch.due_invoice_ids: the ids of
    the auto-charge, unvoided, unpaid invoices due today or before), page by page at 1,000 rows a page
    until the last page: milliseconds per page, p50 and max; and apart, loading each page's invoices
    with clients, cards, payments and attempts as ORM objects (shared.services.batch.load_for_charging);
  * the admin invoice list, /admin/invoices rendered by the real Flask app for a signed-in admin:
    default filters (page 1), a deep page, a search by client name, a search by invoice number and a
    status filter: milliseconds per render, p50 and p99;
  * the admin dashboard, /admin/ rendered the same way (money collected, due and overdue, charge
    outcomes and declines over 30 days, what needs a person): milliseconds per render, p50 and p99;
  * EXPLAIN (ANALYZE, BUFFERS) of every query those issue, with the indexes each uses; a sequential
    scan of invoice, payment, charge_attempt, card or client is reported as a finding.

    .venv/bin/python bench/bench_scale.py                                  # 1,000,000 invoices
    .venv/bin/python bench/bench_scale.py --invoices 100000 --clients 5000 --explain

Goals: selection <= 50 ms per 1,000-row page; the admin list renders in <= 100 ms; the dashboard
renders in <= 200 ms at the p50. They are
reported (met / not met), not enforced: timings depend on the machine. Exits 1 on a correctness
violation only: the selection missing a due invoice, returning one twice or one that is not due.
--database-url runs against an existing database instead (loaded when it has no invoices yet).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the repo root must be importable for `shared` and `tests.support`.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

GOAL_PAGE_MS = 50.0
GOAL_RENDER_MS = 100.0
# The dashboard (/admin/, shared.services.dashboard) aggregates the whole book: its goal is on the p50.
DASHBOARD = "dashboard (/admin/)"
GOAL_DASHBOARD_P50_MS = 200.0
SELECTION_PAGE_SIZE = 1000
# Scans of these tables must go through an index: they are the ones that grow with the book.
BIG_TABLES = ("invoice", "payment", "charge_attempt", "card", "client")
SEQ_SCAN_ROWS_ALLOWED = 5000
FIRST_NAMES = (
    "Ada Alan Grace Edsger Barbara Donald Frances Ken Dennis Margaret Linus Guido Radia Tim Hedy John "
    "Katherine Claude Niklaus Leslie Whitfield Shafi Sophie Jean Yukihiro Bjarne Anita Vint Joan Robin"
).split()
LAST_NAMES = (
    "Lovelace Turing Hopper Dijkstra Liskov Knuth Allen Thompson Ritchie Hamilton Torvalds Rossum "
    "Perlman Berners-Lee Lamarr McCarthy Johnson Shannon Wirth Lamport Diffie Goldwasser Wilson Sammet "
    "Matsumoto Stroustrup Borg Cerf Clarke Milner Ltd Partners Studio Bakery Garage Consulting"
).split()


@dataclass
class Timing:
    name: str
    samples_ms: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else 0.0


@dataclass
class Result:
    invoices: int
    clients: int
    load_seconds: float = 0.0
    due_expected: int = 0
    candidates: int = 0
    pages: Timing = field(default_factory=lambda: Timing("selection page"))
    # Of each page, the time spent in the database (its queries' execute calls); the rest is Python.
    page_db: Timing = field(default_factory=lambda: Timing("selection page, database"))
    # Then loading that page's invoices as ORM objects with clients, cards, payments and attempts in
    # flight (run_batch loads pages of 50 in production; here 1,000 to match the selection).
    loads: Timing = field(default_factory=lambda: Timing("loading a page for charging"))
    selection_seconds: float = 0.0
    renders: list[Timing] = field(default_factory=list)
    plans: list[tuple[str, str, float]] = field(default_factory=list)  # what, plan text, execution ms
    violations: list[str] = field(default_factory=list)

    def seq_scans(self) -> list[str]:
        """Sequential scans of big tables that read more than a few pages' worth of rows (a scan a LIMIT
        stops after a thousand rows costs nothing)."""
        found = []
        for what, plan, _ in self.plans:
            lines = plan.splitlines()
            for n, line in enumerate(lines):
                scan = re.search(r"Seq Scan on (\w+).*actual time=\S+ rows=(\d+) loops=(\d+)", line)
                if scan is None or scan.group(1) not in BIG_TABLES:
                    continue
                removed = re.search(r"Rows Removed by Filter: (\d+)", " ".join(lines[n + 1 : n + 3]))
                read = (int(scan.group(2)) + int(removed.group(1) if removed else 0)) * int(scan.group(3))
                if read > SEQ_SCAN_ROWS_ALLOWED:
                    found.append(f"{what}: Seq Scan on {scan.group(1)} ({read:,} rows)")
        return found


# ---- servers and data ----------------------------------------------------------------------------


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.support.services import PostgresServer

    server = PostgresServer()
    try:
        yield server.create_database("scale")
    finally:
        server.stop()


LOAD_SQL = [
    "SELECT setseed(0.42)",
    # Clients: names from two lists, so a search by name matches a realistic handful.
    """INSERT INTO client (id, name, email, stripe_customer_id, created_at)
    SELECT g, (CAST(:first AS text[]))[1 + (g * 7) % cardinality(CAST(:first AS text[]))] || ' '
              || (CAST(:last AS text[]))[1 + (g / 7) % cardinality(CAST(:last AS text[]))]
              || ' ' || g,
           'client' || g || '@example.com', 'cus_scale' || g, now() - interval '3 years'
    FROM generate_series(1, :clients) g""",
    # 92% of clients have a default card; one in ten of those has a second, older card too.
    """INSERT INTO card (client_id, stripe_payment_method_id, brand, last4, exp_month, exp_year,
                         is_default, created_at)
    SELECT c.id, 'pm_scale_' || c.id || '_' || k, CASE WHEN k = 1 THEN 'visa' ELSE 'mastercard' END,
           CASE WHEN k = 1 THEN '4242' ELSE '4444' END, 1 + c.id % 12, 2027 + c.id % 5, k = 1, now()
    FROM client c CROSS JOIN generate_series(1, 2) k
    WHERE c.id % 25 <> 0 AND c.id % 13 <> 0 AND (k = 1 OR c.id % 10 = 0)""",
    # Invoices: 8% due in the next 60 days, 1% due today, the rest over the past two years.
    """INSERT INTO invoice (id, number, client_id, currency, total, due_date, payment_method, auto_charge,
                            is_void, description, created_at)
    SELECT g, 'INV-' || lpad(g::text, 7, '0'), 1 + ((g::bigint * 2654435761) % :clients)::int,
           CASE WHEN r1 < 0.9 THEN 'usd' ELSE 'eur' END,
           500 + ((g::bigint * 7919) % 250000)::int,
           CASE WHEN r2 < 0.08 THEN CAST(:today AS date) + (1 + (g % 60))
                WHEN r2 < 0.09 THEN CAST(:today AS date)
                ELSE CAST(:today AS date) - (1 + (g % 730)) END,
           CASE WHEN r3 < 0.85 THEN 'online_card' WHEN r3 < 0.95 THEN 'bank_transfer' ELSE 'cash' END,
           r4 < 0.6, r5 < 0.01, 'Services, month ' || (g % 12 + 1), now()
    FROM (SELECT g, random() r1, random() r2, random() r3, random() r4, random() r5
          FROM generate_series(1, :invoices) g) s""",
    # Who paid: 94% of past-due invoices, 10% of upcoming ones, 5% of today's; a few more in part.
    """CREATE TEMP TABLE paying AS
    SELECT i.id, i.total, i.due_date, i.payment_method, i.auto_charge,
           CASE WHEN r < (CASE WHEN i.due_date < :today THEN 0.94 WHEN i.due_date = :today THEN 0.05
                               ELSE 0.10 END) THEN 'full'
                WHEN r < (CASE WHEN i.due_date < :today THEN 0.96 ELSE 0.12 END) THEN 'part'
                ELSE 'none' END AS paid, random() AS split
    FROM (SELECT *, random() r FROM invoice WHERE NOT is_void) i""",
    # Card payments of auto-charged invoices came through a succeeded attempt.
    """INSERT INTO charge_attempt (id, invoice_id, amount, currency, source, requested_by, status,
                                   idempotency_key, payment_intent_id, transient_failures, created_at,
                                   updated_at, finished_at)
    SELECT md5('ok' || p.id)::uuid::text, p.id, i.total, i.currency, 'schedule', 'batch:1', 'succeeded',
           'scale-ok-' || p.id, 'pi_scale_ok_' || p.id, 0, i.due_date + time '06:00',
           i.due_date + time '06:01', i.due_date + time '06:01'
    FROM paying p JOIN invoice i ON i.id = p.id
    WHERE p.paid = 'full' AND p.auto_charge AND p.payment_method = 'online_card' AND p.split >= 0.2""",
    """INSERT INTO payment (invoice_id, amount, method, received_at, reference, charge_attempt_id,
                            stripe_payment_intent_id, recorded_by, created_at)
    SELECT a.invoice_id, a.amount, 'card', a.finished_at, '', a.id, a.payment_intent_id, 'stripe',
           a.finished_at
    FROM charge_attempt a WHERE a.status = 'succeeded'""",
    # Everything else paid in full: one transfer, or two instalments (one in five).
    """INSERT INTO payment (invoice_id, amount, method, received_at, reference, recorded_by, created_at)
    SELECT p.id, CASE WHEN p.split < 0.2 THEN p.total / 2 ELSE p.total END,
           CASE WHEN p.payment_method = 'cash' THEN 'cash' ELSE 'bank_transfer' END,
           p.due_date - 3 + time '10:00', 'ref ' || p.id, 'admin:ops@example.com', now()
    FROM paying p
    WHERE p.paid = 'full' AND NOT (p.auto_charge AND p.payment_method = 'online_card' AND p.split >= 0.2)""",
    """INSERT INTO payment (invoice_id, amount, method, received_at, reference, recorded_by, created_at)
    SELECT p.id, p.total - p.total / 2, 'bank_transfer', p.due_date + time '11:00', 'rest ' || p.id,
           'admin:ops@example.com', now()
    FROM paying p
    WHERE p.paid = 'full' AND p.split < 0.2""",
    # Partial payments: a third of the total, still due.
    """INSERT INTO payment (invoice_id, amount, method, received_at, reference, recorded_by, created_at)
    SELECT p.id, greatest(p.total / 3, 1), 'bank_transfer', p.due_date + time '09:00', 'part ' || p.id,
           'admin:ops@example.com', now()
    FROM paying p WHERE p.paid = 'part'""",
    # Unpaid auto-charge invoices: declined attempts before today, a few charges still in flight.
    """INSERT INTO charge_attempt (id, invoice_id, amount, currency, source, requested_by, status,
                                   idempotency_key, failure_code, decline_code, transient_failures,
                                   created_at, updated_at, finished_at)
    SELECT md5('no' || p.id)::uuid::text, p.id, i.total, i.currency, 'schedule', 'batch:1', 'failed',
           'scale-no-' || p.id, 'card_declined',
           CASE WHEN p.split < 0.5 THEN 'insufficient_funds' ELSE 'generic_decline' END, 0,
           i.due_date + time '06:00', i.due_date + time '06:01', i.due_date + time '06:01'
    FROM paying p JOIN invoice i ON i.id = p.id
    WHERE p.paid <> 'full' AND p.auto_charge AND p.due_date < :today AND p.split < 0.4""",
    """INSERT INTO charge_attempt (id, invoice_id, amount, currency, source, requested_by, status,
                                   idempotency_key, transient_failures, created_at, updated_at)
    SELECT md5('fly' || p.id)::uuid::text, p.id, i.total, i.currency, 'admin', 'admin:ops@example.com',
           CASE WHEN p.split < 0.7 THEN 'queued' ELSE 'processing' END, 'scale-fly-' || p.id, 0, now(), now()
    FROM paying p JOIN invoice i ON i.id = p.id
    WHERE p.paid <> 'full' AND p.due_date <= :today AND p.split >= 0.97""",
    "SELECT setval(pg_get_serial_sequence('client', 'id'), (SELECT max(id) FROM client))",
    "SELECT setval(pg_get_serial_sequence('invoice', 'id'), (SELECT max(id) FROM invoice))",
    "DROP TABLE paying",
]


def load(engine: Engine, invoices: int, clients: int, today: date) -> None:
    params = {
        "invoices": invoices,
        "clients": clients,
        "today": today,
        "first": FIRST_NAMES,
        "last": LAST_NAMES,
    }
    with engine.begin() as conn:
        for statement in LOAD_SQL:
            conn.execute(text(statement), {k: v for k, v in params.items() if f":{k}" in statement})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def expected_due_ids(engine: Engine, today: date) -> set[int]:
    """The invoices the batch must select, computed independently of the code under test."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """SELECT i.id FROM invoice i
                LEFT JOIN (SELECT invoice_id, sum(amount) AS paid FROM payment GROUP BY invoice_id) p
                       ON p.invoice_id = i.id
                WHERE i.auto_charge AND NOT i.is_void AND i.due_date <= :today
                  AND i.total > coalesce(p.paid, 0)"""
            ),
            {"today": today},
        )
        return {int(r[0]) for r in rows}


# ---- capturing and explaining queries ------------------------------------------------------------


@contextmanager
def database_time(engine: Engine) -> Iterator[list[float]]:
    """Seconds spent in cursor.execute (the server's work and the transfer), added up in [0]."""
    spent = [0.0]
    started: list[float] = []

    def before(*args: Any) -> None:
        started.append(time.perf_counter())

    def after(*args: Any) -> None:
        spent[0] += time.perf_counter() - started.pop()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield spent
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def remember(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", remember)


def explain(engine: Engine, what: str, statements: list[tuple[str, Any]], result: Result) -> None:
    seen: set[str] = set()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in statements:
            if statement in seen:
                continue  # the same query for the next page: one plan is enough
            seen.add(statement)
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            match = re.search(r"Execution Time: ([\d.]+) ms", plan)
            result.plans.append((what, f"{statement}\n{plan}", float(match.group(1)) if match else 0.0))
        raw.rollback()
    finally:
        raw.close()


def buffers(plan: str) -> int:
    """Pages the query touched (hit + read), from its top plan node: a measure the machine's load
    does not change, unlike the milliseconds."""
    match = re.search(r"Buffers: shared(?: hit=(\d+))?(?: read=(\d+))?", plan.split("\nPlanning", 1)[0])
    return int(match.group(1) or 0) + int(match.group(2) or 0) if match else 0


def indexes_used(plan: str) -> list[str]:
    found = re.findall(
        r"(?:Index Only Scan|Index Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) (\w+)", plan
    )
    return list(dict.fromkeys(found))


# ---- the measurements ----------------------------------------------------------------------------


def measure_selection(engine: Engine, today: date, page_size: int, result: Result) -> None:
    from shared.domain.ledger import balance
    from shared.services import batch

    factory = sessionmaker(bind=engine, expire_on_commit=False)
    due_invoice_ids: Callable[..., list[int]] = batch.due_invoice_ids
    expected = expected_due_ids(engine, today)
    result.due_expected = len(expected)
    selected: list[int] = []
    after_id = 0
    started = time.perf_counter()
    first_statements: list[tuple[str, Any]] = []
    while True:
        # As run_batch does: one transaction per page; the selection (ids), then the ORM rows that
        # charging reads, timed apart.
        with factory() as session, session.begin():
            begun = time.perf_counter()
            with database_time(engine) as spent:
                if after_id == 0:
                    with captured(engine) as first_statements:
                        ids = due_invoice_ids(session, today, after_id, page_size)
                else:
                    ids = due_invoice_ids(session, today, after_id, page_size)
            result.pages.samples_ms.append((time.perf_counter() - begun) * 1000)
            result.page_db.samples_ms.append(spent[0] * 1000)
            if not ids:
                break
            begun = time.perf_counter()
            page = batch.load_for_charging(session, ids)
            result.loads.samples_ms.append((time.perf_counter() - begun) * 1000)
            after_id = ids[-1]
            result.candidates += len(page)
            selected.extend(i.id for i in page if balance(i).amount_due > 0)
    result.selection_seconds = time.perf_counter() - started
    if len(selected) != len(set(selected)):
        result.violations.append(f"selection returned {len(selected) - len(set(selected))} invoices twice")
    missing, extra = expected - set(selected), set(selected) - expected
    if missing:
        result.violations.append(f"selection missed {len(missing)} due invoices, e.g. {sorted(missing)[:5]}")
    if extra:
        result.violations.append(
            f"selection returned {len(extra)} invoices not due, e.g. {sorted(extra)[:5]}"
        )
    explain(engine, "selection", first_statements, result)


def measure_list(engine: Engine, url: str, repeats: int, deep_page: int, result: Result) -> None:
    import web
    from web.pages import ADMIN_KEY, SEEN_KEY, VERSION_KEY

    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("OFFSESSION_HOME", tempfile.mkdtemp(prefix="offsession-scale-home-"))
    with engine.begin() as conn:
        admin_id = conn.execute(
            text(
                "INSERT INTO admin_user (email, password_hash, created_at) "
                "VALUES ('bench@example.com', 'x', now()) "
                "ON CONFLICT (email) DO UPDATE SET email = excluded.email RETURNING id"
            )
        ).scalar_one()
        client_name = conn.execute(
            text("SELECT split_part(name, ' ', 2) FROM client WHERE id = :id"),
            {"id": result.clients // 2 + 1},
        ).scalar_one()
        number = conn.execute(
            text("SELECT number FROM invoice WHERE id = :id"), {"id": result.invoices // 2}
        ).scalar_one()
    app = web.create_app()
    app.testing = True
    logging.getLogger("offsession").setLevel(logging.WARNING)  # one log line per request would be noise
    http = app.test_client()
    with http.session_transaction() as s:
        # As web.pages.begin_session signs an admin in (the session version and the time last seen are
        # checked on every request: without them every page answered a redirect to the sign-in page).
        s[ADMIN_KEY] = admin_id
        s[VERSION_KEY] = 0
        s[SEEN_KEY] = int(time.time())
    app_engine = app.extensions["offsession"].engine
    pages = {
        "list: default, page 1": "/admin/invoices",
        f"list: page {deep_page}": f"/admin/invoices?page={deep_page}",
        f"list: search client '{client_name}'": f"/admin/invoices?q={client_name}",
        f"list: search number {number}": f"/admin/invoices?q={number}",
        "list: status partially paid": "/admin/invoices?status=partially_paid",
        "list: overdue, auto-charge on": "/admin/invoices?due=overdue&auto_charge=yes",
        DASHBOARD: "/admin/",
    }
    for name, path in pages.items():
        timing = Timing(name)
        http.get(path)  # warm the template cache and the connection pool
        for _ in range(repeats):
            begun = time.perf_counter()
            response = http.get(path)
            timing.samples_ms.append((time.perf_counter() - begun) * 1000)
            if response.status_code != 200:
                result.violations.append(f"{path} answered {response.status_code}")
                break
        result.renders.append(timing)
        with captured(app_engine) as statements:
            http.get(path)
        explain(app_engine, name, [s for s in statements if "admin_user" not in s[0]], result)


# ---- report --------------------------------------------------------------------------------------


def verdict(value: float, goal: float) -> str:
    return "met" if value <= goal else "NOT met"


def table(r: Result, show_plans: bool) -> str:
    lines = [
        f"{r.invoices:,} invoices, {r.clients:,} clients (loaded in {r.load_seconds:.1f}s); "
        f"{r.due_expected:,} due for auto-charge today",
        "",
        f"{'measure':<44} {'p50 ms':>8} {'max/p99':>8}  goal",
        f"{'selection, ' + str(len(r.pages.samples_ms)) + ' pages of <= 1,000':<44} "
        f"{r.pages.p50:8.1f} {max(r.pages.samples_ms, default=0):8.1f}  <= {GOAL_PAGE_MS:.0f} ms/page: "
        f"{verdict(max(r.pages.samples_ms, default=0), GOAL_PAGE_MS)}",
        f"{'  of which in the database':<44} {r.page_db.p50:8.1f} "
        f"{max(r.page_db.samples_ms, default=0):8.1f}",
        f"{'then loading the page for charging (ORM)':<44} {r.loads.p50:8.1f} "
        f"{max(r.loads.samples_ms, default=0):8.1f}  (not part of the goal: run_batch loads 50 at a time)",
        f"{'  (whole selection: ' + f'{r.selection_seconds:.2f}s, {r.candidates:,} rows read)':<44}",
    ]
    for timing in r.renders:
        p99 = timing.p(0.99)
        if timing.name == DASHBOARD:
            lines.append(
                f"{timing.name[:44]:<44} {timing.p50:8.1f} {p99:8.1f}  "
                f"p50 <= {GOAL_DASHBOARD_P50_MS:.0f} ms: {verdict(timing.p50, GOAL_DASHBOARD_P50_MS)}"
            )
            continue
        lines.append(
            f"{timing.name[:44]:<44} {timing.p50:8.1f} {p99:8.1f}  <= {GOAL_RENDER_MS:.0f} ms/render: "
            f"{verdict(p99, GOAL_RENDER_MS)}"
        )
    lines += ["", "Queries: EXPLAIN ANALYZE execution time, pages (8 kB) touched, indexes used"]
    for what, plan, ms in r.plans:
        used = ", ".join(indexes_used(plan)) or "(none)"
        first_line = " ".join(plan.split())[:40]
        lines.append(f"  {what[:34]:<34} {ms:7.2f} ms {buffers(plan):>7}  {used}   [{first_line}...]")
    scans = r.seq_scans()
    lines.append("")
    lines.append("Sequential scans of big tables: " + ("none" if not scans else "; ".join(scans)))
    if show_plans:
        for what, plan, _ in r.plans:
            lines += ["", f"--- {what}", plan]
    if r.violations:
        lines += ["", "CORRECTNESS VIOLATIONS:", *(f"  {v}" for v in r.violations)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Result:
    from shared.adapters.database import make_engine
    from shared.adapters.migrate import upgrade

    result = Result(args.invoices, args.clients)
    today = date.today()
    with ExitStack() as stack:
        url = stack.enter_context(database(args.database_url))
        upgrade(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            loaded = conn.execute(text("SELECT count(*) FROM invoice")).scalar_one()
        if loaded == 0:
            print(f"loading {args.invoices:,} invoices for {args.clients:,} clients...", flush=True)
            begun = time.perf_counter()
            load(engine, args.invoices, args.clients, today)
            result.load_seconds = time.perf_counter() - begun
        else:
            result.invoices = int(loaded)
            with engine.connect() as conn:
                result.clients = int(conn.execute(text("SELECT count(*) FROM client")).scalar_one())
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))  # as autovacuum would: the visibility map
        print("measuring the due-invoice selection...", flush=True)
        measure_selection(engine, today, args.page_size, result)
        print("measuring the admin invoice list and the dashboard...", flush=True)
        measure_list(engine, url, args.repeats, args.deep_page, result)
        engine.dispose()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=50_000)
    parser.add_argument("--page-size", type=int, default=SELECTION_PAGE_SIZE, help="selection page size")
    parser.add_argument("--repeats", type=int, default=30, help="renders of each admin list page")
    parser.add_argument("--deep-page", type=int, default=2000, help="the deep page of the admin list")
    parser.add_argument("--explain", action="store_true", help="print every query plan in full")
    parser.add_argument("--database-url", help="an existing PostgreSQL database (loaded when empty)")
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result, args.explain))
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())

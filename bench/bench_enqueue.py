"""Enqueue: POST /api/invoices/<id>/charges at 1, 4 and 20 concurrent clients, beside a floor.

Starts a throwaway redis-server and PostgreSQL 15, the real web app under gunicorn (the Procfile's web) and,
under the same gunicorn settings, bench/floor_app.py: a bare WSGI app doing one INSERT and one Redis
LPUSH per request, the least any enqueue can cost on this machine. The Celery workers are not started:
this measures the web path only (the click's 202), and each accepted charge must be waiting on the
broker afterwards. Every POST names a distinct eligible invoice, so each is a real 202 enqueue.

The load generator runs one process per client, each a closed loop of POSTs on a fresh connection
per request (gunicorn's sync workers close every connection, so real clients connect per request too;
floor and enqueue are measured alike). Per level: a warm-up, then a fixed measuring window. Both apps
run with the gunicorn options of the Procfile's web command (--gunicorn tries others).

    .venv/bin/python bench/bench_enqueue.py                          # clients 1,4,20; 3 s warm-up, 10 s each
    .venv/bin/python bench/bench_enqueue.py --clients 1,4 --seconds 3 --warmup 1

Goals: p99 <= 15 ms at 4 concurrent clients; saturated enqueue throughput >= 40% of the
floor's. They are reported, not enforced (they depend on the machine). Exits 1 on a correctness
violation only: an answer other than 202, an accepted charge without its attempt row or broker
message, or an invoice with two attempts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import shlex
import signal
import sys
import time
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

# Run as a script from anywhere: the repo root must be importable for `shared`, `bench` and `tests.support`.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.floor_app import create_scratch_table  # noqa: E402
from shared.domain.models import ChargeAttempt, Invoice, OutboxMessage  # noqa: E402
from tests.support.services import PostgresServer, RedisServer, free_port, wait_for_port  # noqa: E402
from tests.support.stack import BIN, TOKEN, Stack, bench_main, measuring  # noqa: E402

PROCFILE = ROOT / "Procfile"


def production_gunicorn_args(procfile: Path = PROCFILE) -> tuple[str, ...]:
    """The options of the Procfile's web command, without its bind address and app: both apps are served
    as production serves the web app. --gunicorn overrides them to try other settings."""
    for line in procfile.read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() != "web":
            continue
        words = shlex.split(command)
        options = words[words.index("gunicorn") + 1 : -1]  # the last word is the app: "web:create_app()"
        kept: list[str] = []
        skip_next = False
        for word in options:
            if skip_next:
                skip_next = False
            elif word in ("-b", "--bind"):
                skip_next = True
            elif not word.startswith("--bind="):
                kept.append(word)
        return tuple(kept)
    raise RuntimeError(f"no web command in {procfile}")


GOAL_P99_MS_AT_4 = 15.0
GOAL_SHARE_OF_FLOOR = 0.40
CHARGES_QUEUE = "charges"  # celeryconfig.task_routes: where a charge's message waits for a worker
NUMBER_PREFIX = "BENCH-Q-"
CARD_CLIENTS = 4


@contextmanager
def servers() -> Iterator[tuple[str, RedisServer]]:
    """(PostgreSQL database URL, redis server), both thrown away on exit, also on errors and Ctrl-C."""
    with ExitStack() as stack:
        redis_server = RedisServer()
        stack.callback(redis_server.close)
        pg = PostgresServer()
        stack.callback(pg.stop)
        yield pg.create_database("bench"), redis_server


def serve_web(st: Stack, gunicorn_args: tuple[str, ...]) -> None:
    """Replace the stack's gunicorn by one with `gunicorn_args`, on the same port."""
    st.kill("web", signal.SIGTERM)
    st.start(
        "web", [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{st.web_port}", *gunicorn_args, "web:create_app()"]
    )
    wait_for_port(st.web_port, 30)


def serve_floor(st: Stack, gunicorn_args: tuple[str, ...]) -> int:
    create_scratch_table(st.database_url)
    port = free_port()
    st.start(
        "floor", [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", *gunicorn_args, "bench.floor_app:app"]
    )
    wait_for_port(port, 30)
    return port


def seed_invoices(st: Stack, engine: Engine, count: int, prefix: str = NUMBER_PREFIX) -> list[int]:
    """`count` chargeable invoices spread over a few clients with a saved card; returns their ids."""
    client_ids = [st.client_with_card("pm_card_visa")["id"] for _ in range(CARD_CLIENTS)]
    rows = [
        {
            "number": f"{prefix}{n:07d}",
            "client_id": client_ids[n % len(client_ids)],
            "currency": "usd",
            "total": 1_000 + n % 1_000,
            "due_date": date.today(),
            "payment_method": "online_card",
        }
        for n in range(count)
    ]
    with Session(engine) as session, session.begin():
        session.execute(insert(Invoice), rows)
        ids = session.scalars(
            select(Invoice.id).where(Invoice.number.startswith(prefix)).order_by(Invoice.id)
        ).all()
    return list(ids)


# ---- the load generator --------------------------------------------------------------------------------


@dataclass
class Level:
    """What one concurrency level measured: latencies of the requests inside the window."""

    app: str
    clients: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    accepted_ids: list[int] = field(default_factory=list)
    ran_out: bool = False

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def post(port: int, path: str, headers: dict[str, str], body: bytes) -> int:
    """One POST on its own connection (as gunicorn's sync workers want it); returns the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _client(
    port: int,
    path_template: str,
    invoice_ids: list[int],
    next_index: Synchronized,  # type: ignore[type-arg]
    start_at: float,
    measure_from: float,
    measure_until: float,
    out: Connection,
) -> None:
    """One closed-loop client: POST, wait for the answer, POST again, until the window closes."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Connection": "close"}
    body = b"{}"
    latencies = array("d")
    statuses: dict[int, int] = {}
    accepted = array("q")
    ran_out = False
    while time.monotonic() < start_at:
        time.sleep(0.001)
    while time.monotonic() < measure_until:
        # Taken one by one from a shared counter: what was posted is always a prefix of the list.
        with next_index.get_lock():
            index = next_index.value
            next_index.value += 1
        if index >= len(invoice_ids):
            ran_out = True
            break
        invoice_id = invoice_ids[index]
        began = time.monotonic()
        status = post(port, path_template.format(invoice_id=invoice_id), headers, body)
        ended = time.monotonic()
        statuses[status] = statuses.get(status, 0) + 1
        if status == 202:
            accepted.append(invoice_id)
        if began >= measure_from and ended <= measure_until:
            latencies.append((ended - began) * 1000)
    out.send((latencies.tobytes(), statuses, accepted.tobytes(), ran_out))
    out.close()


def load(
    app: str,
    port: int,
    path_template: str,
    invoice_ids: list[int],
    clients: int,
    warmup: float,
    seconds: float,
) -> Level:
    """`clients` processes POSTing for `warmup` + `seconds`; the invoice ids are shared out one by one."""
    ctx = multiprocessing.get_context("fork")
    next_index = ctx.Value("q", 0)
    start_at = time.monotonic() + 0.5  # every process forked and waiting before the first request
    measure_from = start_at + warmup
    measure_until = measure_from + seconds
    pipes = []
    procs = []
    for _ in range(clients):
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_client,
            args=(
                port,
                path_template,
                invoice_ids,
                next_index,
                start_at,
                measure_from,
                measure_until,
                sender,
            ),
        )
        proc.start()
        sender.close()
        pipes.append(receiver)
        procs.append(proc)
    level = Level(app, clients, seconds)
    for receiver, proc in zip(pipes, procs, strict=True):
        raw_latencies, statuses, raw_accepted, ran_out = receiver.recv()
        proc.join()
        level.latencies_ms.extend(array("d", raw_latencies))
        level.accepted_ids.extend(array("q", raw_accepted))
        for status, n in statuses.items():
            level.statuses[status] = level.statuses.get(status, 0) + n
        level.ran_out |= ran_out
    return level


# ---- the run -------------------------------------------------------------------------------------------


@dataclass
class Result:
    gunicorn_args: tuple[str, ...]
    floor: list[Level] = field(default_factory=list)
    enqueue: list[Level] = field(default_factory=list)
    attempts: int = 0
    double_attempts: int = 0
    missing_attempts: int = 0
    unpublished: int = 0
    broker_messages: int = 0
    log_dir: Path | None = None

    @property
    def accepted(self) -> int:
        return sum(len(level.accepted_ids) for level in self.enqueue)

    @property
    def violations(self) -> list[str]:
        found = []
        for level in self.floor + self.enqueue:
            others = {s: n for s, n in level.statuses.items() if s != 202}
            if others:
                found.append(f"{level.app} at {level.clients} clients answered {others}")
        if self.missing_attempts:
            found.append(f"{self.missing_attempts} accepted charges without an attempt row")
        if self.double_attempts:
            found.append(f"{self.double_attempts} invoices with more than one attempt")
        if self.unpublished:
            found.append(f"{self.unpublished} outbox messages not published")
        if self.broker_messages != self.accepted:
            found.append(f"{self.broker_messages} charge messages on the broker for {self.accepted} accepted")
        return found


def run(args: argparse.Namespace) -> Result:
    result = Result(args.gunicorn_args)
    with servers() as (database_url, redis_server):
        broker_url = f"{redis_server.url}/1"
        # No Celery worker: the web path alone. Messages wait on the broker, where they are counted.
        st = Stack(database_url, broker_url, workers=0)
        result.log_dir = st.dir
        with measuring(st) as engine:
            _bench(st, engine, broker_url, result, args)
    return result


def _bench(st: Stack, engine: Engine, broker_url: str, result: Result, args: argparse.Namespace) -> None:
    serve_web(st, args.gunicorn_args)
    floor_port = serve_floor(st, args.gunicorn_args)
    invoice_ids = seed_invoices(st, engine, args.invoices)
    floor_ids = list(range(len(invoice_ids) * 10))  # the floor needs no invoices, only as many turns
    charges = "/api/invoices/{invoice_id}/charges"
    remaining = invoice_ids
    for clients in args.clients:
        # Floor and enqueue side by side at each level, so that a noisy moment hits both alike.
        result.floor.append(load("floor", floor_port, "/", floor_ids, clients, args.warmup, args.seconds))
        level = load("enqueue", st.web_port, charges, remaining, clients, args.warmup, args.seconds)
        result.enqueue.append(level)
        used = sum(level.statuses.values())
        remaining = remaining[used:]
        if level.ran_out:
            print(f"warning: ran out of invoices at {clients} clients; raise --invoices", file=sys.stderr)

    accepted = [i for level in result.enqueue for i in level.accepted_ids]
    with Session(engine) as session:
        per_invoice = session.execute(
            select(ChargeAttempt.invoice_id, func.count())
            .join(Invoice, Invoice.id == ChargeAttempt.invoice_id)
            .where(Invoice.number.startswith(NUMBER_PREFIX))
            .group_by(ChargeAttempt.invoice_id)
        ).all()
        result.unpublished = (
            session.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.published_at.is_(None))
            )
            or 0
        )
    counts = dict(per_invoice)
    result.attempts = sum(counts.values())
    result.double_attempts = sum(1 for n in counts.values() if n > 1)
    result.missing_attempts = sum(1 for i in accepted if i not in counts)
    broker = redis.Redis.from_url(broker_url)
    try:
        result.broker_messages = int(broker.llen(CHARGES_QUEUE))
    finally:
        broker.close()
    with engine.connect() as conn:
        floor_rows = conn.execute(text("select count(*) from bench_floor")).scalar_one()
    if floor_rows != sum(sum(level.statuses.values()) for level in result.floor):
        print(f"note: the floor table has {floor_rows} rows", file=sys.stderr)


def table(r: Result) -> str:
    floor_peak = max((level.requests_per_second for level in r.floor), default=0.0)
    enqueue_peak = max((level.requests_per_second for level in r.enqueue), default=0.0)
    share = enqueue_peak / floor_peak if floor_peak else 0.0
    lines = [
        f"gunicorn {' '.join(r.gunicorn_args)} (both apps); Celery workers stopped: the web path only",
        "",
        f"{'clients':>7}  {'app':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9}  vs floor",
    ]
    for floor, enqueue in zip(r.floor, r.enqueue, strict=True):
        for level in (floor, enqueue):
            ratio = ""
            if level is enqueue and floor.requests_per_second:
                ratio = f"{enqueue.requests_per_second / floor.requests_per_second:.0%} of req/s"
                if floor.percentile(99):
                    ratio += f", p99 x{enqueue.percentile(99) / floor.percentile(99):.1f}"
            lines.append(
                f"{level.clients:>7}  {level.app:<8} {level.requests_per_second:>8.1f} "
                f"{level.percentile(50):>8.1f} {level.percentile(99):>8.1f} "
                f"{len(level.latencies_ms):>9}  {ratio}"
            )
    lines.append("")
    at_4 = next((level for level in r.enqueue if level.clients == 4), None)
    if at_4 is not None:
        p99 = at_4.percentile(99)
        met = "met" if p99 <= GOAL_P99_MS_AT_4 else "NOT met"
        lines.append(f"goal: enqueue p99 at 4 clients <= {GOAL_P99_MS_AT_4:.0f} ms: {p99:.1f} ms, {met}")
    met = "met" if share >= GOAL_SHARE_OF_FLOOR else "NOT met"
    lines.append(
        f"goal: saturated enqueue >= {GOAL_SHARE_OF_FLOOR:.0%} of the floor: "
        f"{enqueue_peak:.0f} / {floor_peak:.0f} req/s = {share:.0%}, {met}"
    )
    lines.append(
        f"checks: {r.accepted} accepted, {r.attempts} attempt rows, {r.broker_messages} on the broker, "
        f"{r.unpublished} unpublished, {r.double_attempts} invoices charged twice"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clients",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 4, 20],
        help="concurrency levels, comma-separated (default 1,4,20)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per level and app")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before each window")
    parser.add_argument("--invoices", type=int, default=30_000, help="eligible invoices to seed")
    parser.add_argument(
        "--gunicorn",
        dest="gunicorn_args",
        type=lambda s: tuple(s.split()),
        default=None,
        help="gunicorn options for both apps (default: those of the Procfile's web command)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.seconds <= 0 or args.warmup < 0 or args.invoices < 1:
        parser.error("--clients must be >= 1, --seconds > 0, --warmup >= 0, --invoices >= 1")
    if args.gunicorn_args is None:
        args.gunicorn_args = production_gunicorn_args()

    def report(result: Result) -> None:
        print(table(result))
        if args.json:
            print(
                json.dumps(
                    {
                        level.app + f"@{level.clients}": {
                            "rps": round(level.requests_per_second, 1),
                            "p50_ms": round(level.percentile(50), 2),
                            "p99_ms": round(level.percentile(99), 2),
                        }
                        for level in result.floor + result.enqueue
                    }
                )
            )

    return bench_main(
        lambda: run(args),
        report,
        ok="OK: every accepted charge has its attempt and its broker message; no invoice charged twice",
    )


if __name__ == "__main__":
    sys.exit(main())

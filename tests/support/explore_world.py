"""The database side of the charge model (tests/support/charge_model.py): one migrated database reset
between sequences, the concurrent sessions its races run on, and a snapshot of the rows its invariants
read after every step.

What a sequence costs is mostly round trips to the database, so the harness spends as few as it can
without changing what the product does: the database is emptied in one statement (no TRUNCATE: that
makes new files for every table), the harness's own reads are one snapshot per change (re-read only
after something committed), its engine does not ping a connection it has just used, and a race on
PostgreSQL resumes the paused operation as soon as the other one waits on a lock (pg_stat_activity),
not after a fixed pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Row, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import make_engine
from shared.domain.models import ChargeAttempt, Invoice, Payment

# How long a race waits for one of its operations before it gives up on it (a hang is a failure then).
RACE_TIMEOUT_SECONDS = 30.0

# ---- races on real sessions ---------------------------------------------------------------------------


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None


class Interleaver:
    """Runs `first` and `second` side by side on their own connections: `first` is paused before its
    `pause_at`-th SQL statement while `second` runs (or waits on a lock `first` holds, then `first` goes
    on). On SQLite a transaction holds the database's write lock from BEGIN IMMEDIATE, so a pause inside
    one means `second` runs after it. On PostgreSQL `first` goes on once `second` has finished or its
    backend waits on a lock (pg_stat_activity: the lock is the paused `first`'s, nobody else holds one)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._local = threading.local()
        self._paused = threading.Event()
        self._resume = threading.Event()
        self._second_pid: int | None = None
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._ended)
        event.listen(engine, "rollback", self._ended)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        event.remove(self.engine, "commit", self._ended)
        event.remove(self.engine, "rollback", self._ended)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        local = self._local
        if getattr(local, "second", False) and not self.sqlite:
            self._second_pid = cursor.connection.info.backend_pid
        if getattr(local, "pause_at", None) is None:
            return
        local.count += 1
        if local.count == local.pause_at:
            # Before a BEGIN is between two transactions.
            self._paused_inside = local.in_transaction and not statement.startswith("BEGIN")
            self._paused.set()
            self._resume.wait(timeout=RACE_TIMEOUT_SECONDS)

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("BEGIN"):
            self._local.in_transaction = True

    def _ended(self, conn: Any) -> None:
        self._local.in_transaction = False

    def run(
        self,
        first: Callable[[], Any],
        second: Callable[[], Any],
        pause_at: int,
        *,
        holders: tuple[str, str],
        name_holder: Callable[[str], None],
    ) -> tuple[Outcome, Outcome]:
        self._paused.clear()
        self._resume.clear()
        self._paused_inside = False
        self._second_pid = None
        results = (Outcome(), Outcome())

        def run_first() -> None:
            local = self._local
            local.pause_at, local.count, local.in_transaction = pause_at, 0, False
            name_holder(holders[0])
            try:
                results[0].value = first()
            except BaseException as exc:  # a crash is an outcome here
                results[0].error = exc
            finally:
                local.pause_at = None
                self._paused.set()

        def run_second() -> None:
            self._local.second = True
            name_holder(holders[1])
            try:
                results[1].value = second()
            except BaseException as exc:
                results[1].error = exc
            finally:
                self._local.second = False

        one = threading.Thread(target=run_first)
        two = threading.Thread(target=run_second)
        one.start()
        self._paused.wait(timeout=RACE_TIMEOUT_SECONDS)
        if self.sqlite and self._paused_inside and one.is_alive():
            self._resume.set()  # the write lock is held: the second can only run after the first
            one.join()
            two.start()
            two.join()
        else:
            two.start()
            if self.sqlite:
                two.join(timeout=RACE_TIMEOUT_SECONDS)
            else:
                self._until_finished_or_waiting_on_a_lock(two)
            self._resume.set()
            one.join()
            two.join()
        return results

    def _until_finished_or_waiting_on_a_lock(self, two: threading.Thread) -> None:
        deadline = time.monotonic() + RACE_TIMEOUT_SECONDS
        pause = 0.0005  # then twice as long each time, up to 10 ms: a quick `second` is not held up
        # Autocommit: PostgreSQL takes one snapshot of pg_stat_activity per transaction.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
            while two.is_alive() and time.monotonic() < deadline:
                pid = self._second_pid
                if pid is not None:
                    waiting = watcher.execute(
                        text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                    ).scalar()
                    if waiting == "Lock":
                        return
                two.join(timeout=pause)
                pause = min(pause * 2, 0.01)


# ---- the world: one database, reset between sequences -------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The rows the invariants read, as committed after a step: plain rows (Core, not ORM objects, which
    cost several times the query to build), with the mapped classes' column names."""

    attempts: list[Row[Any]]  # by created_at, then invoice: a replayed sequence picks the same ones
    invoices: list[Row[Any]]
    payments: list[Row[Any]]


@dataclass
class World:
    """One migrated database (reset for each sequence) and the engine the product runs on."""

    url: str
    engine: Engine = field(init=False)
    factory: sessionmaker[Session] = field(init=False)
    interleaver: Interleaver = field(init=False)
    commits: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        # No pre-ping: nothing closes the harness's connections under it, and a ping is a round trip
        # for every checkout. Every other setting is the product's (shared.adapters.database).
        self.engine = make_engine(self.url, pool_pre_ping=False)
        self.factory = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.interleaver = Interleaver(self.engine)
        event.listen(self.engine, "commit", self._committed)
        self._snapshot: tuple[int, Snapshot] | None = None
        self.postgresql = self.engine.dialect.name == "postgresql"
        with self.engine.connect() as connection:
            self.tables = [
                name
                for (name,) in connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    if self.postgresql
                    else text("SELECT name FROM sqlite_master WHERE type = 'table'")
                )
                if name != "alembic_version" and not name.startswith("sqlite_")
            ]
        if self.postgresql:
            # One round trip empties every table and restarts every sequence: rows are deleted with the
            # foreign keys' triggers off for this transaction only (the test server's user is a superuser),
            # and setval does not rewrite the sequence as ALTER SEQUENCE ... RESTART does.
            deletes = " ".join(f'DELETE FROM "{name}";' for name in self.tables)
            self._reset_sql = (
                "DO $$ BEGIN SET LOCAL session_replication_role = replica; "
                f"{deletes} "
                "PERFORM setval(c.oid, 1, false) FROM pg_class c "
                "WHERE c.relkind = 'S' AND c.relnamespace = 'public'::regnamespace; END $$"
            )

    def _committed(self, _connection: Any) -> None:
        self.commits += 1

    def reset(self) -> None:
        with self.engine.begin() as connection:
            if self.postgresql:
                connection.exec_driver_sql(self._reset_sql)
            else:
                connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
                for name in self.tables:
                    connection.exec_driver_sql(f'DELETE FROM "{name}"')

    def snapshot(self) -> Snapshot:
        """What is committed now; read again only once something committed since the last read (the
        product and the model write through this engine alone)."""
        commits = self.commits
        if self._snapshot is not None and self._snapshot[0] == commits:
            return self._snapshot[1]
        attempts, invoices, payments = (t.__table__ for t in (ChargeAttempt, Invoice, Payment))
        # On PostgreSQL without a transaction (no BEGIN and ROLLBACK round trips): nothing else runs
        # between two steps, so the three statements see the same rows.
        options = {"isolation_level": "AUTOCOMMIT"} if self.postgresql else {}
        with self.engine.connect().execution_options(**options) as connection:
            snapshot = Snapshot(
                list(
                    connection.execute(
                        select(attempts).order_by(attempts.c.created_at, attempts.c.invoice_id)
                    )
                ),
                list(connection.execute(select(invoices).order_by(invoices.c.id))),
                list(connection.execute(select(payments).order_by(payments.c.id))),
            )
        self._snapshot = (commits, snapshot)
        return snapshot

    def close(self) -> None:
        event.remove(self.engine, "commit", self._committed)
        self.interleaver.close()
        self.engine.dispose()

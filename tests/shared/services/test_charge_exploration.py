"""The charge path explored: tests/support/charge_model.py's state machine on SQLite and PostgreSQL, the
exactly-once invariants asserted after every step and once everything has settled.

`make test` runs a bounded budget (DEFAULT_EXAMPLES, or EXPLORE_EXAMPLES, sequences of at most
EXPLORE_STEPS steps per database); `make explore` runs the same machine much longer.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from sqlalchemy import make_url

from shared.adapters.migrate import upgrade
from tests.support.charge_model import REACHED, World, machine_for
from tests.support.explore_world import RACE_TIMEOUT_SECONDS
from tests.support.services import PostgresServer

# `make test`'s budget when EXPLORE_EXAMPLES does not set one: about half a minute per database on a busy
# 2-core machine (a sequence costs about 0.2 s of CPU on SQLite, 0.4 s on PostgreSQL, server included).
DEFAULT_EXAMPLES = {"sqlite": 60, "postgresql": 25}
STEPS = int(os.environ.get("EXPLORE_STEPS", "30"))
# EXPLORE_SHRINK=0: report a counterexample as found (the mutant runs only need a verdict).
PHASES = (
    tuple(Phase)
    if os.environ.get("EXPLORE_SHRINK", "1") != "0"
    else (Phase.explicit, Phase.reuse, Phase.generate)
)


def server_cpu_seconds(server: PostgresServer) -> float:
    """CPU the PostgreSQL server has used so far: the postmaster, the backends it reaped, the live ones
    (Linux /proc; the wall time of a shared machine says little, its CPU time is steadier)."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((server.dir / "data" / "postmaster.pid").read_text().split()[0])
    total = 0
    for pid in [
        postmaster,
        *map(int, Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()),
    ]:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11 : 15 if pid == postmaster else 13])
    return total / tick


def explore(world: World, server_cpu: Callable[[], float] | None = None) -> None:
    dialect = world.engine.dialect.name
    examples = int(os.environ.get("EXPLORE_EXAMPLES", DEFAULT_EXAMPLES[dialect]))
    started = time.monotonic()
    cpu = time.process_time()
    server_started = server_cpu() if server_cpu else 0.0
    REACHED.clear()
    run_state_machine_as_test(
        machine_for(world),
        settings=settings(
            max_examples=examples,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            phases=PHASES,
        ),
    )
    print(
        f"explored {examples} sequences of up to {STEPS} steps on {dialect} "
        f"in {time.monotonic() - started:.1f} s (CPU: {time.process_time() - cpu:.1f} s here"
        + (f", {server_cpu() - server_started:.1f} s in the database server" if server_cpu else "")
        + "); sequences that reached: "
        + ", ".join(f"{what}: {n}" for what, n in sorted(REACHED.items()))
    )


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    # In memory where the machine has a tmpfs: a WAL checkpoint's fsync then waits for no disk.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as directory:
        url = f"sqlite:///{Path(directory) / 'explore.db'}"
        upgrade(url)
        world = World(url)
        yield world
        world.close()


@pytest.fixture
def postgres_world(postgres_server: PostgresServer) -> Iterator[World]:
    url = postgres_server.create_database("explore")
    upgrade(url)
    # Over the server's Unix socket: a round trip costs less than over loopback TCP, and a sequence is
    # mostly round trips.
    socket = make_url(url).set(
        host=None, port=None, query={"host": str(postgres_server.dir), "port": str(postgres_server.port)}
    )
    world = World(socket.render_as_string(hide_password=False))
    yield world
    world.close()


def test_charge_path_explored_on_sqlite(sqlite_world: World) -> None:
    explore(sqlite_world)


@pytest.mark.postgres
def test_charge_path_explored_on_postgresql(postgres_world: World, postgres_server: PostgresServer) -> None:
    explore(postgres_world, lambda: server_cpu_seconds(postgres_server))


@pytest.mark.postgres
def test_a_race_goes_on_once_the_second_operation_waits_on_the_paused_ones_lock(
    postgres_world: World,
) -> None:
    """The Interleaver resumes the paused operation when the other waits on its row lock (seen in
    pg_stat_activity), well before the race's timeout."""
    engine = postgres_world.engine
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE race_probe (id int PRIMARY KEY, n int NOT NULL)")
        connection.exec_driver_sql("INSERT INTO race_probe VALUES (1, 1)")

    def first() -> None:
        with engine.begin() as connection:
            connection.exec_driver_sql("SELECT n FROM race_probe WHERE id = 1 FOR UPDATE")
            connection.exec_driver_sql("UPDATE race_probe SET n = n + 1 WHERE id = 1")  # paused before this

    def second() -> None:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE race_probe SET n = n * 10 WHERE id = 1")

    started = time.monotonic()
    outcomes = postgres_world.interleaver.run(
        first, second, 2, holders=("a", "b"), name_holder=lambda _: None
    )
    took = time.monotonic() - started
    with engine.begin() as connection:
        n = connection.exec_driver_sql("SELECT n FROM race_probe").scalar_one()
        connection.exec_driver_sql("DROP TABLE race_probe")
    assert [o.error for o in outcomes] == [None, None]
    assert n == 20, "the second update ran before the first one's (it did not wait on the lock)"
    assert took < RACE_TIMEOUT_SECONDS / 2, f"the race waited {took:.1f} s: the lock wait went unseen"

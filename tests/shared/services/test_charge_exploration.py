"""The charge path explored: tests/support/charge_model.py's state machine on SQLite and PostgreSQL, the
exactly-once invariants asserted after every step and once everything has settled.

`make test` runs a bounded budget (EXPLORE_EXAMPLES sequences of at most EXPLORE_STEPS steps per
database); `make explore` runs the same machine much longer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from shared.adapters.migrate import upgrade
from tests.support.charge_model import REACHED, World, machine_for
from tests.support.services import PostgresServer

EXAMPLES = int(os.environ.get("EXPLORE_EXAMPLES", "20"))
STEPS = int(os.environ.get("EXPLORE_STEPS", "30"))
# EXPLORE_SHRINK=0: report a counterexample as found (the mutant runs only need a verdict).
PHASES = (
    tuple(Phase)
    if os.environ.get("EXPLORE_SHRINK", "1") != "0"
    else (Phase.explicit, Phase.reuse, Phase.generate)
)


def explore(world: World) -> None:
    started = time.monotonic()
    REACHED.clear()
    run_state_machine_as_test(
        machine_for(world),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            phases=PHASES,
        ),
    )
    print(
        f"explored {EXAMPLES} sequences of up to {STEPS} steps on {world.engine.dialect.name} "
        f"in {time.monotonic() - started:.1f} s; sequences that reached: "
        + ", ".join(f"{what}: {n}" for what, n in sorted(REACHED.items()))
    )


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'explore.db'}"
    upgrade(url)
    world = World(url)
    yield world
    world.close()


@pytest.fixture
def postgres_world(postgres_server: PostgresServer) -> Iterator[World]:
    url = postgres_server.create_database("explore")
    upgrade(url)
    world = World(url)
    yield world
    world.close()


def test_charge_path_explored_on_sqlite(sqlite_world: World) -> None:
    explore(sqlite_world)


@pytest.mark.postgres
def test_charge_path_explored_on_postgresql(postgres_world: World) -> None:
    explore(postgres_world)

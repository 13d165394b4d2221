"""What the views share: the process's Runtime (shared.bootstrap), which create_app() built."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters import database
from shared.adapters.database import UnitOfWork
from shared.bootstrap import Runtime
from shared.services.ports import StripePort

RUNTIME_KEY = "offsession"


def runtime() -> Runtime:
    runtime: Runtime = current_app.extensions[RUNTIME_KEY]
    return runtime


def sessions() -> sessionmaker[Session]:
    return runtime().sessions


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction of the request: committed when the block ends normally, rolled back if it raises."""
    with database.session_scope(runtime().sessions) as session:
        yield session


def unit_of_work() -> UnitOfWork:
    """One transaction whose outbox messages are published once it has committed."""
    return runtime().unit_of_work()


def gateway() -> StripePort:
    return runtime().gateway


def publish(task_name: str, payload: dict[str, Any], countdown: float | None) -> None:
    runtime().publisher(task_name, payload, countdown)

"""The composition root: what every process runs with, built once, from one configuration.

`bootstrap(config)` is called by `web.create_app()`, by the Celery app (worker/) and by the `offsession`
command (cli/); tests call it with their own configuration and fakes (a gateway, a publisher, a mailer).
Each part is built on first use and then kept for the life of the Runtime: a process that never sends
an email builds no mailer, and a forked worker process builds its own connections (`after_fork`).
Nothing else in the product keeps a process-wide singleton.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import UnitOfWork, make_engine, make_sessionmaker, pool_limits_for_threads
from shared.adapters.drain_flag import DrainRequests, drain_requests_from_config
from shared.adapters.mail import mailer_from_config
from shared.adapters.publisher import celery_publisher
from shared.adapters.rate_budget import rate_limited_gateway
from shared.config import Config, load_config
from shared.services.leases import LeaseKeeper
from shared.services.ports import Mailer, Publisher, StripePort

__all__ = ["Runtime", "bootstrap"]

T = TypeVar("T")


class Runtime:
    """The configuration and the adapters of one process. Parts given to the constructor are used as
    they are; the others are built from the configuration on first use, once (thread-safe)."""

    def __init__(
        self,
        config: Config,
        *,
        engine: Engine | None = None,
        gateway: StripePort | None = None,
        publisher: Publisher | None = None,
        mailer: Mailer | None = None,
        drain_requests: DrainRequests | None = None,
    ) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._parts: dict[str, object] = {}
        self._pool_limits: dict[str, int] = {}
        for name, part in (
            ("engine", engine),
            ("gateway", gateway),
            ("publisher", publisher),
            ("mailer", mailer),
            ("drain_requests", drain_requests),
        ):
            if part is not None:
                self._parts[name] = part

    def _once(self, name: str, build: Callable[[], T]) -> T:
        part = self._parts.get(name)
        if part is None:
            with self._lock:
                part = self._parts.get(name)
                if part is None:
                    part = self._parts[name] = build()
        return part  # type: ignore[return-value]

    # ---- the database --------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self._once("engine", lambda: make_engine(self.config.database_url, **self._pool_limits))

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory: one Session per transaction (`with runtime.sessions() as session`)."""
        return self._once("sessions", lambda: make_sessionmaker(self.engine))

    def unit_of_work(self) -> UnitOfWork:
        """A new unit of work: one transaction whose outbox messages are published once it commits."""
        return UnitOfWork(self.engine, self.publisher)

    def size_pool_for_threads(self, threads: int) -> None:
        """Give the engine a connection per task thread (a threads-pool worker). Only before first use:
        an engine built already keeps its limits."""
        with self._lock:
            if "engine" in self._parts:
                raise RuntimeError("the engine is built already: size its pool before the first use")
            self._pool_limits = pool_limits_for_threads(threads)

    def after_fork(self) -> None:
        """In a forked child: database connections must not cross a fork, each process opens its own."""
        engine = self._parts.get("engine")
        if isinstance(engine, Engine):
            engine.dispose(close=False)

    def close(self) -> None:
        """Close the database connections this runtime opened (tests, commands that end)."""
        engine = self._parts.get("engine")
        if isinstance(engine, Engine):
            engine.dispose()

    # ---- the outside world ---------------------------------------------------------------------------

    @property
    def gateway(self) -> StripePort:
        """Stripe, each call taking a token from the account's shared rate budget (shared.adapters.
        rate_budget), its wait and latency recorded for /metrics."""
        return self._once("gateway", lambda: rate_limited_gateway(self.config, self.sessions))

    @property
    def publisher(self) -> Publisher:
        return self._once("publisher", lambda: celery_publisher(self.config))

    def ensure_broker_connection(self, timeout: float) -> None:
        """Raise unless the broker answers within `timeout` seconds. A publisher given to bootstrap()
        that cannot say (a test's) counts as reachable."""
        ensure = getattr(self.publisher, "ensure_connection", None)
        if ensure is not None:
            ensure(timeout)

    @property
    def mailer(self) -> Mailer:
        return self._once("mailer", lambda: mailer_from_config(self.config))

    @property
    def drain_requests(self) -> DrainRequests:
        return self._once("drain_requests", lambda: drain_requests_from_config(self.config))

    @property
    def lease_keeper(self) -> LeaseKeeper:
        """The process's one renewer of charge leases, shared by its task threads."""
        return self._once(
            "lease_keeper", lambda: LeaseKeeper(lambda: self.sessions, self.config.charge_lease_seconds)
        )


def bootstrap(
    config: Config | None = None,
    *,
    engine: Engine | None = None,
    gateway: StripePort | None = None,
    publisher: Publisher | None = None,
    mailer: Mailer | None = None,
    drain_requests: DrainRequests | None = None,
) -> Runtime:
    """The Runtime of a process: `config`, or the environment's (load_config, which refuses an unsafe
    one with ConfigError), and the given parts in place of the configured ones."""
    return Runtime(
        config if config is not None else load_config(),
        engine=engine,
        gateway=gateway,
        publisher=publisher,
        mailer=mailer,
        drain_requests=drain_requests,
    )

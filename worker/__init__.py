"""The Celery app (`celery -A worker worker`, `celery -A worker beat`): thin tasks over shared/."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init, worker_process_init

from worker import log_setup  # noqa: F401  (log_setup connects the logging signals)

app = Celery("offsession")
# Read when the worker or beat starts: an unsafe configuration stops them there (config_or_exit).
app.config_from_object("shared.adapters.celeryconfig")


@worker_process_init.connect
def _fresh_connections_after_fork(**_kwargs: object) -> None:
    # Database connections must not cross a fork: each pool process opens its own.
    from shared.adapters.database import reset_engine_cache

    reset_engine_cache()


@worker_init.connect
def _shared_clients_for_threads(sender: object, **_kwargs: object) -> None:
    """A threads pool (the worker-charges process) runs its tasks in one process: size the database pool
    to the threads, and build the engine and the Stripe gateway before the first task. functools.lru_cache
    may run a factory twice when threads miss at once; the spare engine would hold connections for good."""
    pool_cls = getattr(sender, "pool_cls", None)
    pool_name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    if not any(kind in pool_name for kind in ("thread", "gevent", "eventlet")):
        return  # prefork: each child opens its own after the fork (above)
    from shared.adapters.database import get_sessionmaker, size_pool_for_threads

    threads = getattr(sender, "concurrency", None)
    # Without -c Celery settles on the CPU count later ('auto' is resolved after this signal too).
    # One connection more than threads: the process's lease renewer (shared.services.leases) must not wait for
    # a connection behind 64 busy charges while their leases run out.
    size_pool_for_threads((threads if isinstance(threads, int) and threads > 0 else os.cpu_count() or 1) + 1)
    get_sessionmaker()
    tasks.gateway()


from worker import tasks  # noqa: E402  (registers the tasks)

celery_app = app
__all__ = ["app", "celery_app"]

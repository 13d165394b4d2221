"""The Celery app (`celery -A worker worker`, `celery -A worker beat`): thin tasks over shared/.
An entry point: it imports shared/ (its Runtime from shared.bootstrap), never web/ or cli/.

The process's Runtime (shared.bootstrap) is built here, once, from the environment; an unsafe
configuration stops the worker or beat at import with one line naming the variable (exit status 2).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init

from shared.adapters.celeryconfig import celery_settings
from shared.bootstrap import Runtime, bootstrap
from shared.config import config_or_exit


def _publish(task_name: str, payload: dict[str, Any], countdown: float | None) -> None:
    """The workers publish through their own app (its broker connections), not a second one."""
    app.send_task(task_name, kwargs=payload, countdown=countdown)


runtime: Runtime = bootstrap(config_or_exit(), publisher=_publish)

app = Celery("offsession")
app.conf.update(celery_settings(runtime.config))

from worker import log_setup  # noqa: E402, F401  (log_setup connects the logging signals)


@worker_process_init.connect
def _fresh_connections_after_fork(**_kwargs: object) -> None:
    # Database connections must not cross a fork: each pool process opens its own.
    runtime.after_fork()


@worker_init.connect
def _shared_clients_for_threads(sender: object, **_kwargs: object) -> None:
    """A threads pool (the worker-charges process) runs its tasks in one process: size the database pool
    to the threads, and build the engine and the Stripe gateway before the first task."""
    pool_cls = getattr(sender, "pool_cls", None)
    pool_name = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    if not any(kind in pool_name for kind in ("thread", "gevent", "eventlet")):
        return  # prefork: each child opens its own after the fork (above)
    threads = getattr(sender, "concurrency", None)
    # Without -c Celery settles on the CPU count later ('auto' is resolved after this signal too).
    # One connection more than threads: the process's lease renewer (shared.services.leases) must not
    # wait for a connection behind 64 busy charges while their leases run out.
    runtime.size_pool_for_threads(
        (threads if isinstance(threads, int) and threads > 0 else os.cpu_count() or 1) + 1
    )
    _ = runtime.sessions, runtime.gateway


from worker import tasks  # noqa: E402, F401  (registers the tasks)

celery_app = app
__all__ = ["app", "celery_app", "runtime"]

"""The Celery app (`celery -A worker worker`, `celery -A worker beat`): thin tasks over shared/."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from worker import kombu_fixes, log_setup  # noqa: F401  (log_setup connects the logging signals)

kombu_fixes.install()
app = Celery("offsession")
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_connections_after_fork(**_kwargs: object) -> None:
    # Database connections must not cross a fork: each pool process opens its own.
    from shared.db import reset_engine_cache

    reset_engine_cache()


from worker import tasks  # noqa: E402,F401  (registers the tasks)

celery_app = app
__all__ = ["app", "celery_app"]

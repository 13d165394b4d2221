"""Worker and beat logging: JSON lines through Celery's own handlers, and per task the ids of
what the task works on (the charge attempt, the webhook event, the request that caused it)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    task_postrun,
    task_prerun,
)

from shared.adapters.logs import (
    add_request_id_header,
    install_formatter,
    make_formatter,
    request_id_from_task_request,
)
from shared.log_context import log_context

# Task keyword arguments that are ids, and the name each id has in a log line.
TASK_ARGUMENT_IDS = {
    "attempt_id": "charge_attempt_id",
    "event_id": "webhook_event_row_id",
    "invoice_id": "invoice_id",
}

# The log context of each running task, closed when the task ends (by task id: a thread pool runs
# several at once).
_task_contexts: dict[str, contextlib.ExitStack] = {}


def _formatter() -> logging.Formatter:
    from worker import runtime

    config = runtime.config
    return make_formatter(config.log_format, config.log_secrets())


@after_setup_logger.connect
def _format_worker_logs(logger: logging.Logger, **_kwargs: Any) -> None:
    install_formatter(logger, _formatter())


@after_setup_task_logger.connect
def _format_task_logs(logger: logging.Logger, **_kwargs: Any) -> None:
    install_formatter(logger, _formatter())


@task_prerun.connect
def _bind_task_ids(task_id: str, task: Any, kwargs: dict[str, Any] | None = None, **_extra: Any) -> None:
    ids: dict[str, Any] = {name: (kwargs or {}).get(argument) for argument, name in TASK_ARGUMENT_IDS.items()}
    stack = contextlib.ExitStack()
    stack.enter_context(
        log_context(
            task=task.name,
            task_id=task_id,
            request_id=request_id_from_task_request(task.request),
            **ids,
        )
    )
    _task_contexts[task_id] = stack


@task_postrun.connect
def _unbind_task_ids(task_id: str, **_extra: Any) -> None:
    stack = _task_contexts.pop(task_id, None)
    if stack is not None:
        stack.close()


# Tasks a task publishes (a retry, a notification) carry on the request id it was given.
before_task_publish.connect(add_request_id_header, weak=False, dispatch_uid="offsession-request-id")

"""The ids of what is being worked on, bound for every log line written meanwhile (a contextvar).

Any layer may bind ids as they become known (shared.services binds the invoice and the PaymentIntent of a
charge); shared.adapters.logs writes them on each line. Pure Python: no I/O.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["bind_log_ids", "current_log_ids", "log_context"]

_log_ids: ContextVar[dict[str, Any] | None] = ContextVar("offsession_log_ids", default=None)


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[dict[str, Any]]:
    """Bind ids to every line logged inside the block (nested blocks add to the outer ids)."""
    bound = {**(_log_ids.get() or {}), **{k: v for k, v in ids.items() if v is not None}}
    token = _log_ids.set(bound)
    try:
        yield bound
    finally:
        _log_ids.reset(token)


def bind_log_ids(**ids: Any) -> None:
    """Add ids to the innermost `log_context` as they become known (the invoice once the attempt is
    loaded, the PaymentIntent once Stripe answered). Outside any block this does nothing, so a function
    called directly (a test, a CLI) leaves no ids behind for unrelated lines."""
    bound = _log_ids.get()
    if bound is not None:
        bound.update({k: v for k, v in ids.items() if v is not None})


def current_log_ids() -> dict[str, Any]:
    return dict(_log_ids.get() or {})

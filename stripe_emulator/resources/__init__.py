"""Stripe's v1 resources, one module each; this package's router matches a request to its handler.

Each module lists what it serves in ``ROUTES`` (method, path with ``{id}`` for each path parameter,
handler). The parameters an endpoint takes are Stripe's (``schema.py``), so an endpoint the schema does
not describe cannot be served: building the router fails at import.
"""

from __future__ import annotations

import re

from .. import schema
from . import (
    accounts,
    charges,
    checkout_sessions,
    customers,
    disputes,
    events,
    payment_intents,
    payment_methods,
    refunds,
    setup_intents,
    webhook_endpoints,
)
from .base import Ctx, Handler

__all__ = ["ROUTES", "CompiledRoute", "Ctx", "match"]

# (method, compiled path, handler, the endpoint's parameter contract)
CompiledRoute = tuple[str, re.Pattern[str], Handler, schema.Endpoint]


def compile_routes(modules: tuple[object, ...]) -> list[CompiledRoute]:
    compiled: list[CompiledRoute] = []
    for module in modules:
        for method, pattern, handler in module.ROUTES:  # type: ignore[attr-defined]
            regex = re.compile("^" + pattern.replace("{id}", "([^/]+)") + "$")
            compiled.append((method, regex, handler, schema.endpoint(f"{method} {pattern}")))
    return compiled


ROUTES: list[CompiledRoute] = compile_routes(
    (customers, payment_methods, setup_intents, payment_intents, charges, refunds, disputes, events,
     checkout_sessions, accounts, webhook_endpoints)
)


def match(method: str, path: str) -> tuple[Handler, schema.Endpoint, tuple[str, ...]] | None:
    for m, regex, handler, contract in ROUTES:
        if m == method:
            hit = regex.match(path)
            if hit:
                return handler, contract, hit.groups()
    return None

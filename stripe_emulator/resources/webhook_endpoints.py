"""Webhook endpoints (docs.stripe.com/api/webhook_endpoints): created on an account, they receive its
events of the enabled types, signed with their own secret (returned once, by create). An endpoint
created with ``connect=true`` receives the events of the accounts connected to it instead, with
``account`` set. At most 16 per account, as on Stripe.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from ..schema import API_VERSION
from ..store import new_id
from ..wire import Params, apply_metadata, invalid
from .base import Ctx, Route, get, list_page, render

MAX_ENDPOINTS = 16


def _url(p: Params) -> str:
    url = p.str("url", required=True) or ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(f"Invalid URL: {url}. URLs must begin with http:// or https://.", param="url")
    return url


def _events(p: Params) -> list[str]:
    events = p.list("enabled_events") or []
    if not events:
        raise invalid("Missing required param: enabled_events.", param="enabled_events",
                      code="parameter_missing")
    if "*" in events and len(events) > 1:
        raise invalid("'*' already enables every event: give it alone.", param="enabled_events")
    return [str(e) for e in events]


def endpoint_create(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    url = _url(p)
    events = _events(p)
    version = p.str("api_version") or None
    if version is not None and version != API_VERSION:
        raise invalid(f"This emulator renders events at Stripe API version {API_VERSION} only; create the "
                      f"endpoint with api_version={API_VERSION} or without api_version.",
                      param="api_version")
    connect = p.bool("connect") or False
    if len(ctx.data.webhook_endpoints) >= MAX_ENDPOINTS:
        raise invalid(f"You have reached the maximum of {MAX_ENDPOINTS} test webhook endpoints on this "
                      "account. Delete one before creating another.", param="url")
    secret = "whsec_" + secrets.token_hex(16)
    endpoint = {
        "id": new_id("we_"),
        "object": "webhook_endpoint",
        "api_version": version,
        "application": None,
        "created": ctx.now,
        "description": p.str("description") or None,
        "enabled_events": events,
        "livemode": False,
        "metadata": p.metadata() or {},
        "status": "enabled",
        "url": url,
    }
    ctx.data.webhook_endpoints[endpoint["id"]] = endpoint
    ctx.data.endpoint_private[endpoint["id"]] = {"secret": secret, "connect": connect}
    # The secret is in this answer only (and, so, in a replay of it under the same idempotency key).
    return {**render(ctx, endpoint, p.expand()), "secret": secret}


def endpoint_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    return render(ctx, get(ctx, "webhook_endpoints", args[0], "webhook endpoint"), p.expand())


def endpoint_update(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    endpoint = get(ctx, "webhook_endpoints", args[0], "webhook endpoint")
    changes: dict[str, Any] = {}
    if p.has("url"):
        changes["url"] = _url(p)
    if p.has("enabled_events"):
        changes["enabled_events"] = _events(p)
    if p.has("description"):
        changes["description"] = p.str("description") or None
    if p.has("disabled"):
        changes["status"] = "disabled" if p.bool("disabled") else "enabled"
    metadata = p.metadata()
    if metadata is not None:
        changes["metadata"] = apply_metadata(endpoint["metadata"], metadata)
    endpoint.update(changes)
    return render(ctx, endpoint, p.expand())


def endpoint_delete(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    endpoint = get(ctx, "webhook_endpoints", args[0], "webhook endpoint")
    del ctx.data.webhook_endpoints[endpoint["id"]]
    ctx.data.endpoint_private.pop(endpoint["id"], None)
    return {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}


def endpoint_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    rows = reversed(ctx.data.webhook_endpoints.values())
    return list_page(ctx, p, rows, "/v1/webhook_endpoints", "webhook endpoint")


ROUTES: list[Route] = [
    ("POST", "/v1/webhook_endpoints", endpoint_create),
    ("GET", "/v1/webhook_endpoints", endpoint_list),
    ("GET", "/v1/webhook_endpoints/{id}", endpoint_retrieve),
    ("POST", "/v1/webhook_endpoints/{id}", endpoint_update),
    ("DELETE", "/v1/webhook_endpoints/{id}", endpoint_delete),
]

"""Events as the API lists them: by type (or type prefix), by delivery, newest first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..wire import Params, invalid, no_such
from .base import Ctx, Route, list_page


def _prefix_matcher(prefix: str) -> Callable[[str], bool]:
    return lambda value: value.startswith(prefix)


def event_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    rec = ctx.data.events.get(args[0])
    if rec is None:
        raise no_such("event", args[0])
    return rec.render()


def event_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    wanted = p.str("type") or None
    types = p.list("types")
    if wanted and types:
        raise invalid("You may only specify one of these parameters: type, types.", param="types")
    delivery = p.bool("delivery_success")
    match: Callable[[str], bool] | None = None
    if wanted and wanted.endswith(".*"):
        # "payment_intent.*" matches every payment_intent event.
        match = _prefix_matcher(wanted[:-1])
    elif wanted:
        match = wanted.__eq__
    elif types:
        match = set(types).__contains__
    recs = reversed(ctx.data.events.values())
    if match is not None:
        recs = (r for r in recs if match(r.type))
    if delivery is not None:
        recs = (r for r in recs if (r.pending_webhooks == 0) == delivery)
    # Filter on the cheap record fields, parse JSON only for the page being returned.
    light = ({"id": r.id, "created": r.created, "_rec": r} for r in recs)
    page = list_page(ctx, Params({k: v for k, v in p.data.items() if k != "expand"}),
                      light, "/v1/events", "event")
    page["data"] = [row["_rec"].render() for row in page["data"]]
    return page


ROUTES: list[Route] = [
    ("GET", "/v1/events", event_list),
    ("GET", "/v1/events/{id}", event_retrieve),
]

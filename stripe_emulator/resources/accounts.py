"""The account a request acts for (GET /v1/account): the key's own, or the Stripe-Account's."""

from __future__ import annotations

from typing import Any

from ..wire import Params
from .base import Ctx, Route


def account_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    return ctx.services.registry.accounts[ctx.account].render()


ROUTES: list[Route] = [
    ("GET", "/v1/account", account_retrieve),
]

"""The plumbing every group of Stripe calls shares: the StripeClient, the rate budget's hook, the
metrics observer and the translation of SDK errors into shared.domain.payments errors.

The gateway (shared.adapters.stripe_gateway.StripeGateway) is this plus one mixin per group of calls
(stripe_cards, stripe_payments, ...): a new group of Stripe calls goes in a module of its own whose class
derives from StripeCalls, added to StripeGateway's bases (docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import stripe

from shared.adapters.stripe_wire import (
    STRIPE_API_VERSION,
    STRIPE_NETWORK_RETRIES,
    STRIPE_TIMEOUT_SECONDS,
    CardErrorSignal,
    error_fields,
    is_live_key,
    requests_client,
    translate_error,
)
from shared.config import STRIPE_HOSTED_API_BASE, ConfigError
from shared.domain.payments import (
    TransientStripeError,
)

__all__ = ["AccountCallback", "CallObserver", "StripeCalls"]

# Called with the Stripe-Account a request is made for (None = the platform itself).
AccountCallback = Callable[[str | None], None]
# Told of every API call once it is over: (operation, outcome, seconds); shared.adapters.metrics records it.
CallObserver = Callable[[str, str, float], None]


class StripeCalls:
    """One Stripe account's API, reached through `_call`: every call is counted, timed and translated."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None,
        webhook_secret: str | Sequence[str],
        *,
        max_network_retries: int = STRIPE_NETWORK_RETRIES,
        timeout_seconds: float = STRIPE_TIMEOUT_SECONDS,
        before_request: AccountCallback | None = None,
        before_request_max_seconds: float = 0.0,
        on_rate_limited: AccountCallback | None = None,
        http_client: stripe.HTTPClient | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        """`max_network_retries`: the SDK's own retries (same key) on connection errors, 409 and 5xx;
        StripeClient's default is 0, so it is always explicit here. `before_request` runs before each API
        call (not each SDK retry) and may block, at most `before_request_max_seconds`, to keep a shared
        rate budget; `on_rate_limited` is told of
        every 429. `http_client` replaces the SDK's HTTP transport (tests record requests with it). `on_call`
        is told each call's operation, outcome and duration (metrics); it must not raise."""
        if not api_key:
            raise ConfigError("STRIPE_API_KEY is empty")
        base = api_base.rstrip("/") if api_base else None
        if is_live_key(api_key) and base not in (None, STRIPE_HOSTED_API_BASE):
            raise ConfigError(
                f"STRIPE_API_KEY is a live key but STRIPE_API_BASE is {base!r}; "
                "a live key may only talk to Stripe itself (unset STRIPE_API_BASE)."
            )
        if max_network_retries < 0:
            raise ValueError("max_network_retries must be >= 0")
        self.api_base = base
        self.livemode = is_live_key(api_key)
        self.max_network_retries = max_network_retries
        self.timeout_seconds = timeout_seconds
        self.before_request_max_seconds = before_request_max_seconds
        # Every secret an endpoint of ours signs with (several while one is being rotated).
        self._webhook_secrets = (
            (webhook_secret,) if isinstance(webhook_secret, str) else tuple(webhook_secret)
        )
        self._before_request = before_request
        self._on_rate_limited = on_rate_limited
        self._on_call = on_call
        self._client = stripe.StripeClient(
            api_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": base} if base else None,
            max_network_retries=max_network_retries,
            http_client=http_client or requests_client(timeout_seconds),
        )

    @property
    def longest_call_seconds(self) -> float:
        """The longest one call can take before it returns or raises: the wait in `before_request`, then
        every try the SDK makes (each bounded by the HTTP timeout) and the SDK's backoff between them."""
        tries = self.max_network_retries + 1
        backoff = self.max_network_retries * stripe.HTTPClient.MAX_DELAY
        return self.before_request_max_seconds + tries * self.timeout_seconds + backoff

    # ---- plumbing ----------------------------------------------------------------------------------

    def _call(
        self,
        operation_name: str,
        stripe_account: str | None,
        operation: Callable[[], Any],
        *,
        card_errors: bool = False,
    ) -> dict[str, Any]:
        """Run one API call and return the object as a plain dict; translate every SDK error.
        `operation_name` (the gateway method's name) labels the call's metrics."""
        if self._before_request is not None:
            self._before_request(stripe_account)
        started = time.monotonic()
        outcome = "error"  # anything the SDK did not wrap
        try:
            result = operation()
            outcome = "ok"
        except stripe.CardError as exc:
            outcome = "card_error"
            if card_errors:
                raise CardErrorSignal(error_fields(exc), exc.request_id) from exc
            raise translate_error(exc) from exc
        except stripe.StripeError as exc:
            translated = translate_error(exc)
            outcome = "permanent"
            if isinstance(translated, TransientStripeError):
                outcome = "rate_limited" if translated.rate_limited else "transient"
            if (
                isinstance(translated, TransientStripeError)
                and translated.rate_limited
                and self._on_rate_limited is not None
            ):
                self._on_rate_limited(stripe_account)
            raise translated from exc
        finally:
            if self._on_call is not None:
                self._on_call(operation_name, outcome, time.monotonic() - started)
        # A raw request's JSON is a dict already; an SDK object is turned into one.
        return result if isinstance(result, dict) else result.to_dict()

"""What SetupIntents and PaymentIntents share: the payment method types they take, the 3-D Secure step
and the card error they answer a decline with."""

from __future__ import annotations

from typing import Any

from ..cards import Decline
from ..store import new_id
from ..wire import Params, doc_url, invalid
from .base import Ctx

# Stripe's answer to a confirm that could need a redirect and has no return_url, as quoted in
# github.com/Attendize/Attendize/issues/1115 ("Here's the error message provided by Stripe").
_RETURN_URL_MESSAGE = (
    "A return_url must be specified because this {kind} is configured to automatically accept the "
    "payment methods enabled in the Dashboard, some of which may require a full page redirect to succeed. "
    "If you do not want to accept redirect-based payment methods, set automatic_payment_methods[enabled] "
    "to true and automatic_payment_methods[allow_redirects] to never when creating Setup Intents and "
    "Payment Intents."
)
_CHOICE_FIELDS = ("allowed_payment_method_types", "automatic_payment_methods",
                  "excluded_payment_method_types", "payment_method_types")


def require_return_url(choice: dict[str, Any], return_url: str | None, kind: str) -> None:
    """Dynamic payment methods that may redirect (allow_redirects other than never) need a return_url
    to confirm; a card-only choice (allowed_payment_method_types) does not."""
    apm = choice["automatic_payment_methods"]
    if apm is not None and apm.get("allow_redirects") != "never" and not return_url:
        raise invalid(_RETURN_URL_MESSAGE.format(kind=kind))


def payment_method_choice(p: Params, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The intent fields that say which payment method types it takes, from the request (and, on
    update and confirm, the intent's `current` values). Mutual exclusion and value types were
    checked by the endpoint's contract (schema.py). Since 2026-09-30.endive the choice is
    `allowed_payment_method_types` or dynamic payment methods (`automatic_payment_methods`, on by
    default, with optional `excluded_payment_method_types`)."""
    choice = {key: current.get(key) for key in _CHOICE_FIELDS} if current else {
        "allowed_payment_method_types": None,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "excluded_payment_method_types": None,
    }
    allowed = p.list("allowed_payment_method_types")
    if allowed is not None:
        # Stripe keeps the compatible subset; the emulator's only payment method type is card.
        if "card" not in allowed:
            raise invalid("None of the allowed_payment_method_types can be used here: the emulator "
                          "models card payment methods only.", param="allowed_payment_method_types")
        choice.update(allowed_payment_method_types=allowed, automatic_payment_methods=None,
                      excluded_payment_method_types=None)
    apm_raw = p.dict("automatic_payment_methods")
    if apm_raw is not None:
        enabled = apm_raw["enabled"] == "true"
        choice["automatic_payment_methods"] = (
            {"allow_redirects": apm_raw.get("allow_redirects") or "always", "enabled": True}
            if enabled else None
        )
    if p.has("excluded_payment_method_types"):
        excluded = p.list("excluded_payment_method_types")
        if excluded and "card" in excluded:
            raise invalid("Excluding card leaves no payment method type: the emulator models card "
                          "payment methods only.", param="excluded_payment_method_types")
        choice["excluded_payment_method_types"] = excluded or None
    choice["payment_method_types"] = ["card"]
    return choice


def next_action(ctx: Ctx, obj_id: str, return_url: str | None, use_stripe_sdk: bool) -> dict[str, Any]:
    """Server-side confirmation with a return_url redirects to a 3-D Secure page (here the
    emulator's own /_emulator/3ds/...); otherwise Stripe.js handles it (use_stripe_sdk)."""
    page = f"{ctx.base_url}/_emulator/3ds/{obj_id}"
    if return_url and not use_stripe_sdk:
        return {"type": "redirect_to_url", "redirect_to_url": {"return_url": return_url, "url": page}}
    sdk: dict[str, Any] = {"type": "three_d_secure_redirect", "stripe_js": page, "source": new_id("src_")}
    if return_url:
        # Stripe's contents here are opaque ("only intended to be used by Stripe.js"); the emulator
        # keeps the confirm's return_url in them so its 3-D Secure page can send the browser back.
        sdk["return_url"] = return_url
    return {"type": "use_stripe_sdk", "use_stripe_sdk": sdk}


def card_error(decline: Decline, pm: dict[str, Any], charge: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {}
    if decline.advice_code:
        error["advice_code"] = decline.advice_code
    if charge:
        error["charge"] = charge
    error.update(code=decline.code, decline_code=decline.decline_code, doc_url=doc_url(decline.code),
                 message=decline.message, payment_method=dict(pm), type="card_error")
    return error



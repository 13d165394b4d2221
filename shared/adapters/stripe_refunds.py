"""Refunds at Stripe (docs.stripe.com/api/refunds/create, /retrieve, /list at the pinned version)."""

from __future__ import annotations

from collections.abc import Mapping

from stripe.params import RefundCreateParams, RefundListParams

from shared.adapters.stripe_calls import StripeCalls
from shared.adapters.stripe_wire import LIST_PAGE_SIZE, request_options
from shared.domain.payments import RefundView, refund_view

__all__ = ["RefundCalls"]


class RefundCalls(StripeCalls):
    """Create a refund of a PaymentIntent under our key, read one back, find ours by metadata."""

    def create_refund(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str,
        amount: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        stripe_account: str | None = None,
    ) -> RefundView:
        """Refund all (amount=None) or part of a succeeded PaymentIntent. A replay under the same key
        with the same parameters answers the first refund. Raises TransientStripeError (no answer:
        replay) or PermanentStripeError (Stripe refused it, e.g. more than remains, a disputed charge)."""
        params: RefundCreateParams = {"payment_intent": payment_intent_id}
        if amount is not None:
            if amount <= 0:
                raise ValueError("a refund amount must be positive")
            params["amount"] = amount
        if reason is not None:
            params["reason"] = reason
        if metadata:
            params["metadata"] = dict(metadata)
        data = self._call(
            "create_refund",
            stripe_account,
            lambda: self._client.v1.refunds.create(
                params, options=request_options(idempotency_key, stripe_account)
            ),
        )
        return refund_view(data)

    def retrieve_refund(self, refund_id: str, *, stripe_account: str | None = None) -> RefundView:
        data = self._call(
            "retrieve_refund",
            stripe_account,
            lambda: self._client.v1.refunds.retrieve(
                refund_id, options=request_options(stripe_account=stripe_account)
            ),
        )
        return refund_view(data)

    def find_refunds(
        self, payment_intent_id: str, metadata_key: str, value: str, *, stripe_account: str | None = None
    ) -> list[RefundView]:
        """The PaymentIntent's refunds whose metadata[metadata_key] is `value` (a refund of ours whose
        id we never learnt)."""
        found: list[RefundView] = []
        starting_after: str | None = None
        while True:
            params: RefundListParams = {"payment_intent": payment_intent_id, "limit": LIST_PAGE_SIZE}
            if starting_after is not None:
                params["starting_after"] = starting_after

            def list_page(params: RefundListParams = params) -> object:
                return self._client.v1.refunds.list(
                    params, options=request_options(stripe_account=stripe_account)
                )

            page = self._call("find_refunds", stripe_account, list_page)
            items = page.get("data") or []
            found.extend(
                refund_view(item) for item in items if (item.get("metadata") or {}).get(metadata_key) == value
            )
            if not page.get("has_more") or not items:
                return found
            starting_after = items[-1]["id"]

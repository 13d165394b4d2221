"""PaymentIntents and refunds at Stripe: the calls that move money, and the reads that tell what moved."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from stripe.params import PaymentIntentListParams, RefundCreateParams

from shared.adapters.stripe_calls import StripeCalls
from shared.adapters.stripe_wire import (
    LIST_PAGE_SIZE,
    CardErrorSignal,
    payment_intent_create_params,
    request_options,
    unix_seconds,
)
from shared.domain.payments import (
    ChargeOutcome,
    ChargeRequest,
    PaymentIntentView,
    PermanentStripeError,
    RefundView,
    RequiresAction,
    classify_payment_intent,
    id_of,
    outcome_from_card_error,
    payment_intent_view,
)

__all__ = ["PaymentCalls"]


class PaymentCalls(StripeCalls):
    """Off-session charges, their on-session confirmation, reads and lists, and refunds."""

    # ---- charges -----------------------------------------------------------------------------------

    def create_offsession_payment_intent(self, request: ChargeRequest) -> ChargeOutcome:
        """Create and confirm an off-session card PaymentIntent (payment_intent_create_params). Replaying
        the same request returns the first answer (declines included) for as long as Stripe keeps the key
        (≥ 24 h). Raises TransientStripeError (outcome unknown: replay) or PermanentStripeError."""
        params = payment_intent_create_params(request)
        options = request_options(request.idempotency_key, request.stripe_account)
        try:
            # The hot path of a batch: the response's JSON as it is, not built into StripeObjects only to
            # be turned back into dicts (a tenth of the call's CPU). Same encoding, same errors, same
            # network retries as payment_intents.create: raw_request goes through the same requestor.
            data = self._call(
                "create_offsession_payment_intent",
                request.stripe_account,
                lambda: self._client.raw_request("post", "/v1/payment_intents", **params, **options).data,
                card_errors=True,
            )
        except CardErrorSignal as signal:
            return outcome_from_card_error(signal.error)
        return classify_payment_intent(payment_intent_view(data))

    def retrieve_payment_intent(
        self, payment_intent_id: str, *, stripe_account: str | None = None
    ) -> PaymentIntentView:
        data = self._call(
            "retrieve_payment_intent",
            stripe_account,
            lambda: self._client.v1.payment_intents.retrieve(
                payment_intent_id, options=request_options(stripe_account=stripe_account)
            ),
        )
        return payment_intent_view(data)

    def confirm_on_session(
        self,
        payment_intent_id: str,
        payment_method_id: str,
        return_url: str,
        *,
        idempotency_key: str | None = None,
        stripe_account: str | None = None,
    ) -> ChargeOutcome:
        """Confirm again with the client present (off_session=false): usually RequiresAction, whose view
        carries the client_secret and the bank's page (`next_action_redirect_url`, see
        authentication_page) that brings the client back to `return_url`. A RequiresAction without such a
        page (an action only Stripe.js can run) is a PermanentStripeError: this product has no Stripe.js."""
        try:
            data = self._call(
                "confirm_on_session",
                stripe_account,
                lambda: self._client.v1.payment_intents.confirm(
                    payment_intent_id,
                    {"payment_method": payment_method_id, "off_session": False, "return_url": return_url},
                    options=request_options(idempotency_key, stripe_account),
                ),
                card_errors=True,
            )
        except CardErrorSignal as signal:
            return outcome_from_card_error(signal.error)
        outcome = classify_payment_intent(payment_intent_view(data))
        if isinstance(outcome, RequiresAction) and outcome.payment_intent.next_action_redirect_url is None:
            raise PermanentStripeError(
                f"Stripe asked for an authentication step ({outcome.payment_intent.next_action_type}) that "
                "only Stripe.js can run, and gave no page to send the client to",
                kind="unexpected_response",
                payment_intent_id=outcome.payment_intent_id,
            )
        return outcome

    def cancel_payment_intent(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str | None = None,
        stripe_account: str | None = None,
    ) -> PaymentIntentView:
        data = self._call(
            "cancel_payment_intent",
            stripe_account,
            lambda: self._client.v1.payment_intents.cancel(
                payment_intent_id, options=request_options(idempotency_key, stripe_account)
            ),
        )
        return payment_intent_view(data)

    def _list_payment_intents(
        self, params: PaymentIntentListParams, stripe_account: str | None
    ) -> Iterator[PaymentIntentView]:
        # Paged by hand rather than auto_paging_iter so each page passes through before_request and
        # the error translation.
        starting_after: str | None = None
        while True:
            page_params: PaymentIntentListParams = {**params, "limit": LIST_PAGE_SIZE}
            if starting_after is not None:
                page_params["starting_after"] = starting_after

            def list_page(page_params: PaymentIntentListParams = page_params) -> Any:
                return self._client.v1.payment_intents.list(
                    page_params, options=request_options(stripe_account=stripe_account)
                )

            page = self._call("list_payment_intents", stripe_account, list_page)
            items = page.get("data") or []
            for item in items:
                yield payment_intent_view(item)
            if not page.get("has_more") or not items:
                return
            starting_after = items[-1]["id"]

    def find_attempt_payment_intents(
        self,
        customer_id: str,
        charge_attempt_id: str,
        *,
        created_gte: datetime,
        stripe_account: str | None = None,
    ) -> list[PaymentIntentView]:
        """PaymentIntents carrying metadata.charge_attempt_id. Lists by customer (strongly consistent)
        and matches client-side: search could miss a PaymentIntent created in the last minute(s)."""
        params: PaymentIntentListParams = {
            "customer": customer_id,
            "created": {"gte": unix_seconds(created_gte)},
        }
        return [
            view
            for view in self._list_payment_intents(params, stripe_account)
            if view.metadata.get("charge_attempt_id") == charge_attempt_id
        ]

    def list_payment_intents_created(
        self, created_gte: datetime, created_lt: datetime, *, stripe_account: str | None = None
    ) -> Iterator[PaymentIntentView]:
        """Every PaymentIntent created in [created_gte, created_lt), newest first (daily reconciliation)."""
        params: PaymentIntentListParams = {
            "created": {"gte": unix_seconds(created_gte), "lt": unix_seconds(created_lt)}
        }
        return self._list_payment_intents(params, stripe_account)

    def refund(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str,
        amount: int | None = None,
        stripe_account: str | None = None,
    ) -> RefundView:
        """Refund all (amount=None) or part of a succeeded PaymentIntent."""
        params: RefundCreateParams = {"payment_intent": payment_intent_id}
        if amount is not None:
            if amount <= 0:
                raise ValueError("a refund amount must be positive")
            params["amount"] = amount
        data = self._call(
            "refund",
            stripe_account,
            lambda: self._client.v1.refunds.create(
                params, options=request_options(idempotency_key, stripe_account)
            ),
        )
        return RefundView(
            id=data["id"],
            status=str(data.get("status")),
            amount=int(data.get("amount") or 0),
            currency=str(data.get("currency") or ""),
            payment_intent_id=id_of(data.get("payment_intent")),
        )

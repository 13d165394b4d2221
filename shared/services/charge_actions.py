"""What a person does to a charge once it exists: cancel it, bring it on-session for the client to
authenticate, ask Stripe where it stands. Stripe is asked between transactions, never inside one.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import ChargeAttempt
from shared.domain.payments import (
    PermanentStripeError,
    RequiresAction,
)
from shared.services.attempts import (
    S,
    apply_outcome,
    apply_payment_intent,
    lock_attempt,
    move_attempt,
    reached_stripe,
)
from shared.services.ports import StripePort

log = logging.getLogger(__name__)


class ChargeNotCancelable(Exception):
    pass


class NotAwaitingAuthentication(Exception):
    """The charge is not waiting for the client to authenticate; the message is fit to show."""


# --------------------------------------------------------------------------------------------------
# Canceling
# --------------------------------------------------------------------------------------------------


def cancel_charge(
    factory: sessionmaker[Session],
    gateway: StripePort,
    attempt_id: str,
    *,
    actor: str,
    reason: str | None = None,
    failure_code: str = "canceled_by_admin",
) -> str:
    """Cancel a charge: a queued one that never reached Stripe, or one waiting for the client.

    A queued retry that may already have reached Stripe is not cancelable: canceling it would free the
    invoice for a new attempt while the first might still have charged the card. Stripe is asked
    between transactions, never inside one. Returns the charge's status afterwards.
    """
    with factory() as session:
        attempt = session.get(ChargeAttempt, attempt_id)
        if attempt is None:
            raise LookupError(attempt_id)
        status, pi_id, account = attempt.status_enum, attempt.payment_intent_id, attempt.stripe_account_id
        unsent = not reached_stripe(attempt)
        session.rollback()
    if status is S.QUEUED and unsent:
        with factory() as session, session.begin():
            attempt = lock_attempt(session, attempt_id)
            if attempt.status == S.QUEUED.value and not reached_stripe(attempt):
                move_attempt(
                    session,
                    attempt,
                    S.CANCELED,
                    actor,
                    failure_code=failure_code,
                    failure_message=reason or "Canceled before it was sent to Stripe.",
                )
            return attempt.status
    if status is S.REQUIRES_ACTION:
        view = None
        if pi_id:
            try:
                view = gateway.cancel_payment_intent(pi_id, stripe_account=account)
            except PermanentStripeError:
                # Stripe refuses to cancel a PaymentIntent that has moved on: learn where it went.
                view = gateway.retrieve_payment_intent(pi_id, stripe_account=account)
        with factory() as session, session.begin():
            attempt = lock_attempt(session, attempt_id)
            if view is not None and view.status != "canceled":
                # The client completed (or failed) authentication meanwhile: that is the truth.
                apply_payment_intent(session, attempt, view, actor=actor)
            if attempt.status == S.REQUIRES_ACTION.value:
                move_attempt(
                    session,
                    attempt,
                    S.CANCELED,
                    actor,
                    failure_code=failure_code,
                    failure_message=reason or "Canceled while waiting for the client to authenticate.",
                )
            return attempt.status
    raise ChargeNotCancelable(
        f"A charge that is {status.label.lower()} cannot be canceled; only queued charges that have not "
        "reached Stripe and charges waiting for the client can."
    )


# --------------------------------------------------------------------------------------------------
# The client comes back on-session
# --------------------------------------------------------------------------------------------------


def start_on_session_authentication(
    factory: sessionmaker[Session], gateway: StripePort, attempt_id: str, return_url: str, *, actor: str
) -> str | None:
    """Confirm a charge waiting for the client again, with the client present. Returns the bank's page
    to send the browser to (it comes back to `return_url`), or None when Stripe settled it at once,
    which is then recorded. Stripe is asked between transactions."""
    with factory() as session:
        attempt = session.get_one(ChargeAttempt, attempt_id)
        if attempt.status != S.REQUIRES_ACTION.value or not attempt.payment_intent_id:
            raise NotAwaitingAuthentication("This payment does not need authentication.")
        pi_id, pm_id, account = (
            attempt.payment_intent_id,
            attempt.payment_method_id,
            attempt.stripe_account_id,
        )
        session.rollback()
    outcome = gateway.confirm_on_session(pi_id, pm_id or "", return_url, stripe_account=account)
    if isinstance(outcome, RequiresAction) and outcome.payment_intent.next_action_redirect_url:
        return outcome.payment_intent.next_action_redirect_url
    with factory() as session, session.begin():
        apply_outcome(session, lock_attempt(session, attempt_id), outcome, actor=actor)
    return None


def settle_from_stripe(
    factory: sessionmaker[Session], gateway: StripePort, attempt_id: str, *, actor: str
) -> str:
    """Ask Stripe where the charge's PaymentIntent is now and record it; returns the charge's status."""
    with factory() as session:
        attempt = session.get_one(ChargeAttempt, attempt_id)
        pi_id, account, status = attempt.payment_intent_id, attempt.stripe_account_id, attempt.status
        session.rollback()
    if not pi_id:
        return status
    view = gateway.retrieve_payment_intent(pi_id, stripe_account=account)
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        apply_payment_intent(session, attempt, view, actor=actor)
        return attempt.status

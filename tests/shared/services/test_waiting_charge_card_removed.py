"""A charge waiting for the client's authentication whose card the client then removes (what the
exploration kept reaching: tests/support/charge_model.py).

The product leaves the charge waiting, as Stripe leaves its PaymentIntent: Stripe refuses to confirm it
again with the detached card, but an authentication the client already began at the bank may still
complete, so canceling the charge when the card goes could cancel a payment being made. It ends as any
waiting charge ends: the client completes it, the admin cancels it (at Stripe too) and charges the new
card, or the janitor cancels it once the authentication's time is past. Meanwhile the invoice says why it
cannot be charged again (awaiting_client_authentication).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import ChargeAttempt, Invoice
from shared.domain.payments import GatewayError
from shared.services import charge_actions, clients
from shared.services.charge_requests import NotChargeable, load_invoice_for_charge, request_charge
from shared.services.dunning import retry_policy
from shared.services.janitor import run_janitor
from tests.shared.services.test_charge_lifecycle import RETURN_URL, waiting_for_the_client
from tests.shared.services.test_last_look import attempt_row, card_ids
from tests.support.fake_stripe import FakeClock, FakeStripe
from tests.support.unit_of_work import InSession


def remove_the_card_and_save_another(
    factory: sessionmaker[Session], stripe: FakeStripe, attempt_id: str
) -> None:
    client_id, cards = card_ids(factory, attempt_id)
    clients.delete_card(factory, stripe, client_id, cards[0], actor="client")
    clients.add_card(factory, stripe, client_id, "pm_card_visa", actor="client")


def charge_again(factory: sessionmaker[Session], attempt_id: str) -> str:
    with factory() as session, session.begin():
        invoice_id = session.get_one(ChargeAttempt, attempt_id).invoice_id
        invoice = load_invoice_for_charge(session, invoice_id, lock=True)
        assert isinstance(invoice, Invoice)
        return request_charge(InSession(session), invoice, source="admin", requested_by="admin").id


def test_a_waiting_charge_whose_card_was_removed_stays_waiting_and_refuses_a_new_authentication(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id, _ = waiting_for_the_client(session_factory, stripe, clock)
    remove_the_card_and_save_another(session_factory, stripe, attempt_id)
    with pytest.raises(GatewayError, match="may not be used again"):
        charge_actions.start_on_session_authentication(
            session_factory, stripe, attempt_id, RETURN_URL, actor="client"
        )
    assert attempt_row(session_factory, attempt_id).status == "requires_action"
    with pytest.raises(NotChargeable) as refused:
        charge_again(session_factory, attempt_id)
    assert [b.code.value for b in refused.value.blockers] == ["awaiting_client_authentication"]
    # The admin need not wait for the expiry: canceling it cancels the PaymentIntent, then the new card
    # can be charged.
    assert charge_actions.cancel_charge(session_factory, stripe, attempt_id, actor="admin") == "canceled"
    assert stripe.server.payment_intents()[0]["status"] == "canceled"
    assert attempt_row(session_factory, charge_again(session_factory, attempt_id)).status == "queued"


def test_a_waiting_charge_whose_card_was_removed_is_canceled_when_its_authentication_expires(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id, _ = waiting_for_the_client(session_factory, stripe, clock)
    remove_the_card_and_save_another(session_factory, stripe, attempt_id)
    clock.advance(retry_policy().authentication_ttl + timedelta(minutes=1))
    assert run_janitor(session_factory, stripe, lambda *_: None, now=clock.now()).expired_authentications == 1
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.failure_code) == ("canceled", "authentication_expired")
    assert [pi["status"] for pi in stripe.server.payment_intents()] == ["canceled"]


def test_an_authentication_begun_before_the_card_was_removed_is_recorded_as_stripe_settles_it(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id, pi_id = waiting_for_the_client(session_factory, stripe, clock)
    page = charge_actions.start_on_session_authentication(
        session_factory, stripe, attempt_id, RETURN_URL, actor="client"
    )
    assert page is not None  # the client is at the bank's page
    remove_the_card_and_save_another(session_factory, stripe, attempt_id)
    assert attempt_row(session_factory, attempt_id).status == "requires_action"  # not canceled under them
    stripe.server.complete_authentication(pi_id)
    assert (
        charge_actions.settle_from_stripe(session_factory, stripe, attempt_id, actor="client") == "succeeded"
    )

from __future__ import annotations

import pytest

from shared.domain.eligibility import BlockerCode, charge_blockers, usable_card
from shared.domain.models import Card, Client, Dispute
from tests.support import factories

B = BlockerCode


def codes(*args, **kwargs) -> list[BlockerCode]:  # type: ignore[no-untyped-def]
    return [b.code for b in charge_blockers(*args, **kwargs)]


def test_a_due_invoice_with_a_card_can_be_charged() -> None:
    assert codes(factories.invoice(), factories.settings()) == []


@pytest.mark.parametrize(
    ("settings_kwargs", "code", "words"),
    [
        ({"connected": False}, B.STRIPE_NOT_CONNECTED, "Stripe is not connected"),
        ({"enabled": False}, B.CARD_PAYMENTS_DISABLED, "Online card payments are turned off"),
    ],
)
def test_settings_blockers(settings_kwargs: dict[str, bool], code: BlockerCode, words: str) -> None:
    blockers = charge_blockers(factories.invoice(), factories.settings(**settings_kwargs))
    assert [b.code for b in blockers] == [code]
    assert words in blockers[0].message


def test_invoice_not_set_to_online_card() -> None:
    blockers = charge_blockers(factories.invoice(payment_method="bank_transfer"), factories.settings())
    assert [b.code for b in blockers] == [B.PAYMENT_METHOD_NOT_ONLINE_CARD]
    assert "bank transfer" in blockers[0].message


def test_client_without_a_saved_card() -> None:
    owner: Client = factories.client(with_card=False, name="Nora Nocard")
    blockers = charge_blockers(factories.invoice(owner=owner), factories.settings())
    assert [(b.code, b.message) for b in blockers] == [(B.NO_SAVED_CARD, "Nora Nocard has no saved card.")]


def test_nothing_due_and_void() -> None:
    assert codes(factories.invoice(total=5_000, paid=(5_000,)), factories.settings()) == [B.NOTHING_DUE]
    assert codes(factories.invoice(void=True), factories.settings()) == [B.INVOICE_VOID]


def test_charge_in_progress_and_awaiting_authentication() -> None:
    inv = factories.invoice()
    attempt = factories.attempt(inv, "processing")
    assert codes(inv, factories.settings()) == [B.CHARGE_IN_PROGRESS]
    # The worker's last look leaves out the attempt it runs itself.
    assert codes(inv, factories.settings(), ignore_attempt_id=attempt.id) == []
    waiting = factories.invoice()
    factories.attempt(waiting, "requires_action")
    assert codes(waiting, factories.settings()) == [B.AWAITING_CLIENT_AUTHENTICATION]
    done = factories.invoice()
    factories.attempt(done, "failed")
    assert codes(done, factories.settings()) == []


def test_amount_below_stripe_minimum() -> None:
    blockers = charge_blockers(factories.invoice(total=30), factories.settings())
    assert [b.code for b in blockers] == [B.AMOUNT_BELOW_MINIMUM]
    assert "$0.30 is below Stripe's minimum card charge of $0.50" in blockers[0].message
    assert codes(factories.invoice(total=10_000), factories.settings(), amount=49) == [B.AMOUNT_BELOW_MINIMUM]
    assert codes(factories.invoice(total=10_000, currency="jpy"), factories.settings(), amount=50) == []
    assert codes(factories.invoice(total=49, currency="jpy"), factories.settings()) == [
        B.AMOUNT_BELOW_MINIMUM
    ]


def test_every_reason_is_listed_at_once() -> None:
    owner = factories.client(with_card=False)
    inv = factories.invoice(owner=owner, payment_method="cash", total=10_000, paid=(10_000,))
    assert codes(inv, factories.settings(connected=False, enabled=False)) == [
        B.STRIPE_NOT_CONNECTED,
        B.CARD_PAYMENTS_DISABLED,
        B.PAYMENT_METHOD_NOT_ONLINE_CARD,
        B.NO_SAVED_CARD,
        B.NOTHING_DUE,
    ]


def test_blockers_serialize_for_the_api() -> None:
    blocker = charge_blockers(factories.invoice(), factories.settings(connected=False))[0]
    assert blocker.as_dict() == {
        "code": "stripe_not_connected",
        "message": "Stripe is not connected: connect it in Settings before charging cards.",
    }


@pytest.mark.parametrize(
    ("status", "blocked"),
    [
        ("warning_needs_response", True),
        ("warning_under_review", True),
        ("needs_response", True),
        ("under_review", True),
        ("warning_closed", False),
        ("won", False),
        ("lost", False),
        ("prevented", False),
    ],
)
def test_an_open_dispute_blocks_charging_the_withdrawn_funds_again(status: str, blocked: bool) -> None:
    inv = factories.invoice(total=10_000, paid=(10_000, -7_500))  # the dispute's funds withdrawn
    inv.disputes.append(
        Dispute(stripe_dispute_id="du_1", amount=7_500, currency="usd", reason="fraudulent", status=status)
    )
    blockers = charge_blockers(inv, factories.settings())
    if not blocked:
        assert blockers == []
        return
    assert [(b.code.value, b.message) for b in blockers] == [
        (
            "charge_disputed",
            "A card payment of $75.00 is disputed with the card's bank: the card cannot be charged again "
            "until the dispute is resolved.",
        )
    ]


def test_one_minor_unit_due_is_due_but_below_the_minimum() -> None:
    invoice = factories.invoice(total=10_000, paid=(9_999,))
    assert codes(invoice, factories.settings()) == [B.AMOUNT_BELOW_MINIMUM]
    assert codes(factories.invoice(total=10_000), factories.settings(), amount=1) == [B.AMOUNT_BELOW_MINIMUM]


def test_the_card_charged_is_one_that_lives_where_the_connection_charges() -> None:
    """Once a verification says where charges go (account and mode), a default card saved on another
    account or in the other mode is passed over for the newest card that lives there, or none."""
    owner = factories.client(name="Ada Away")
    default = owner.cards[0]
    default.stripe_account_id, default.livemode = "acct_before", False
    here = Card(
        stripe_payment_method_id="pm_here",
        brand="visa",
        last4="1111",
        exp_month=1,
        exp_year=2031,
        is_default=False,
        stripe_account_id="acct_now",
        livemode=False,
    )
    live = Card(
        stripe_payment_method_id="pm_live",
        brand="visa",
        last4="2222",
        exp_month=1,
        exp_year=2031,
        is_default=False,
        stripe_account_id="acct_now",
        livemode=True,
    )
    owner.cards.extend([here, live])
    settings = factories.settings()
    settings.stripe_verified_account_id, settings.stripe_livemode = "acct_now", False
    assert usable_card(owner, settings) is here
    default.stripe_account_id = "acct_now"  # the default card lives there too: it wins over a newer one
    assert usable_card(owner, settings) is default
    default.stripe_account_id = "acct_before"
    settings.stripe_verified_account_id = "acct_elsewhere"
    assert usable_card(owner, settings) is None
    assert [b.code for b in charge_blockers(factories.invoice(owner=owner), settings)] == [
        B.CARD_SAVED_UNDER_OTHER_ACCOUNT
    ]

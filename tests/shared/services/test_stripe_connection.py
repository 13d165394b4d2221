"""shared.services.stripe_connection over FakeStripe: what Connect stores, what a refusal, an account
without charges, a worker's 401 and a deauthorization do to the blockers, OAuth's code exchange, and the
stored secret's encryption."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.secret_box import FernetSecretBox
from shared.domain.eligibility import BlockerCode, charge_blockers
from shared.domain.models import Card, Invoice, Settings
from shared.domain.payments import PermanentStripeError
from shared.services import stripe_connection
from shared.services.charge_requests import request_charge
from shared.services.charging import run_attempt
from shared.services.settings import SettingsError, get_settings, is_verified, update_settings
from shared.services.stripe_connection import ConnectionRefused
from tests.support.factories import make_client, make_invoice
from tests.support.fake_stripe import FakeStripe
from tests.support.unit_of_work import InSession

BASE = "https://pay.example.com"
BOX = FernetSecretBox("test-secret-key-" + "x" * 32)


def _connect(factory: sessionmaker[Session], stripe: FakeStripe) -> None:
    stripe_connection.connect(factory, stripe, BOX, actor="admin:test", public_base_url=BASE)


def _settings(factory: sessionmaker[Session]) -> Settings:
    with factory() as s:
        settings = get_settings(s)
        s.expunge(settings)
        return settings


def _blocker_codes(factory: sessionmaker[Session], invoice_id: int) -> list[str]:
    with factory() as s:
        invoice = s.get(Invoice, invoice_id)
        assert invoice is not None
        return [b.code.value for b in charge_blockers(invoice, get_settings(s))]


def test_connect_stores_the_account_and_the_endpoint_secret_encrypted_and_claims_old_cards(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s, s.begin():
        make_client(s, 1)  # a card saved before accounts were recorded
    stripe = FakeStripe()
    _connect(session_factory, stripe)
    settings = _settings(session_factory)
    assert is_verified(settings)
    assert (settings.stripe_verified_account_id, settings.stripe_account_name) == (
        "acct_fakeplatform",
        "Fake Platform Ltd",
    )
    assert settings.stripe_livemode is False and settings.stripe_connection_method == "api_key"
    [endpoint] = stripe.server.account(None).webhook_endpoints.values()
    assert endpoint["url"] == BASE + "/webhooks/stripe" and endpoint["api_version"] == "2026-10-28.endive"
    assert settings.webhook_secret_encrypted and endpoint["secret"] not in settings.webhook_secret_encrypted
    with session_factory() as s:
        assert stripe_connection.stored_webhook_secrets(s, BOX) == (endpoint["secret"],)
        # Another SECRET_KEY cannot read it: nothing verifies with it rather than a wrong secret.
        assert stripe_connection.stored_webhook_secrets(s, FernetSecretBox("another-key")) == ()
        card = s.query(Card).one()
        assert (card.stripe_account_id, card.livemode) == ("acct_fakeplatform", False)


def test_a_refused_key_blocks_charges_with_the_reason(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s, s.begin():
        invoice = make_invoice(s, make_client(s, 1), 1)
        s.flush()
        invoice_id = invoice.id
    stripe = FakeStripe()
    stripe.server.refused_keys.add(stripe.api_key)
    with pytest.raises(ConnectionRefused) as refused:
        _connect(session_factory, stripe)
    assert refused.value.code is BlockerCode.STRIPE_CONNECTION_REFUSED and "401" in refused.value.message
    assert _blocker_codes(session_factory, invoice_id)[0] == "stripe_connection_refused"
    assert stripe.server.account(None).webhook_endpoints == {}


def test_an_account_without_charges_is_connected_but_blocked(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s, s.begin():
        invoice = make_invoice(s, make_client(s, 1), 1)
        s.flush()
        invoice_id = invoice.id
    stripe = FakeStripe()
    stripe.server.platform_account["charges_enabled"] = False
    _connect(session_factory, stripe)
    assert _blocker_codes(session_factory, invoice_id) == ["stripe_charges_disabled"]


def test_a_401_met_by_the_worker_blocks_every_charge_with_the_reason(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    _connect(session_factory, stripe)
    with session_factory() as s, s.begin():
        invoice = make_invoice(s, make_client(s, 1), 1)
        s.flush()
        # The factory's card carries no account: stamp it as saved where the connection is.
        for card in invoice.client.cards:
            card.stripe_account_id, card.livemode = "acct_fakeplatform", False
        attempt = request_charge(InSession(s), invoice, source="admin", requested_by="test")
        invoice_id, attempt_id = invoice.id, attempt.id
    stripe.server.refused_keys.add(stripe.api_key)
    run_attempt(session_factory, stripe, attempt_id, lease_seconds=60, max_transient_retries=0)
    settings = _settings(session_factory)
    assert settings.stripe_connected is False and settings.stripe_problem_code == "stripe_connection_refused"
    assert "stripe_connection_refused" in _blocker_codes(session_factory, invoice_id)


def test_oauth_connects_the_account_with_a_connect_endpoint_and_a_code_works_once(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    stripe.server.connected_accounts["acct_1Bakery"] = {
        "id": "acct_1Bakery",
        "name": "Bakery",
        "charges_enabled": True,
    }
    stripe.server.oauth_codes["ac_1"] = "acct_1Bakery"
    account = stripe_connection.finish_oauth(
        session_factory, stripe, BOX, code="ac_1", actor="admin:test", public_base_url=BASE
    )
    settings = _settings(session_factory)
    assert account == settings.stripe_account_id == settings.stripe_verified_account_id == "acct_1Bakery"
    assert settings.stripe_connection_method == "oauth"
    [endpoint] = stripe.server.account(None).webhook_endpoints.values()
    assert endpoint["connect"] is True
    with pytest.raises(ConnectionRefused) as reused:
        stripe_connection.finish_oauth(
            session_factory, stripe, BOX, code="ac_1", actor="admin:test", public_base_url=BASE
        )
    assert "Authorization code does not exist" in reused.value.message

    # account.application.deauthorized: another account's changes nothing; the connected one's blocks.
    other = {"id": "evt_1", "type": "account.application.deauthorized", "account": "acct_1Other"}
    assert "nothing to do" in stripe_connection.apply_deauthorization(session_factory, stripe, other)
    assert _settings(session_factory).stripe_connected is True
    mine = {"id": "evt_2", "type": "account.application.deauthorized", "account": "acct_1Bakery"}
    stripe_connection.apply_deauthorization(session_factory, stripe, mine)
    settings = _settings(session_factory)
    assert settings.stripe_connected is False and "deauthorized" in (settings.stripe_problem or "")
    assert settings.webhook_secret_encrypted is None
    assert stripe.server.account(None).webhook_endpoints == {}


def test_card_payments_cannot_be_switched_on_before_a_connection(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s, s.begin():
        update_settings(s, "test", online_card_payments_enabled=False)
        with pytest.raises(SettingsError):
            update_settings(s, "test", online_card_payments_enabled=True)
    _connect(session_factory, FakeStripe())
    with session_factory() as s, s.begin():
        assert update_settings(s, "test", online_card_payments_enabled=True).online_card_payments_enabled


def test_checking_again_keeps_the_oauth_account_and_one_endpoint(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    stripe.server.connected_accounts["acct_1Bakery"] = {
        "id": "acct_1Bakery",
        "name": "B",
        "charges_enabled": True,
    }
    stripe.server.oauth_codes["ac_1"] = "acct_1Bakery"
    stripe_connection.finish_oauth(session_factory, stripe, BOX, code="ac_1", actor="a", public_base_url=BASE)
    first = _settings(session_factory).webhook_endpoint_id
    stripe_connection.connect_again(session_factory, stripe, BOX, actor="a", public_base_url=BASE)
    settings = _settings(session_factory)
    assert (settings.stripe_account_id, settings.stripe_connection_method) == ("acct_1Bakery", "oauth")
    assert list(stripe.server.account(None).webhook_endpoints) == [settings.webhook_endpoint_id] != [first]


def test_an_endpoint_stripe_will_not_register_leaves_charges_blocked_with_the_reason(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    stripe = FakeStripe()

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermanentStripeError(
            "The provided key 'rk_test_***' does not have the required permissions for this endpoint.",
            kind="permission",
            http_status=403,
        )

    monkeypatch.setattr(stripe, "create_webhook_endpoint", refuse)
    with pytest.raises(ConnectionRefused) as refused:
        _connect(session_factory, stripe)
    assert "refused to register the webhook endpoint" in refused.value.message
    settings = _settings(session_factory)
    assert settings.stripe_connected is False and settings.stripe_problem_code == "stripe_connection_refused"

"""Contract suite: shared/adapters/stripe_gateway.py through the real stripe SDK, over HTTP, against a Stripe
backend; and the same contract for the in-memory FakeStripe (tests/support/fake_stripe.py) the domain
tests use.

By default the backends are the emulator (stripe_emulator/, started here on a free port) and FakeStripe.
With STRIPE_API_KEY=sk_test_... (not the emulator's key) and STRIPE_API_BASE unset, the same tests run
against Stripe's own test mode instead and no emulator is started; the tests that need fault injection or
a look at the backend's state are then skipped. Every run uses fresh idempotency keys and attempt ids, so
repeated runs against Stripe (which keeps keys for 24 h) never collide.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from shared.adapters.stripe_gateway import StripeGateway
from shared.config import EMULATOR_API_KEY
from shared.domain.payments import (
    AuthenticationRequired,
    Canceled,
    CardDeclined,
    CardSetupDeclined,
    CardSetupRequiresAction,
    ChargeOutcome,
    ChargeRequest,
    PermanentStripeError,
    RequiresAction,
    Succeeded,
    TransientStripeError,
    WebhookSignatureError,
    classify_payment_intent,
)
from shared.services.ports import StripePort
from tests.support.emulator import create_account, running_emulator
from tests.support.fake_stripe import FakeStripe, FakeStripeServer

pytestmark = pytest.mark.integration

EMULATOR_WEBHOOK_SECRET = "whsec_emulator"  # the emulator's default signing secret (README, Configuration)
CONTRACT_WEBHOOK_SECRET = "whsec_contract_suite"  # for locally signed events against Stripe
EMULATOR_CONNECTED_ACCOUNT = "acct_1ContractSuite"  # Stripe account ids are alphanumeric
AMOUNT = 1_234  # above every currency's minimum
CURRENCY = "usd"
RUN = uuid.uuid4().hex[:12]  # keeps this run's idempotency keys apart from every earlier run's


def real_stripe_test_key() -> str | None:
    """A Stripe test-mode key to run against, if the environment names one and no other base."""
    key = os.environ.get("STRIPE_API_KEY", "")
    if key.startswith("sk_test_") and key != EMULATOR_API_KEY and not os.environ.get("STRIPE_API_BASE"):
        return key
    return None


# ---- a receiver for the emulator's webhook deliveries ----------------------------------------------


@dataclass
class Delivery:
    body: bytes
    signature: str | None

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, event_type: str, object_id: str, timeout_s: float = 10.0) -> Delivery:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                for delivery in self.deliveries:
                    event = delivery.event
                    if event.get("type") == event_type and event["data"]["object"].get("id") == object_id:
                        return delivery
            time.sleep(0.05)
        raise AssertionError(f"no {event_type} for {object_id} delivered within {timeout_s} s")


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                receiver.deliveries.append(Delivery(body, self.headers.get("Stripe-Signature")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{server.server_address[1]}/webhooks/stripe"
    finally:
        server.shutdown()
        server.server_close()


# ---- the backend -----------------------------------------------------------------------------------


@dataclass
class FakeWebhooks:
    """FakeStripe's events as the receiver would have them: the body and its Stripe-Signature."""

    server: FakeStripeServer
    secret: str

    def wait_for(self, event_type: str, object_id: str, timeout_s: float = 10.0) -> Delivery:
        for event in self.server.events:  # recorded as they happen: nothing to wait for
            if event["type"] == event_type and event["data"]["object"].get("id") == object_id:
                return Delivery(*self.server.signed(event, self.secret))
        raise AssertionError(f"FakeStripe recorded no {event_type} for {object_id}")


@dataclass(frozen=True)
class Backend:
    """What the suite runs against: the emulator (with its control API), FakeStripe (in memory, the same
    controls) or Stripe test mode."""

    name: str
    api_key: str
    api_base: str | None
    webhook_secret: str
    connected_account: str | None
    webhooks: WebhookReceiver | FakeWebhooks | None = None
    fake: FakeStripeServer | None = None

    @property
    def is_emulator(self) -> bool:
        return self.name == "emulator"

    @property
    def inspectable(self) -> bool:
        """Its state can be read and its faults set (the emulator and FakeStripe)."""
        return self.name in ("emulator", "fake")

    def gateway(self, *, api_key: str | None = None, **kwargs: Any) -> StripeGateway:
        if self.fake is not None:
            # FakeStripe has the gateway's methods; typed as the gateway for the tests' sake.
            fake: Any = FakeStripe(api_key or self.api_key, self.webhook_secret, server=self.fake, **kwargs)
            return fake  # type: ignore[no-any-return]
        return StripeGateway(api_key or self.api_key, self.api_base, self.webhook_secret, **kwargs)

    def state(self) -> dict[str, Any]:
        if self.fake is not None:
            return self.fake.state()
        response = requests.get(f"{self.api_base}/_emulator/state", timeout=10)
        response.raise_for_status()
        return response.json()

    def set_faults(self, **faults: Any) -> None:
        if self.fake is not None:
            self.fake.set_faults(**faults)
            return
        response = requests.post(f"{self.api_base}/_emulator/faults", json=faults, timeout=10)
        response.raise_for_status()

    @contextlib.contextmanager
    def faults(self, **faults: Any) -> Iterator[None]:
        self.set_faults(**faults)
        try:
            yield
        finally:
            self.set_faults(**NO_FAULTS)


NO_FAULTS: dict[str, Any] = {
    "latency_ms": 0,
    "latency_jitter_ms": 0,
    "rate_limit": None,
    "error_rate": 0.0,
    "drop_after_commit_rate": 0.0,
    "webhook_duplicate_rate": 0.0,
    "webhook_reorder": False,
    "webhook_delay_ms": 0,
}


STRIPE_TEST_KEY = real_stripe_test_key()
SKIP_STRIPE_REASON = (
    "the contract suite ran against the emulator and FakeStripe; to run it against Stripe test mode set "
    "STRIPE_API_KEY=sk_test_... (not sk_test_emulator) and leave STRIPE_API_BASE unset"
)


# The backends of a run, named in every test id: [emulator] and [fake] by default, [stripe] alone with a
# Stripe test key.
@pytest.fixture(scope="module", params=["stripe"] if STRIPE_TEST_KEY else ["emulator", "fake"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "fake":
        server = FakeStripeServer()
        yield Backend(
            name="fake",
            api_key="sk_test_fake",
            api_base=None,
            webhook_secret=EMULATOR_WEBHOOK_SECRET,
            connected_account=EMULATOR_CONNECTED_ACCOUNT,
            webhooks=FakeWebhooks(server, EMULATOR_WEBHOOK_SECRET),
            fake=server,
        )
        return
    if STRIPE_TEST_KEY is not None:
        yield Backend(
            name="stripe",
            api_key=STRIPE_TEST_KEY,
            api_base=None,
            webhook_secret=os.environ.get("STRIPE_WEBHOOK_SECRET") or CONTRACT_WEBHOOK_SECRET,
            connected_account=os.environ.get("STRIPE_TEST_CONNECTED_ACCOUNT") or None,
        )
        return
    with (
        webhook_receiver() as (receiver, url),
        running_emulator(webhook_url=url, webhook_secret=EMULATOR_WEBHOOK_SECRET) as base_url,
    ):
        create_account(base_url, id=EMULATOR_CONNECTED_ACCOUNT)  # connected to the emulator's platform
        yield Backend(
            name="emulator",
            api_key=EMULATOR_API_KEY,
            api_base=base_url.rstrip("/"),
            webhook_secret=EMULATOR_WEBHOOK_SECRET,
            connected_account=EMULATOR_CONNECTED_ACCOUNT,
            webhooks=receiver,
        )


@pytest.mark.skipif(STRIPE_TEST_KEY is None, reason=SKIP_STRIPE_REASON)
def test_suite_talks_to_stripe_itself(backend: Backend, gateway: StripeGateway) -> None:
    assert backend.name == "stripe"
    assert gateway.api_base is None and gateway.livemode is False


@pytest.fixture
def emulator(backend: Backend) -> Backend:
    """The backend when it is the emulator or FakeStripe. Listed first by the tests that need it, so they
    skip on Stripe before any fixture talks to the network."""
    if not backend.inspectable:
        pytest.skip("needs the emulator's fault injection, /_emulator/state or webhook delivery to localhost")
    return backend


@pytest.fixture
def gateway(backend: Backend) -> StripeGateway:
    return backend.gateway(max_network_retries=2)


@pytest.fixture
def impatient_gateway(backend: Backend) -> StripeGateway:
    """No SDK retries: to see a single injected fault as the caller would after its retries ran out."""
    return backend.gateway(max_network_retries=0)


def unique(prefix: str) -> str:
    return f"contract:{RUN}:{prefix}:{uuid.uuid4().hex[:12]}"


def new_customer(gateway: StripeGateway, stripe_account: str | None = None) -> str:
    return gateway.ensure_customer(
        "Contract Suite",
        "contract-suite@example.com",
        idempotency_key=unique("customer"),
        stripe_account=stripe_account,
    )


@pytest.fixture
def customer_id(gateway: StripeGateway) -> str:
    return new_customer(gateway)


def charge_for(
    customer_id: str,
    payment_method_id: str,
    *,
    amount: int = AMOUNT,
    attempt_id: str | None = None,
    stripe_account: str | None = None,
) -> ChargeRequest:
    attempt = attempt_id or str(uuid.uuid4())
    return ChargeRequest(
        amount=amount,
        currency=CURRENCY,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        metadata={"invoice_id": "1", "invoice_number": f"CONTRACT-{RUN}", "charge_attempt_id": attempt},
        description=f"Contract suite {RUN}",
        idempotency_key=f"offsession:charge:{RUN}:{attempt}",
        stripe_account=stripe_account,
    )


def emulator_payment_intents(backend: Backend, attempt_id: str) -> list[dict[str, Any]]:
    return [
        pi
        for pi in backend.state()["payment_intents"]
        if (pi.get("metadata") or {}).get("charge_attempt_id") == attempt_id
    ]


# ---- saving cards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "brand", "last4"),
    [
        ("pm_card_visa", "visa", "4242"),
        ("pm_card_mastercard", "mastercard", "4444"),
        ("pm_card_chargeCustomerFail", "visa", "0341"),
    ],
)
def test_cards_that_save_for_off_session_use(
    gateway: StripeGateway, customer_id: str, token: str, brand: str, last4: str
) -> None:
    card = gateway.attach_card(customer_id, token, idempotency_key=unique("card"))
    assert card.payment_method_id.startswith("pm_") and card.payment_method_id != token
    assert (card.brand, card.last4) == (brand, last4)
    assert 1 <= card.exp_month <= 12 and card.exp_year >= datetime.now(UTC).year


@pytest.mark.parametrize(
    ("token", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", None),
    ],
)
def test_declining_cards_are_refused_at_setup(
    gateway: StripeGateway, customer_id: str, token: str, code: str, decline_code: str | None
) -> None:
    # Stripe checks a card when it is set up; only chargeCustomerFail passes that check and fails later.
    with pytest.raises(CardSetupDeclined) as caught:
        gateway.attach_card(customer_id, token, idempotency_key=unique("card"))
    assert caught.value.code == code
    if decline_code is not None:
        assert caught.value.decline_code == decline_code


def test_card_that_always_authenticates_needs_the_cardholder_to_be_saved(
    gateway: StripeGateway, customer_id: str
) -> None:
    with pytest.raises(CardSetupRequiresAction) as caught:
        gateway.attach_card(customer_id, "pm_card_authenticationRequired", idempotency_key=unique("card"))
    assert caught.value.setup_intent_id and caught.value.setup_intent_id.startswith("seti_")
    assert caught.value.client_secret
    # Until the cardholder authenticates, reading the SetupIntent back says the same.
    with pytest.raises(CardSetupRequiresAction):
        gateway.card_from_setup_intent(caught.value.setup_intent_id)


def test_default_card_and_detach(gateway: StripeGateway, backend: Backend, customer_id: str) -> None:
    first = gateway.attach_card(customer_id, "pm_card_visa", idempotency_key=unique("card"))
    second = gateway.attach_card(
        customer_id, "pm_card_mastercard", idempotency_key=unique("card"), make_default=False
    )
    gateway.set_default_card(customer_id, second.payment_method_id)
    gateway.detach_card(first.payment_method_id)
    gateway.detach_card(first.payment_method_id)  # a second detach is a no-op, not an error
    if backend.inspectable:
        customers = {c["id"]: c for c in backend.state()["customers"]}
        settings = customers[customer_id]["invoice_settings"]
        assert settings["default_payment_method"] == second.payment_method_id
        methods = {pm["id"]: pm for pm in backend.state()["payment_methods"]}
        assert methods[first.payment_method_id]["customer"] is None


def test_attach_a_payment_method_the_caller_already_holds(
    gateway: StripeGateway, backend: Backend, customer_id: str
) -> None:
    card = gateway.attach_payment_method(customer_id, "pm_card_visa", idempotency_key=unique("attach"))
    assert card.payment_method_id.startswith("pm_") and card.payment_method_id != "pm_card_visa"
    assert (card.brand, card.last4) == ("visa", "4242")
    outcome = gateway.create_offsession_payment_intent(charge_for(customer_id, card.payment_method_id))
    assert isinstance(outcome, Succeeded)
    if backend.inspectable:
        customers = {c["id"]: c for c in backend.state()["customers"]}
        assert customers[customer_id]["invoice_settings"]["default_payment_method"] == card.payment_method_id


def test_ensure_customer_keeps_an_existing_customer(gateway: StripeGateway, customer_id: str) -> None:
    again = gateway.ensure_customer(
        "Contract Suite",
        "contract-suite@example.com",
        idempotency_key=unique("customer"),
        existing_id=customer_id,
    )
    assert again == customer_id


def test_ensure_customer_replaces_one_that_does_not_exist(gateway: StripeGateway) -> None:
    replaced = gateway.ensure_customer(
        "Contract Suite",
        "contract-suite@example.com",
        idempotency_key=unique("customer"),
        existing_id="cus_doesnotexist000",
    )
    assert replaced.startswith("cus_") and replaced != "cus_doesnotexist000"


# ---- charging saved cards --------------------------------------------------------------------------


def saved_card_charge(
    gateway: StripeGateway, customer_id: str, token: str
) -> tuple[ChargeRequest, ChargeOutcome]:
    card = gateway.attach_card(customer_id, token, idempotency_key=unique("card"))
    request = charge_for(customer_id, card.payment_method_id)
    return request, gateway.create_offsession_payment_intent(request)


@pytest.mark.parametrize("token", ["pm_card_visa", "pm_card_mastercard"])
def test_saved_card_charges_off_session(gateway: StripeGateway, customer_id: str, token: str) -> None:
    request, outcome = saved_card_charge(gateway, customer_id, token)
    assert isinstance(outcome, Succeeded)
    view = outcome.payment_intent
    assert view.id.startswith("pi_")
    assert (view.amount, view.amount_received, view.currency) == (AMOUNT, AMOUNT, CURRENCY)
    assert view.customer == customer_id and view.payment_method == request.payment_method_id
    assert dict(view.metadata) == dict(request.metadata)
    assert view.latest_charge is not None
    assert gateway.retrieve_payment_intent(view.id).status == "succeeded"


def test_saved_card_that_later_fails(gateway: StripeGateway, customer_id: str) -> None:
    _, outcome = saved_card_charge(gateway, customer_id, "pm_card_chargeCustomerFail")
    assert isinstance(outcome, CardDeclined)
    assert (outcome.code, outcome.decline_code) == ("card_declined", "generic_decline")
    assert outcome.payment_intent_id is not None
    after = gateway.retrieve_payment_intent(outcome.payment_intent_id)
    assert after.status == "requires_payment_method"
    assert after.last_payment_error is not None and after.last_payment_error.code == "card_declined"


# ---- every test card's off-session outcome (the token passed straight to the PaymentIntent) ---------


@pytest.mark.parametrize(
    ("token", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", None),
        ("pm_card_chargeCustomerFail", "card_declined", "generic_decline"),
    ],
)
def test_declined_off_session_charge(
    gateway: StripeGateway, customer_id: str, token: str, code: str, decline_code: str | None
) -> None:
    outcome = gateway.create_offsession_payment_intent(charge_for(customer_id, token))
    assert isinstance(outcome, CardDeclined)
    assert outcome.code == code
    if decline_code is not None:
        assert outcome.decline_code == decline_code
    assert outcome.message
    assert outcome.payment_intent is not None
    assert outcome.payment_intent.status == "requires_payment_method"
    assert outcome.payment_intent_id is not None
    after = gateway.retrieve_payment_intent(outcome.payment_intent_id)
    assert after.status == "requires_payment_method"
    assert isinstance(classify_payment_intent(after), CardDeclined)


@pytest.mark.parametrize("token", ["pm_card_visa", "pm_card_mastercard"])
def test_succeeding_off_session_charge(gateway: StripeGateway, customer_id: str, token: str) -> None:
    outcome = gateway.create_offsession_payment_intent(charge_for(customer_id, token))
    assert isinstance(outcome, Succeeded)
    assert outcome.payment_intent.amount_received == AMOUNT


def test_authentication_required_off_session_then_on_session(
    gateway: StripeGateway, backend: Backend, customer_id: str
) -> None:
    outcome = gateway.create_offsession_payment_intent(
        charge_for(customer_id, "pm_card_authenticationRequired")
    )
    assert isinstance(outcome, AuthenticationRequired)
    assert outcome.payment_intent_id is not None and outcome.payment_intent_id.startswith("pi_")
    after = gateway.retrieve_payment_intent(outcome.payment_intent_id)
    assert after.status == "requires_payment_method"
    assert isinstance(classify_payment_intent(after), AuthenticationRequired)

    # The client comes back on-session: Stripe now asks for 3DS instead of declining.
    on_session = gateway.confirm_on_session(
        outcome.payment_intent_id,
        "pm_card_authenticationRequired",
        "https://offsession.example/client/return",
    )
    assert isinstance(on_session, RequiresAction)
    assert on_session.payment_intent.client_secret
    # A server-side confirm with a return_url is documented to answer redirect_to_url; whichever Stripe
    # answers, the product needs a page to send the client's browser to (shared/adapters/stripe_gateway.py
    # authentication_page), or confirm_on_session raises.
    assert on_session.payment_intent.next_action_type in ("redirect_to_url", "use_stripe_sdk")
    bank_page = on_session.payment_intent.next_action_redirect_url
    assert bank_page is not None and bank_page.startswith(("https://", "http://"))
    if backend.is_emulator:
        assert requests.get(bank_page, timeout=10).status_code == 200

    canceled = gateway.cancel_payment_intent(outcome.payment_intent_id)
    assert canceled.status == "canceled"
    assert isinstance(classify_payment_intent(canceled), Canceled)


# ---- idempotency -----------------------------------------------------------------------------------


def test_replay_returns_the_same_payment_intent(
    gateway: StripeGateway, backend: Backend, customer_id: str
) -> None:
    request = charge_for(customer_id, "pm_card_visa")
    first = gateway.create_offsession_payment_intent(request)
    again = gateway.create_offsession_payment_intent(request)
    assert isinstance(first, Succeeded) and isinstance(again, Succeeded)
    assert again.payment_intent_id == first.payment_intent_id
    if backend.inspectable:
        assert len(emulator_payment_intents(backend, request.metadata["charge_attempt_id"])) == 1


def test_replay_of_a_decline_returns_the_same_decline(gateway: StripeGateway, customer_id: str) -> None:
    request = charge_for(customer_id, "pm_card_chargeDeclinedInsufficientFunds")
    first = gateway.create_offsession_payment_intent(request)
    again = gateway.create_offsession_payment_intent(request)
    assert isinstance(first, CardDeclined) and isinstance(again, CardDeclined)
    assert again.payment_intent_id == first.payment_intent_id
    assert again.decline_code == first.decline_code == "insufficient_funds"


def test_same_key_with_other_parameters_is_an_idempotency_error(
    gateway: StripeGateway, customer_id: str
) -> None:
    request = charge_for(customer_id, "pm_card_visa")
    assert isinstance(gateway.create_offsession_payment_intent(request), Succeeded)
    altered = charge_for(
        customer_id, "pm_card_visa", amount=AMOUNT + 1, attempt_id=request.metadata["charge_attempt_id"]
    )
    assert altered.idempotency_key == request.idempotency_key
    with pytest.raises(PermanentStripeError) as caught:
        gateway.create_offsession_payment_intent(altered)
    assert caught.value.is_idempotency_error
    assert caught.value.http_status == 400


def test_drop_after_commit_then_replay_leaves_one_charge(
    emulator: Backend, impatient_gateway: StripeGateway, customer_id: str
) -> None:
    request = charge_for(customer_id, "pm_card_visa")
    attempt_id = request.metadata["charge_attempt_id"]
    with emulator.faults(drop_after_commit_rate=1.0), pytest.raises(TransientStripeError):
        impatient_gateway.create_offsession_payment_intent(request)
    committed = emulator_payment_intents(emulator, attempt_id)
    assert [pi["status"] for pi in committed] == ["succeeded"]  # the charge happened, the answer was lost

    replayed = impatient_gateway.create_offsession_payment_intent(request)
    assert isinstance(replayed, Succeeded)
    assert replayed.payment_intent_id == committed[0]["id"]
    assert len(emulator_payment_intents(emulator, attempt_id)) == 1


def create_while_the_same_key_runs(
    emulator: Backend, gateway: StripeGateway, request: ChargeRequest
) -> tuple[ChargeOutcome, ChargeOutcome | TransientStripeError]:
    """Send `request` twice, the second while the first is still executing (slowed by injected latency)."""
    first: list[ChargeOutcome] = []
    with emulator.faults(latency_ms=800):
        runner = threading.Thread(
            target=lambda: first.append(gateway.create_offsession_payment_intent(request))
        )
        runner.start()
        time.sleep(0.2)
        try:
            second: ChargeOutcome | TransientStripeError = gateway.create_offsession_payment_intent(request)
        except TransientStripeError as exc:
            second = exc
        runner.join()
    return first[0], second


def test_same_key_while_the_first_request_runs_is_a_transient_409(
    emulator: Backend, impatient_gateway: StripeGateway, customer_id: str
) -> None:
    request = charge_for(customer_id, "pm_card_visa")
    first, second = create_while_the_same_key_runs(emulator, impatient_gateway, request)
    assert isinstance(first, Succeeded)
    assert isinstance(second, TransientStripeError)
    assert (second.http_status, second.code, second.rate_limited) == (409, "idempotency_key_in_use", False)
    replayed = impatient_gateway.create_offsession_payment_intent(request)
    assert isinstance(replayed, Succeeded) and replayed.payment_intent_id == first.payment_intent_id


def test_sdk_retries_a_409_into_the_first_requests_answer(
    emulator: Backend, gateway: StripeGateway, customer_id: str
) -> None:
    request = charge_for(customer_id, "pm_card_visa")
    first, second = create_while_the_same_key_runs(emulator, gateway, request)
    assert isinstance(first, Succeeded) and isinstance(second, Succeeded)
    assert second.payment_intent_id == first.payment_intent_id
    assert len(emulator_payment_intents(emulator, request.metadata["charge_attempt_id"])) == 1


# ---- transient failures ----------------------------------------------------------------------------


def test_injected_5xx_is_transient(
    emulator: Backend, impatient_gateway: StripeGateway, customer_id: str
) -> None:
    request = charge_for(customer_id, "pm_card_visa")
    with emulator.faults(error_rate=1.0), pytest.raises(TransientStripeError) as caught:
        impatient_gateway.create_offsession_payment_intent(request)
    assert caught.value.http_status is not None and caught.value.http_status >= 500
    assert caught.value.rate_limited is False
    # Nothing ran, so the same key then charges once.
    assert emulator_payment_intents(emulator, request.metadata["charge_attempt_id"]) == []
    assert isinstance(impatient_gateway.create_offsession_payment_intent(request), Succeeded)


def test_sdk_retries_through_5xx_with_the_same_key(emulator: Backend, customer_id: str) -> None:
    gateway = emulator.gateway(max_network_retries=2)
    before = emulator.state()["requests"]["errors_injected"]
    with emulator.faults(error_rate=1.0), pytest.raises(TransientStripeError):
        gateway.create_offsession_payment_intent(charge_for(customer_id, "pm_card_visa"))
    assert emulator.state()["requests"]["errors_injected"] - before == 3  # 1 try + 2 SDK retries


def test_429_is_transient_and_rate_limited(emulator: Backend, customer_id: str) -> None:
    throttled: list[str | None] = []
    gateway = emulator.gateway(max_network_retries=0, on_rate_limited=throttled.append)
    before = emulator.state()["requests"]["rate_limited"]
    with emulator.faults(rate_limit=1.0), pytest.raises(TransientStripeError) as caught:
        for _ in range(20):  # a burst well over 1 request/s
            gateway.ensure_customer(
                "Contract Suite",
                "contract-suite@example.com",
                idempotency_key=unique("customer"),
                existing_id=customer_id,
            )
    assert caught.value.rate_limited is True
    assert caught.value.http_status == 429
    assert caught.value.code == "rate_limit"
    assert throttled == [None]
    assert emulator.state()["requests"]["rate_limited"] > before


# ---- finding, listing, refunding -------------------------------------------------------------------


def test_find_attempt_payment_intents_matches_metadata(gateway: StripeGateway, customer_id: str) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    ours = charge_for(customer_id, "pm_card_visa")
    other = charge_for(customer_id, "pm_card_visa")
    first = gateway.create_offsession_payment_intent(ours)
    gateway.create_offsession_payment_intent(other)
    assert isinstance(first, Succeeded)
    found = gateway.find_attempt_payment_intents(
        customer_id, ours.metadata["charge_attempt_id"], created_gte=since
    )
    assert [view.id for view in found] == [first.payment_intent_id]
    assert gateway.find_attempt_payment_intents(customer_id, str(uuid.uuid4()), created_gte=since) == []


def test_list_payment_intents_created_in_a_window(gateway: StripeGateway, customer_id: str) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    outcome = gateway.create_offsession_payment_intent(charge_for(customer_id, "pm_card_visa"))
    assert isinstance(outcome, Succeeded)
    ids = {
        view.id
        for view in gateway.list_payment_intents_created(start, datetime.now(UTC) + timedelta(minutes=1))
    }
    assert outcome.payment_intent_id in ids
    earlier = gateway.list_payment_intents_created(start - timedelta(days=2), start - timedelta(days=1))
    assert outcome.payment_intent_id not in {view.id for view in earlier}


def test_partial_then_full_refund(gateway: StripeGateway, customer_id: str) -> None:
    outcome = gateway.create_offsession_payment_intent(charge_for(customer_id, "pm_card_visa"))
    assert isinstance(outcome, Succeeded)
    key = unique("refund")
    partial = gateway.refund(outcome.payment_intent_id, amount=234, idempotency_key=key)
    assert (partial.status, partial.amount, partial.currency) == ("succeeded", 234, CURRENCY)
    assert partial.payment_intent_id == outcome.payment_intent_id
    assert gateway.refund(outcome.payment_intent_id, amount=234, idempotency_key=key).id == partial.id
    rest = gateway.refund(outcome.payment_intent_id, idempotency_key=unique("refund"))
    assert rest.amount == AMOUNT - 234
    with pytest.raises(PermanentStripeError) as caught:
        gateway.refund(outcome.payment_intent_id, amount=1, idempotency_key=unique("refund"))
    assert caught.value.kind == "invalid_request"


def test_bad_api_key_is_permanent(backend: Backend) -> None:
    gateway = backend.gateway(api_key="not_a_stripe_key")
    with pytest.raises(PermanentStripeError) as caught:
        gateway.retrieve_payment_intent("pi_doesnotexist000")
    assert caught.value.kind == "authentication"
    assert caught.value.http_status == 401


def test_unknown_payment_intent_is_permanent(gateway: StripeGateway) -> None:
    with pytest.raises(PermanentStripeError) as caught:
        gateway.retrieve_payment_intent("pi_doesnotexist000")
    assert (caught.value.kind, caught.value.code, caught.value.http_status) == (
        "invalid_request",
        "resource_missing",
        404,
    )


# ---- Connect: Stripe-Account scoping ---------------------------------------------------------------


def test_objects_live_in_the_connected_account(gateway: StripeGateway, backend: Backend) -> None:
    account = backend.connected_account
    if account is None:
        pytest.skip(
            "set STRIPE_TEST_CONNECTED_ACCOUNT=acct_... to test Stripe-Account scoping against Stripe"
        )
    customer = new_customer(gateway, stripe_account=account)
    card = gateway.attach_card(
        customer, "pm_card_visa", idempotency_key=unique("card"), stripe_account=account
    )
    request = charge_for(customer, card.payment_method_id, stripe_account=account)
    outcome = gateway.create_offsession_payment_intent(request)
    assert isinstance(outcome, Succeeded)
    assert (
        gateway.retrieve_payment_intent(outcome.payment_intent_id, stripe_account=account).status
        == "succeeded"
    )
    # The platform account does not see the connected account's PaymentIntent...
    with pytest.raises(PermanentStripeError) as caught:
        gateway.retrieve_payment_intent(outcome.payment_intent_id)
    assert caught.value.code == "resource_missing"
    # ...and the same idempotency key is a separate key on another account.
    platform_customer = new_customer(gateway)
    on_platform = charge_for(
        platform_customer, "pm_card_visa", attempt_id=request.metadata["charge_attempt_id"]
    )
    assert on_platform.idempotency_key == request.idempotency_key
    platform_outcome = gateway.create_offsession_payment_intent(on_platform)
    assert isinstance(platform_outcome, Succeeded)
    assert platform_outcome.payment_intent_id != outcome.payment_intent_id
    found = gateway.find_attempt_payment_intents(
        customer,
        request.metadata["charge_attempt_id"],
        created_gte=datetime.now(UTC) - timedelta(minutes=5),
        stripe_account=account,
    )
    assert [view.id for view in found] == [outcome.payment_intent_id]


# ---- coverage --------------------------------------------------------------------------------------


def test_the_suite_exercises_every_gateway_call() -> None:
    # `make test-stripe` proves the integration only if every call the product makes to Stripe is here.
    calls = {name for name, _ in inspect.getmembers(StripeGateway, callable) if not name.startswith("_")}
    source = Path(__file__).read_text(encoding="utf-8")
    assert calls >= {"create_offsession_payment_intent", "refund", "verify_webhook"}
    assert sorted(name for name in calls if f".{name}(" not in source) == []


def test_fake_stripe_has_every_gateway_method_with_its_signature() -> None:
    # The domain tests hand FakeStripe to the code wherever StripeGateway goes: the same calls must fit.
    def public(cls: type) -> dict[str, inspect.Signature]:
        # Inherited too: the gateway is one mixin per group of calls (shared/adapters/stripe_calls.py).
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls, callable)
            if not name.startswith("_")
        }

    gateway_calls, fake_calls = public(StripeGateway), public(FakeStripe)
    # The port the use cases are typed against is exactly what both offer.
    port_calls = {name: str(signature) for name, signature in public(StripePort).items()}
    assert port_calls == {name: str(signature) for name, signature in gateway_calls.items()}
    assert sorted(set(gateway_calls) - set(fake_calls)) == []
    assert {name: str(fake_calls[name]) for name in gateway_calls} == {
        name: str(signature) for name, signature in gateway_calls.items()
    }
    for attribute in ("livemode", "longest_call_seconds", "max_network_retries", "api_base"):
        assert hasattr(FakeStripe(), attribute)


# ---- webhooks --------------------------------------------------------------------------------------


def signed(backend: Backend, payload: bytes, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(
        payload.decode(), backend.webhook_secret, timestamp
    )


def test_locally_signed_event_verifies_and_tampered_or_stale_is_refused(
    gateway: StripeGateway, backend: Backend
) -> None:
    payload = json.dumps({"id": f"evt_{RUN}", "object": "event", "type": "payment_intent.succeeded"}).encode()
    assert gateway.verify_webhook(payload, signed(backend, payload))["id"] == f"evt_{RUN}"
    with pytest.raises(WebhookSignatureError):
        gateway.verify_webhook(payload.replace(b"succeeded", b"canceled"), signed(backend, payload))
    with pytest.raises(WebhookSignatureError):
        gateway.verify_webhook(payload, signed(backend, payload, timestamp=int(time.time()) - 301))
    with pytest.raises(WebhookSignatureError):
        gateway.verify_webhook(payload, None)


def test_event_delivered_by_the_emulator_verifies(
    emulator: Backend, gateway: StripeGateway, customer_id: str
) -> None:
    assert emulator.webhooks is not None
    outcome = gateway.create_offsession_payment_intent(charge_for(customer_id, "pm_card_visa"))
    assert isinstance(outcome, Succeeded)
    delivery = emulator.webhooks.wait_for("payment_intent.succeeded", outcome.payment_intent_id)
    event = gateway.verify_webhook(delivery.body, delivery.signature)
    assert event["type"] == "payment_intent.succeeded"
    assert (
        event["data"]["object"]["metadata"]["charge_attempt_id"]
        == outcome.payment_intent.metadata["charge_attempt_id"]
    )
    tampered = delivery.body.replace(b'"succeeded"', b'"canceled"', 1)
    assert tampered != delivery.body
    with pytest.raises(WebhookSignatureError):
        gateway.verify_webhook(tampered, delivery.signature)

"""Unit tests of shared/adapters/stripe_gateway.py: the real stripe SDK, with its HTTP transport replaced by
a recorder
that answers canned Stripe responses (no server, no network)."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import re
import time
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import stripe
from requests.structures import CaseInsensitiveDict

from shared.adapters.stripe_gateway import StripeGateway, gateway_from_config
from shared.adapters.stripe_wire import STRIPE_API_VERSION, payment_intent_create_params
from shared.config import Config, ConfigError
from shared.domain.payments import (
    AuthenticationRequired,
    Canceled,
    CardDeclined,
    CardSetupDeclined,
    CardSetupRequiresAction,
    ChargeRequest,
    PermanentStripeError,
    Processing,
    RequiresAction,
    Succeeded,
    TransientStripeError,
    WebhookPayloadError,
    WebhookSignatureError,
    authentication_page,
    classify_payment_intent,
    payment_intent_view,
)

API_BASE = "http://127.0.0.1:12111"
WEBHOOK_SECRET = "whsec_unit"


class RecordedRequest:
    def __init__(self, method: str, url: str, headers: Mapping[str, str], body: str | None) -> None:
        self.method = method
        self.url = url
        self.headers = CaseInsensitiveDict(dict(headers))
        self.body = body or ""

    @property
    def path(self) -> str:
        return self.url.removeprefix(API_BASE).split("?")[0]

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.url.split("?", 1)[1]) if "?" in self.url else {}


class RecordingHTTPClient(stripe.HTTPClient):
    """Answers queued (status, body, headers) in order; an Exception in the queue is raised instead."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[RecordedRequest] = []
        self.responses: list[tuple[int, dict[str, Any], dict[str, str]] | Exception] = []

    def queue(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.responses.append((status, body, headers or {}))

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> tuple[str, int, Mapping[str, str]]:
        self.requests.append(RecordedRequest(method, url, headers or {}, post_data))
        answer = self.responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body, extra_headers = answer
        response_headers = CaseInsensitiveDict({"request-id": f"req_{len(self.requests)}", **extra_headers})
        return json.dumps(body), status, response_headers

    def _sleep_time_seconds(self, num_retries: int) -> float:
        return 0.0  # the SDK's retry backoff, skipped in unit tests

    def close(self) -> None:
        pass


@pytest.fixture
def http() -> RecordingHTTPClient:
    return RecordingHTTPClient()


def make_gateway(http: RecordingHTTPClient, **kwargs: Any) -> StripeGateway:
    kwargs.setdefault("max_network_retries", 0)
    return StripeGateway("sk_test_unit", API_BASE, WEBHOOK_SECRET, http_client=http, **kwargs)


def charge_request(**overrides: Any) -> ChargeRequest:
    fields: dict[str, Any] = {
        "amount": 12_500,
        "currency": "EUR",
        "customer_id": "cus_1",
        "payment_method_id": "pm_1",
        "metadata": {"invoice_id": "42", "invoice_number": "INV-0042", "charge_attempt_id": "att-1"},
        "description": "Invoice INV-0042",
        "idempotency_key": "offsession:charge:att-1",
    }
    fields.update(overrides)
    return ChargeRequest(**fields)


def payment_intent(status: str = "succeeded", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": status,
        "amount": 12_500,
        "amount_received": 12_500 if status == "succeeded" else 0,
        "currency": "eur",
        "customer": "cus_1",
        "payment_method": "pm_1",
        "metadata": {"invoice_id": "42", "invoice_number": "INV-0042", "charge_attempt_id": "att-1"},
        "latest_charge": "ch_1" if status == "succeeded" else None,
        "last_payment_error": None,
        "created": 1_760_000_000,
        "client_secret": "pi_1_secret_x",
        "next_action": None,
        "livemode": False,
    }
    body.update(overrides)
    return body


def card_error(code: str, decline_code: str | None, message: str) -> dict[str, Any]:
    error = {"type": "card_error", "code": code, "decline_code": decline_code, "message": message}
    embedded = payment_intent("requires_payment_method", last_payment_error=error)
    return {"error": {**error, "payment_intent": embedded}}


# ---- parameters ------------------------------------------------------------------------------------


def test_create_params_are_exactly_what_a_charge_sends() -> None:
    params = payment_intent_create_params(charge_request())
    assert params == {
        "amount": 12_500,
        "currency": "eur",
        "customer": "cus_1",
        "payment_method": "pm_1",
        "off_session": True,
        "confirm": True,
        "allowed_payment_method_types": ["card"],
        "metadata": {"charge_attempt_id": "att-1", "invoice_id": "42", "invoice_number": "INV-0042"},
        "description": "Invoice INV-0042",
    }


def test_retries_of_one_charge_send_byte_identical_requests(http: RecordingHTTPClient) -> None:
    gateway = make_gateway(http)
    first = charge_request(stripe_account="acct_1")
    # Same charge rebuilt later (e.g. by another worker) with metadata inserted in another order.
    rebuilt = charge_request(
        stripe_account="acct_1",
        metadata={"charge_attempt_id": "att-1", "invoice_number": "INV-0042", "invoice_id": "42"},
    )
    http.queue(200, payment_intent())
    http.queue(200, payment_intent())
    gateway.create_offsession_payment_intent(first)
    gateway.create_offsession_payment_intent(rebuilt)

    sent, resent = http.requests
    assert sent.body == resent.body
    assert sent.headers["Idempotency-Key"] == resent.headers["Idempotency-Key"] == "offsession:charge:att-1"
    assert sent.headers["Stripe-Account"] == "acct_1"
    assert "idempotency_key" not in sent.body and "stripe_account" not in sent.body
    assert sent.method == "post" and sent.url == f"{API_BASE}/v1/payment_intents"
    assert sent.form["off_session"] == ["true"] and sent.form["confirm"] == ["true"]
    assert sent.form["allowed_payment_method_types[0]"] == ["card"]
    assert not any(name.startswith("payment_method_types") for name in sent.form)
    assert sent.form["metadata[charge_attempt_id]"] == ["att-1"]


def test_charge_request_is_insulated_from_later_changes_to_the_callers_metadata() -> None:
    metadata = {"invoice_id": "42", "invoice_number": "INV-0042", "charge_attempt_id": "att-1"}
    request = charge_request(metadata=metadata)
    before = payment_intent_create_params(request)
    metadata["invoice_id"] = "changed"
    assert payment_intent_create_params(request) == before


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": 10.5}, "amount"),
        ({"currency": "euro"}, "currency"),
        ({"metadata": {"invoice_id": "42", "invoice_number": "INV-0042"}}, "charge_attempt_id"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
    ],
)
def test_charge_request_refuses_what_stripe_would_reject(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        charge_request(**overrides)


def test_sdk_retries_reuse_the_key_and_the_body(http: RecordingHTTPClient) -> None:
    gateway = make_gateway(http, max_network_retries=2)
    http.queue(500, {"error": {"type": "api_error", "message": "boom"}})
    http.queue(503, {"error": {"type": "api_error", "message": "boom"}})
    http.queue(200, payment_intent())
    outcome = gateway.create_offsession_payment_intent(charge_request())
    assert isinstance(outcome, Succeeded)
    assert len(http.requests) == 3
    assert len({r.body for r in http.requests}) == 1
    assert {r.headers["Idempotency-Key"] for r in http.requests} == {"offsession:charge:att-1"}


# ---- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["http://127.0.0.1:12111", "https://stripe.example.com"])
def test_live_key_with_a_non_stripe_base_is_refused(base: str) -> None:
    with pytest.raises(ConfigError, match="live key"):
        StripeGateway("sk_live_abc", base, WEBHOOK_SECRET)
    with pytest.raises(ConfigError, match="live key"):
        StripeGateway("rk_live_abc", base, WEBHOOK_SECRET)


@pytest.mark.parametrize("base", [None, "https://api.stripe.com", "https://api.stripe.com/"])
def test_live_key_talking_to_stripe_itself_is_accepted(base: str | None) -> None:
    gateway = StripeGateway("sk_live_abc", base, WEBHOOK_SECRET)
    assert gateway.livemode is True


def _config(api_key: str, api_base: str | None) -> Config:
    return Config(
        database_url="sqlite://",
        celery_broker_url="filesystem://",
        redis_url=None,
        stripe_api_key=api_key,
        stripe_api_base=api_base,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_rate_limit=20.0,
        api_token="t",
        secret_key="s",
        public_base_url="http://127.0.0.1:8000",
        mail_url=None,
    )


def test_gateway_from_config_refuses_a_live_key_aimed_at_the_emulator() -> None:
    with pytest.raises(ConfigError, match="live key"):
        gateway_from_config(_config("sk_live_abc", API_BASE))
    gateway = gateway_from_config(_config("sk_test_emulator", API_BASE))
    assert gateway.api_base == API_BASE and gateway.livemode is False
    assert gateway.max_network_retries == 2


def test_requests_go_to_the_configured_base_with_the_key(http: RecordingHTTPClient) -> None:
    gateway = make_gateway(http)
    http.queue(200, payment_intent())
    gateway.retrieve_payment_intent("pi_1", stripe_account="acct_9")
    (sent,) = http.requests
    assert sent.method == "get" and sent.url == f"{API_BASE}/v1/payment_intents/pi_1"
    assert sent.headers["Authorization"] == "Bearer sk_test_unit"
    assert sent.headers["Stripe-Account"] == "acct_9"


# ---- charge outcomes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [("succeeded", Succeeded), ("processing", Processing), ("requires_action", RequiresAction)],
)
def test_successful_answers_are_classified_by_status(
    http: RecordingHTTPClient, status: str, expected: type
) -> None:
    http.queue(200, payment_intent(status, next_action={"type": "use_stripe_sdk"}))
    outcome = make_gateway(http).create_offsession_payment_intent(charge_request())
    assert isinstance(outcome, expected)
    assert outcome.payment_intent_id == "pi_1"


def test_card_decline_carries_codes_and_the_payment_intent(http: RecordingHTTPClient) -> None:
    body = card_error("card_declined", "insufficient_funds", "Your card has insufficient funds.")
    body["error"]["advice_code"] = "try_again_later"
    http.queue(402, body)
    outcome = make_gateway(http).create_offsession_payment_intent(charge_request())
    assert isinstance(outcome, CardDeclined)
    assert outcome.code == "card_declined"
    assert outcome.decline_code == "insufficient_funds"
    assert outcome.message == "Your card has insufficient funds."
    assert outcome.advice_code == "try_again_later"
    assert outcome.payment_intent_id == "pi_1"
    assert outcome.payment_intent is not None
    assert outcome.payment_intent.status == "requires_payment_method"


def test_expired_card_is_a_decline_without_decline_code(http: RecordingHTTPClient) -> None:
    http.queue(402, card_error("expired_card", None, "Your card has expired."))
    outcome = make_gateway(http).create_offsession_payment_intent(charge_request())
    assert isinstance(outcome, CardDeclined)
    assert (outcome.code, outcome.decline_code) == ("expired_card", None)


def test_authentication_required_off_session(http: RecordingHTTPClient) -> None:
    http.queue(
        402,
        card_error(
            "authentication_required", "authentication_required", "This payment requires authentication."
        ),
    )
    outcome = make_gateway(http).create_offsession_payment_intent(charge_request())
    assert isinstance(outcome, AuthenticationRequired)
    assert outcome.payment_intent_id == "pi_1"
    assert outcome.message == "This payment requires authentication."


def error_body(
    error_type: str, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    error = {"type": error_type, "message": message, "code": code, "param": param}
    return {"error": {k: v for k, v in error.items() if v is not None}}


@pytest.mark.parametrize(
    ("status", "body", "code", "rate_limited"),
    [
        (429, error_body("invalid_request_error", "slow", "rate_limit"), "rate_limit", True),
        (429, error_body("invalid_request_error", "lock", "lock_timeout"), "lock_timeout", True),
        (
            409,
            error_body("idempotency_error", "busy", "idempotency_key_in_use"),
            "idempotency_key_in_use",
            False,
        ),
        (500, error_body("api_error", "boom"), None, False),
        (502, {}, None, False),
    ],
)
def test_transient_failures(
    http: RecordingHTTPClient, status: int, body: dict[str, Any], code: str | None, rate_limited: bool
) -> None:
    throttled: list[str | None] = []
    gateway = make_gateway(http, on_rate_limited=throttled.append)
    http.queue(status, body)
    with pytest.raises(TransientStripeError) as caught:
        gateway.create_offsession_payment_intent(charge_request(stripe_account="acct_1"))
    assert caught.value.code == code
    assert caught.value.http_status == status
    assert caught.value.rate_limited is rate_limited
    # The SDK keeps Request-Id only when the body was a Stripe error.
    assert caught.value.request_id == ("req_1" if body else None)
    assert throttled == (["acct_1"] if rate_limited else [])


def test_429_is_not_retried_by_the_sdk(http: RecordingHTTPClient) -> None:
    gateway = make_gateway(http, max_network_retries=2)
    http.queue(429, {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow"}})
    with pytest.raises(TransientStripeError):
        gateway.create_offsession_payment_intent(charge_request())
    assert len(http.requests) == 1


def test_connection_failure_is_transient(http: RecordingHTTPClient) -> None:
    http.responses.append(stripe.APIConnectionError("connection reset", should_retry=False))
    with pytest.raises(TransientStripeError, match="connection reset"):
        make_gateway(http).create_offsession_payment_intent(charge_request())


IDEMPOTENCY_MISMATCH = "Keys for idempotent requests can only be used with the same parameters"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, error_body("idempotency_error", IDEMPOTENCY_MISMATCH), "idempotency"),
        (
            400,
            error_body("invalid_request_error", "Missing amount", "parameter_missing", "amount"),
            "invalid_request",
        ),
        (
            404,
            error_body("invalid_request_error", "No such customer", "resource_missing", "customer"),
            "invalid_request",
        ),
        (401, error_body("invalid_request_error", "Invalid API Key provided"), "authentication"),
        (403, error_body("invalid_request_error", "no access", "account_invalid"), "permission"),
    ],
)
def test_permanent_failures_keep_code_param_and_message(
    http: RecordingHTTPClient, status: int, body: dict[str, Any], kind: str
) -> None:
    error = body["error"]
    http.queue(status, body)
    with pytest.raises(PermanentStripeError) as caught:
        make_gateway(http).create_offsession_payment_intent(charge_request())
    assert caught.value.kind == kind
    assert caught.value.is_idempotency_error is (kind == "idempotency")
    assert caught.value.code == error.get("code")
    assert caught.value.param == error.get("param")
    assert caught.value.message == error["message"]
    assert caught.value.http_status == status


def test_domain_errors_and_outcomes_survive_pickling() -> None:
    error = TransientStripeError("slow", code="rate_limit", http_status=429, rate_limited=True)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.code, copy.http_status, copy.rate_limited) == ("slow", "rate_limit", 429, True)
    permanent = pickle.loads(pickle.dumps(PermanentStripeError("bad", kind="idempotency")))
    assert permanent.is_idempotency_error
    outcome = classify_payment_intent(payment_intent_view(payment_intent("succeeded")))
    assert pickle.loads(pickle.dumps(outcome)) == outcome


def test_classify_a_payment_intent_read_back_later() -> None:
    failed = payment_intent(
        "requires_payment_method",
        last_payment_error={"type": "card_error", "code": "card_declined", "decline_code": "generic_decline"},
    )
    outcome = classify_payment_intent(payment_intent_view(failed))
    assert isinstance(outcome, CardDeclined) and outcome.decline_code == "generic_decline"
    needs_auth = payment_intent(
        "requires_payment_method",
        last_payment_error={"type": "card_error", "code": "authentication_required"},
    )
    assert isinstance(classify_payment_intent(payment_intent_view(needs_auth)), AuthenticationRequired)
    assert isinstance(classify_payment_intent(payment_intent_view(payment_intent("canceled"))), Canceled)
    with pytest.raises(PermanentStripeError, match="requires_capture"):
        classify_payment_intent(payment_intent_view(payment_intent("requires_capture")))


def test_payment_intent_view_reads_expanded_fields_and_next_action() -> None:
    view = payment_intent_view(
        payment_intent(
            "requires_action",
            customer={"id": "cus_1", "object": "customer"},
            next_action={"type": "redirect_to_url", "redirect_to_url": {"url": "https://hooks.example/3ds"}},
        )
    )
    assert view.customer == "cus_1"
    assert view.next_action_type == "redirect_to_url"
    assert view.next_action_redirect_url == "https://hooks.example/3ds"
    assert view.metadata["charge_attempt_id"] == "att-1"


def test_before_request_hook_sees_every_call_with_its_account(http: RecordingHTTPClient) -> None:
    seen: list[str | None] = []
    gateway = make_gateway(http, before_request=seen.append)
    http.queue(200, payment_intent())
    http.queue(200, payment_intent())
    gateway.retrieve_payment_intent("pi_1")
    gateway.create_offsession_payment_intent(charge_request(stripe_account="acct_2"))
    assert seen == [None, "acct_2"]


def test_on_session_confirm_sends_off_session_false_and_the_return_url(http: RecordingHTTPClient) -> None:
    http.queue(
        200,
        payment_intent(
            "requires_action",
            next_action={"type": "redirect_to_url", "redirect_to_url": {"url": "https://3ds.example/x"}},
        ),
    )
    outcome = make_gateway(http).confirm_on_session("pi_1", "pm_1", "https://app.example/back")
    assert isinstance(outcome, RequiresAction)
    assert outcome.payment_intent.next_action_redirect_url == "https://3ds.example/x"
    (sent,) = http.requests
    assert sent.path == "/v1/payment_intents/pi_1/confirm"
    assert sent.form == {
        "payment_method": ["pm_1"],
        "off_session": ["false"],
        "return_url": ["https://app.example/back"],
    }


def test_on_session_confirm_answered_use_stripe_sdk_still_leads_to_the_bank_page(
    http: RecordingHTTPClient,
) -> None:
    page = "https://hooks.stripe.com/redirect/authenticate/src_1"
    http.queue(
        200,
        payment_intent(
            "requires_action",
            next_action={
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": page, "source": "src_1"},
            },
        ),
    )
    outcome = make_gateway(http).confirm_on_session("pi_1", "pm_1", "https://app.example/back")
    assert isinstance(outcome, RequiresAction)
    assert outcome.payment_intent.next_action_type == "use_stripe_sdk"
    assert outcome.payment_intent.next_action_redirect_url == page


def test_on_session_confirm_with_an_action_only_stripe_js_can_run_is_refused_clearly(
    http: RecordingHTTPClient,
) -> None:
    fingerprint = {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "stripe_3ds2_fingerprint"}}
    http.queue(200, payment_intent("requires_action", next_action=fingerprint))
    with pytest.raises(PermanentStripeError, match=r"only Stripe\.js") as caught:
        make_gateway(http).confirm_on_session("pi_1", "pm_1", "https://app.example/back")
    assert (caught.value.kind, caught.value.payment_intent_id) == ("unexpected_response", "pi_1")


@pytest.mark.parametrize(
    ("next_action", "page"),
    [
        (None, None),
        ({"type": "redirect_to_url", "redirect_to_url": {"url": "https://bank.example/3ds"}},
         "https://bank.example/3ds"),
        ({"type": "redirect_to_url", "redirect_to_url": {"url": None}}, None),
        ({"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect",
                                                       "stripe_js": "https://hooks.stripe.com/x"}},
         "https://hooks.stripe.com/x"),
        ({"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect",
                                                       "stripe_js": "javascript:alert(1)"}}, None),
        ({"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "stripe_3ds2_fingerprint"}}, None),
        ({"type": "verify_with_microdeposits"}, None),
    ],
)
def test_authentication_page(next_action: dict[str, Any] | None, page: str | None) -> None:
    assert authentication_page(next_action) == page


# ---- the pinned API version ------------------------------------------------------------------------


def test_api_version_is_pinned_to_the_installed_sdks(http: RecordingHTTPClient) -> None:
    # An SDK upgrade that moves the API version fails here: pin the new version deliberately, with the
    # emulator's regenerated schema (python -m stripe_emulator.schema_gen) and the contract suite's run.
    assert STRIPE_API_VERSION == stripe._api_version._ApiVersion.CURRENT
    http.queue(200, payment_intent())
    make_gateway(http).retrieve_payment_intent("pi_1")
    (sent,) = http.requests
    assert sent.headers["Stripe-Version"] == STRIPE_API_VERSION


def test_pyproject_bounds_the_sdk_to_the_pinned_versions_major() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    (requirement,) = [r for r in pyproject["project"]["dependencies"] if re.match(r"stripe\b", r)]
    bounds = dict(re.findall(r"(>=|<)\s*([0-9.]+)", requirement))
    major, minor = (int(part) for part in stripe.VERSION.split(".")[:2])
    lower = tuple(int(part) for part in bounds[">="].split("."))
    assert lower[0] == major and lower <= (major, minor)  # the installed SDK is inside the range
    assert bounds["<"] == str(major + 1)  # and the next major, which may move the version, is not


# ---- customers, cards, lists, refunds --------------------------------------------------------------


def setup_intent(status: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "id": "seti_1",
        "object": "setup_intent",
        "status": status,
        "customer": "cus_1",
        "payment_method": "pm_new",
        "usage": "off_session",
        "client_secret": "seti_1_secret_x",
        "next_action": None,
        "last_setup_error": None,
    }
    body.update(overrides)
    return body


def test_attach_card_sets_up_off_session_then_makes_it_default(http: RecordingHTTPClient) -> None:
    http.queue(200, setup_intent("succeeded"))
    http.queue(
        200,
        {
            "id": "pm_new",
            "object": "payment_method",
            "customer": "cus_1",
            "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2034},
        },
    )
    http.queue(200, {"id": "cus_1", "object": "customer"})
    card = make_gateway(http).attach_card(
        "cus_1", "pm_card_visa", idempotency_key="offsession:card:7", stripe_account="acct_1"
    )
    assert (card.payment_method_id, card.brand, card.last4, card.exp_month, card.exp_year) == (
        "pm_new",
        "visa",
        "4242",
        12,
        2034,
    )
    setup, retrieve, update = http.requests
    assert setup.path == "/v1/setup_intents"
    assert setup.form == {
        "customer": ["cus_1"],
        "payment_method": ["pm_card_visa"],
        "allowed_payment_method_types[0]": ["card"],
        "usage": ["off_session"],
        "confirm": ["true"],
    }
    assert setup.headers["Idempotency-Key"] == "offsession:card:7"
    assert retrieve.path == "/v1/payment_methods/pm_new"
    assert update.path == "/v1/customers/cus_1"
    assert update.form == {"invoice_settings[default_payment_method]": ["pm_new"]}
    assert {r.headers["Stripe-Account"] for r in http.requests} == {"acct_1"}


def test_attach_card_without_make_default_leaves_the_customer_alone(http: RecordingHTTPClient) -> None:
    http.queue(200, setup_intent("succeeded"))
    http.queue(200, {"id": "pm_new", "object": "payment_method", "card": {"brand": "mastercard"}})
    make_gateway(http).attach_card("cus_1", "pm_card_mastercard", idempotency_key="k", make_default=False)
    assert [r.path for r in http.requests] == ["/v1/setup_intents", "/v1/payment_methods/pm_new"]


def test_attach_card_declined_at_setup(http: RecordingHTTPClient) -> None:
    http.queue(
        402,
        {
            "error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
                "setup_intent": setup_intent("requires_payment_method"),
            }
        },
    )
    with pytest.raises(CardSetupDeclined) as caught:
        make_gateway(http).attach_card("cus_1", "pm_card_chargeDeclined", idempotency_key="k")
    assert (caught.value.code, caught.value.decline_code) == ("card_declined", "generic_decline")
    assert caught.value.setup_intent_id == "seti_1"
    assert len(http.requests) == 1


def test_attach_card_needing_authentication_is_not_saved(http: RecordingHTTPClient) -> None:
    http.queue(200, setup_intent("requires_action", next_action={"type": "use_stripe_sdk"}))
    with pytest.raises(CardSetupRequiresAction) as caught:
        make_gateway(http).attach_card("cus_1", "pm_card_authenticationRequired", idempotency_key="k")
    assert caught.value.client_secret == "seti_1_secret_x"
    assert caught.value.next_action_type == "use_stripe_sdk"
    assert len(http.requests) == 1


def test_card_from_an_authenticated_setup_intent(http: RecordingHTTPClient) -> None:
    http.queue(200, setup_intent("succeeded"))
    http.queue(200, {"id": "pm_new", "object": "payment_method", "card": {"brand": "visa", "last4": "3184"}})
    http.queue(200, {"id": "cus_1", "object": "customer"})
    card = make_gateway(http).card_from_setup_intent("seti_1")
    assert (card.payment_method_id, card.last4) == ("pm_new", "3184")
    assert [(r.method, r.path) for r in http.requests] == [
        ("get", "/v1/setup_intents/seti_1"),
        ("get", "/v1/payment_methods/pm_new"),
        ("post", "/v1/customers/cus_1"),
    ]


def test_card_from_a_setup_intent_still_waiting_for_the_cardholder(http: RecordingHTTPClient) -> None:
    http.queue(200, setup_intent("requires_action", next_action={"type": "use_stripe_sdk"}))
    with pytest.raises(CardSetupRequiresAction):
        make_gateway(http).card_from_setup_intent("seti_1")


def test_ensure_customer_keeps_a_live_customer(http: RecordingHTTPClient) -> None:
    http.queue(200, {"id": "cus_1", "object": "customer"})
    customer_id = make_gateway(http).ensure_customer(
        "Ada", "ada@example.com", idempotency_key="offsession:customer:1", existing_id="cus_1"
    )
    assert customer_id == "cus_1"
    assert [r.method for r in http.requests] == ["get"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"id": "cus_old", "object": "customer", "deleted": True}),
        (404, {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such"}}),
    ],
)
def test_ensure_customer_replaces_a_gone_customer_under_a_fresh_key(
    http: RecordingHTTPClient, status: int, body: dict[str, Any]
) -> None:
    http.queue(status, body)
    http.queue(200, {"id": "cus_new", "object": "customer"})
    customer_id = make_gateway(http).ensure_customer(
        "Ada", "ada@example.com", idempotency_key="offsession:customer:1", existing_id="cus_old"
    )
    assert customer_id == "cus_new"
    create = http.requests[1]
    assert create.form == {"name": ["Ada"], "email": ["ada@example.com"]}
    assert create.headers["Idempotency-Key"] == "offsession:customer:1:replaces:cus_old"


def test_ensure_customer_creates_with_the_given_key(http: RecordingHTTPClient) -> None:
    http.queue(200, {"id": "cus_new", "object": "customer"})
    assert make_gateway(http).ensure_customer("Ada", "a@x.io", idempotency_key="k1") == "cus_new"
    assert http.requests[0].headers["Idempotency-Key"] == "k1"


def test_detaching_an_already_detached_card_counts_as_done(http: RecordingHTTPClient) -> None:
    http.queue(400, {"error": {"type": "invalid_request_error", "message": "not attached to a customer"}})
    http.queue(200, {"id": "pm_1", "object": "payment_method", "customer": None})
    make_gateway(http).detach_card("pm_1")
    assert [r.path for r in http.requests] == ["/v1/payment_methods/pm_1/detach", "/v1/payment_methods/pm_1"]


def test_detach_failure_on_an_attached_card_is_raised(http: RecordingHTTPClient) -> None:
    http.queue(400, {"error": {"type": "invalid_request_error", "message": "something else"}})
    http.queue(200, {"id": "pm_1", "object": "payment_method", "customer": "cus_1"})
    with pytest.raises(PermanentStripeError, match="something else"):
        make_gateway(http).detach_card("pm_1")


def test_find_attempt_pages_through_the_customers_list(http: RecordingHTTPClient) -> None:
    other = payment_intent(id="pi_other", metadata={"charge_attempt_id": "att-0"})
    ours = payment_intent(id="pi_ours", metadata={"charge_attempt_id": "att-1"})
    http.queue(200, {"object": "list", "data": [other], "has_more": True, "url": "/v1/payment_intents"})
    http.queue(200, {"object": "list", "data": [ours], "has_more": False, "url": "/v1/payment_intents"})
    since = datetime(2026, 11, 1, tzinfo=UTC)
    found = make_gateway(http).find_attempt_payment_intents("cus_1", "att-1", created_gte=since)
    assert [view.id for view in found] == ["pi_ours"]
    first, second = http.requests
    assert first.query["customer"] == ["cus_1"]
    assert first.query["created[gte]"] == [str(int(since.timestamp()))]
    assert "starting_after" not in first.query
    assert second.query["starting_after"] == ["pi_other"]


def test_naive_datetimes_are_refused(http: RecordingHTTPClient) -> None:
    with pytest.raises(ValueError, match="timezone"):
        make_gateway(http).find_attempt_payment_intents("cus_1", "att-1", created_gte=datetime(2026, 1, 1))


def test_list_created_between_bounds(http: RecordingHTTPClient) -> None:
    http.queue(
        200, {"object": "list", "data": [payment_intent()], "has_more": False, "url": "/v1/payment_intents"}
    )
    start = datetime(2026, 11, 25, tzinfo=UTC)
    end = datetime(2026, 11, 26, tzinfo=UTC)
    views = list(make_gateway(http).list_payment_intents_created(start, end))
    assert [v.id for v in views] == ["pi_1"]
    assert http.requests[0].query["created[lt]"] == [str(int(end.timestamp()))]
    assert http.requests[0].query["limit"] == ["100"]


def test_partial_refund(http: RecordingHTTPClient) -> None:
    refund_body = {"id": "re_1", "object": "refund", "status": "succeeded", "amount": 500, "currency": "eur"}
    http.queue(200, {**refund_body, "payment_intent": "pi_1"})
    refund = make_gateway(http).refund("pi_1", amount=500, idempotency_key="offsession:refund:1")
    assert (refund.id, refund.status, refund.amount) == ("re_1", "succeeded", 500)
    assert refund.payment_intent_id == "pi_1"
    assert http.requests[0].form == {"payment_intent": ["pi_1"], "amount": ["500"]}
    assert http.requests[0].headers["Idempotency-Key"] == "offsession:refund:1"


# ---- webhooks --------------------------------------------------------------------------------------

EVENT = json.dumps(
    {"id": "evt_1", "object": "event", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1"}}}
).encode()


def sign(payload: bytes, timestamp: int | None = None, secret: str = WEBHOOK_SECRET) -> str:
    return stripe.WebhookSignature.generate_signature_header(payload.decode(), secret, timestamp)


def test_signed_event_verifies(http: RecordingHTTPClient) -> None:
    event = make_gateway(http).verify_webhook(EVENT, sign(EVENT))
    assert event["id"] == "evt_1" and event["type"] == "payment_intent.succeeded"
    assert http.requests == []


def test_hand_computed_signature_matches_stripes_scheme(http: RecordingHTTPClient) -> None:
    timestamp = int(time.time())
    digest = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + EVENT, hashlib.sha256).hexdigest()
    event = make_gateway(http).verify_webhook(EVENT, f"t={timestamp},v1=deadbeef,v1={digest}")
    assert event["id"] == "evt_1"


@pytest.mark.parametrize(
    "header_for",
    [
        pytest.param(lambda: sign(EVENT.replace(b"evt_1", b"evt_2")), id="tampered-body"),
        pytest.param(lambda: sign(EVENT, secret="whsec_other"), id="other-secret"),
        pytest.param(lambda: sign(EVENT, timestamp=int(time.time()) - 301), id="stale"),
        pytest.param(lambda: None, id="missing"),
        pytest.param(lambda: "", id="empty"),
        pytest.param(lambda: "garbage", id="unparsable"),
        pytest.param(lambda: f"t={int(time.time())}", id="no-v1"),
    ],
)
def test_bad_signatures_are_refused(http: RecordingHTTPClient, header_for: Any) -> None:
    with pytest.raises(WebhookSignatureError):
        make_gateway(http).verify_webhook(EVENT, header_for())


def test_tolerance_is_300_seconds_by_default(http: RecordingHTTPClient) -> None:
    recent = sign(EVENT, timestamp=int(time.time()) - 290)
    assert make_gateway(http).verify_webhook(EVENT, recent)["id"] == "evt_1"
    with pytest.raises(WebhookSignatureError):
        make_gateway(http).verify_webhook(EVENT, recent, tolerance=60)


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'{"object": "event"}'],
    ids=["not-json", "not-an-object", "no-id"],
)
def test_correctly_signed_non_events_are_payload_errors(http: RecordingHTTPClient, payload: bytes) -> None:
    with pytest.raises(WebhookPayloadError):
        make_gateway(http).verify_webhook(payload, sign(payload))


def test_non_utf8_body_is_a_payload_error(http: RecordingHTTPClient) -> None:
    with pytest.raises(WebhookPayloadError):
        make_gateway(http).verify_webhook(b"\xff\xfe", "t=1,v1=00")


# ---- the transport ----------------------------------------------------------------------------------


@pytest.mark.parametrize("proxied", [False, True])
def test_the_environment_is_read_per_request_only_when_it_names_a_proxy(
    monkeypatch: pytest.MonkeyPatch, proxied: bool
) -> None:
    """requests reads the environment (proxies, ~/.netrc) on every request of a Session that trusts it:
    a twentieth of a charge's CPU. The gateway's own Session does not, unless a proxy must be honoured."""
    import urllib.request

    import requests.sessions

    from tests.support.emulator import running_emulator

    looked_up: list[str] = []
    real_lookup = requests.sessions.get_environ_proxies

    def counting_lookup(url: str, no_proxy: Any = None) -> dict[str, str]:
        looked_up.append(url)
        return real_lookup(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting_lookup)
    # A proxy named, but not for the loopback emulator (no_proxy): only the lookups are counted.
    proxies = {"https": "http://proxy:3128"} if proxied else {}
    monkeypatch.setattr(urllib.request, "getproxies", lambda: proxies)
    with running_emulator() as base:
        gateway = StripeGateway("sk_test_emulator", base, "whsec_emulator")
        for name in ("Ada", "Bob"):
            key = f"customer:{name}:{time.time()}"
            gateway.ensure_customer(name, f"{name}@example.com", idempotency_key=key)
    assert (len(looked_up) >= 2) if proxied else (looked_up == [])

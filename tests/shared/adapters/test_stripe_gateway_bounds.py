"""The numbers a charge's lease is made of: how long a Stripe call can take, and the lease itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import stripe

from shared.adapters.rate_budget import DEFAULT_ACQUIRE_TIMEOUT_SECONDS
from shared.adapters.stripe_gateway import StripeGateway
from shared.adapters.stripe_wire import STRIPE_NETWORK_RETRIES, STRIPE_TIMEOUT_SECONDS
from shared.bootstrap import bootstrap
from shared.config import ConfigError, load_config


def test_the_longest_call_is_every_try_at_its_timeout_plus_the_sdk_backoff() -> None:
    gateway = StripeGateway(
        "sk_test_x", "http://127.0.0.1:1", "whsec_x", max_network_retries=2, timeout_seconds=30
    )
    assert gateway.longest_call_seconds == 3 * 30 + 2 * stripe.HTTPClient.MAX_DELAY
    waits = StripeGateway("sk_test_x", "http://127.0.0.1:1", "whsec_x", before_request_max_seconds=60)
    assert waits.longest_call_seconds == gateway.longest_call_seconds + 60


def test_the_gateway_the_workers_use_counts_the_wait_for_a_rate_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OFFSESSION_HOME", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    gateway = bootstrap(load_config()).gateway
    assert gateway.longest_call_seconds == (
        DEFAULT_ACQUIRE_TIMEOUT_SECONDS
        + (STRIPE_NETWORK_RETRIES + 1) * STRIPE_TIMEOUT_SECONDS
        + STRIPE_NETWORK_RETRIES * stripe.HTTPClient.MAX_DELAY
    )


def test_the_default_lease_is_seconds_and_a_too_short_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OFFSESSION_HOME", str(tmp_path))
    monkeypatch.delenv("OFFSESSION_CHARGE_LEASE_SECONDS", raising=False)
    assert load_config().charge_lease_seconds == 15
    monkeypatch.setenv("OFFSESSION_CHARGE_LEASE_SECONDS", "1")
    with pytest.raises(ConfigError, match="OFFSESSION_CHARGE_LEASE_SECONDS must be at least 3"):
        load_config()

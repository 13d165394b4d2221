"""Start a Stripe emulator for a test, plus small helpers for its /_emulator endpoints.

    from tests.support.emulator import running_emulator

    with running_emulator(webhook_url="http://127.0.0.1:5000/webhooks/stripe", error_rate=0.1) as base:
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": base},
                                     max_network_retries=0)

The emulator runs in-process on a free port (a thread, so startup costs milliseconds) and is reached
over real HTTP only, exactly as the SDK reaches Stripe.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import stripe

from stripe_emulator import Config, EmulatorServer, Faults

TEST_KEY = "sk_test_emulator"
WEBHOOK_SECRET = "whsec_emulator"


@contextmanager
def running_emulator(
    webhook_url: str | None = None,
    *,
    webhook_secret: str = WEBHOOK_SECRET,
    state_file: Path | None = None,
    webhook_retry_base_s: float = 0.5,
    webhook_max_attempts: int = 10,
    webhook_events: tuple[str, ...] = ("*",),
    **faults: Any,
) -> Iterator[str]:
    """Yield the base URL of a fresh emulator; ``faults`` are the /_emulator/faults keys."""
    config = Config(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        state_file=state_file,
        faults=Faults().merged(faults),
        webhook_base_delay_s=webhook_retry_base_s,
        webhook_max_attempts=webhook_max_attempts,
        webhook_events=webhook_events,
    )
    server = EmulatorServer(config, "127.0.0.1", 0)
    server.start()
    try:
        yield server.base_url
    finally:
        server.close()


def sdk_client(base: str, **kwargs: Any) -> stripe.StripeClient:
    """A StripeClient aimed at the emulator, without SDK retries unless asked for."""
    kwargs.setdefault("max_network_retries", 0)
    return stripe.StripeClient(TEST_KEY, base_addresses={"api": base}, **kwargs)


def admin(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Call an /_emulator endpoint; returns (status, decoded JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def set_faults(base: str, **faults: Any) -> dict[str, Any]:
    status, body = admin(base, "POST", "/_emulator/faults", faults)
    if status != 200:
        raise ValueError(f"faults rejected: {body}")
    result: dict[str, Any] = body
    return result


def emulator_state(base: str) -> dict[str, Any]:
    _, body = admin(base, "GET", "/_emulator/state")
    result: dict[str, Any] = body
    return result

"""Signing webhook payloads the way Stripe does, for tests that deliver events by hand."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any


def stripe_signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def signed(event: dict[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    payload = json.dumps(event).encode()
    return payload, {
        "Stripe-Signature": stripe_signature(payload, secret, timestamp),
        "Content-Type": "application/json",
    }

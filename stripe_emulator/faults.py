"""Fault injection settings, switchable at run time, and the per-account rate limiter."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


class FaultError(ValueError):
    """A faults update that names an unknown key or carries a bad value."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Faults:
    latency_ms: float = 0
    latency_jitter_ms: float = 0
    rate_limit: float | None = None
    error_rate: float = 0.0
    drop_after_commit_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    webhook_reorder: bool = False
    webhook_delay_ms: float = 0
    # The request runs and commits at once, the answer waits this long. Lets a test kill a worker
    # after Stripe charged and before the worker recorded it.
    response_delay_ms: float = 0
    # Fraction of new refunds that fail: created pending, they end failed (refund.failed) instead of
    # succeeded.
    refund_failure_rate: float = 0.0
    # How long the emulator's later changes take by themselves: a pending refund settling, a dispute
    # under review being decided. None: they wait for a test to settle them (/_emulator/.../settle).
    settle_delay_ms: float | None = 1000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merged(self, update: dict[str, Any]) -> Faults:
        """A copy with ``update`` applied; raises FaultError on bad keys or values."""
        if not isinstance(update, dict):
            raise FaultError("", "faults must be a JSON object")
        known = {f.name for f in fields(self)}
        clean: dict[str, Any] = {}
        for key, value in update.items():
            if key not in known:
                raise FaultError(key, f"Unknown fault: {key!r}. Known faults: {', '.join(sorted(known))}.")
            clean[key] = _check(key, value)
        return replace(self, **clean)

    def latency_s(self) -> float:
        if not self.latency_ms and not self.latency_jitter_ms:
            return 0.0
        return (self.latency_ms + random.uniform(0, self.latency_jitter_ms)) / 1000.0


def _is_number(value: Any) -> bool:
    # bool is an int subclass; true/false must not pass as a number.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(key: str, value: Any) -> Any:
    if key in ("latency_ms", "latency_jitter_ms", "webhook_delay_ms", "response_delay_ms"):
        if not _is_number(value) or value < 0:
            raise FaultError(key, f"{key} must be a number >= 0")
        return value
    if key == "settle_delay_ms":
        if value is None:
            return None
        if not _is_number(value) or value < 0:
            raise FaultError(key, "settle_delay_ms must be null (only when a test settles) or a number >= 0")
        return value
    if key == "rate_limit":
        if value is None:
            return None
        if not _is_number(value) or value <= 0:
            raise FaultError(key, "rate_limit must be null or a number of requests per second > 0")
        return float(value)
    if key == "webhook_reorder":
        if not isinstance(value, bool):
            raise FaultError(key, "webhook_reorder must be true or false")
        return value
    # The remaining keys are probabilities.
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise FaultError(key, f"{key} must be a fraction between 0 and 1")
    return float(value)


class FaultState:
    """The current faults (replaced atomically) and the rate limiter's buckets."""

    def __init__(self, initial: Faults) -> None:
        self._initial = initial
        self.current = initial
        self._lock = threading.Lock()
        # account -> (tokens, last refill time)
        self._buckets: dict[str, tuple[float, float]] = {}

    def update(self, update: dict[str, Any]) -> Faults:
        with self._lock:
            self.current = self.current.merged(update)
            self._buckets.clear()
            return self.current

    def reset(self) -> None:
        with self._lock:
            self.current = self._initial
            self._buckets.clear()

    def allow(self, account: str) -> bool:
        """Token bucket per account holding one second's worth of requests."""
        limit = self.current.rate_limit
        if limit is None:
            return True
        # A limit below 1/s still lets one request through per 1/limit seconds.
        capacity = max(1.0, limit)
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(account, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * limit)
            if tokens < 1.0:
                self._buckets[account] = (tokens, now)
                return False
            self._buckets[account] = (tokens - 1.0, now)
            return True

"""Events: the stored record, Stripe's signature scheme, and webhook delivery with retries.

Delivery runs on a few background threads fed by a time-ordered heap, so API responses never wait
for the receiver. Each failed attempt (non-2xx, timeout, unreachable) is retried with exponential
backoff up to a bounded number of attempts, the way Stripe retries in test mode (only faster).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .faults import FaultState

# Deliveries scheduled within this many seconds of each other may swap places under webhook_reorder.
REORDER_WINDOW_S = 0.3
# After the receiver refused a connection, attempts within this window fail without dialing again:
# a dead endpoint must not eat the CPU the API needs (every event would otherwise dial ~10 times).
DOWN_WINDOW_S = 0.25
# The endpoint given on the command line (--webhook-url): every event of every account.
CLI_ENDPOINT = "cli"
# An endpoint key -> (url, signing secret), or None once it no longer takes deliveries.
Resolve = Callable[[str], "tuple[str, str] | None"]


def sign(payload: str, secret: str, timestamp: int) -> str:
    """The Stripe-Signature header value for ``payload`` (HMAC-SHA256 over "t.payload")."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass
class EventRecord:
    id: str
    type: str
    created: int
    account: str
    # The JSON exactly as first serialized: the webhook payload, and a snapshot of data.object.
    body: str
    # Endpoint key ("cli" for --webhook-url, else the we_... id) -> attempts so far, for every endpoint
    # that has not acknowledged it yet (Stripe's pending_webhooks counts them).
    pending: dict[str, int] = field(default_factory=dict)

    @property
    def pending_webhooks(self) -> int:
        return len(self.pending)

    def render(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.body)
        obj["pending_webhooks"] = len(self.pending)
        return obj

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "created": self.created,
            "account": self.account,
            "body": self.body,
            "pending": dict(self.pending),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventRecord:
        pending = data.get("pending")
        if pending is None:  # a state file from before webhook endpoints: one endpoint, --webhook-url
            pending = {CLI_ENDPOINT: data.get("attempts", 0)} if data.get("pending_webhooks") else {}
        return cls(data["id"], data["type"], data["created"], data["account"], data["body"], dict(pending))


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    record: EventRecord = field(compare=False)
    endpoint: str = field(compare=False, default=CLI_ENDPOINT)
    attempt: int = field(compare=False, default=0)
    duplicate: bool = field(compare=False, default=False)


@dataclass
class WebhookStats:
    attempts: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    gave_up: int = 0
    duplicates_sent: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class WebhookDispatcher:
    """Delivers events to webhook endpoints, each with its own URL and signing secret."""

    def __init__(
        self,
        resolve: Resolve,
        faults: FaultState,
        *,
        workers: int = 4,
        max_attempts: int = 10,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._resolve = resolve
        self._faults = faults
        self._workers_n = workers
        self.max_attempts = max_attempts
        self._base_delay = base_delay_s
        self._max_delay = max_delay_s
        self._timeout = timeout_s
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._down_until: dict[tuple[str, int], float] = {}
        self.stats = WebhookStats()
        self._stats_lock = threading.Lock()
        self.on_change: list[Any] = []

    def start(self) -> None:
        self._stopping = False
        for i in range(self._workers_n):
            t = threading.Thread(target=self._run, name=f"webhook-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=2)
        self._threads.clear()

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()
        with self._stats_lock:
            self.stats = WebhookStats()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def enqueue(self, record: EventRecord, endpoint: str) -> None:
        faults = self._faults.current
        now = time.monotonic()
        delay = faults.webhook_delay_ms / 1000.0
        items = [self._first_delivery(record, endpoint, now + delay, faults.webhook_reorder, duplicate=False)]
        if faults.webhook_duplicate_rate and random.random() < faults.webhook_duplicate_rate:
            items.append(self._first_delivery(record, endpoint, now + delay, faults.webhook_reorder,
                                              duplicate=True))
        with self._cond:
            for item in items:
                heapq.heappush(self._heap, item)
            self._cond.notify(len(items))

    def _first_delivery(self, record: EventRecord, endpoint: str, due: float, reorder: bool,
                        duplicate: bool) -> _Delivery:
        if reorder:
            due += random.uniform(0, REORDER_WINDOW_S)
        elif duplicate:
            # A duplicate trails its original slightly, as a redelivery would.
            due += random.uniform(0.01, 0.05)
        return _Delivery(due, next(self._seq), record, endpoint, 0, duplicate)

    def _next(self) -> _Delivery | None:
        with self._cond:
            while not self._stopping:
                if self._heap:
                    wait = self._heap[0].due - time.monotonic()
                    if wait <= 0:
                        return heapq.heappop(self._heap)
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            target = self._resolve(item.endpoint)
            if target is None:
                # The endpoint was deleted or disabled: Stripe stops delivering to it.
                item.record.pending.pop(item.endpoint, None)
                continue
            try:
                ok = self._attempt(item, *target)
            except Exception as exc:  # a delivery bug must not kill the worker
                print(f"stripe_emulator: webhook delivery error: {exc!r}", file=sys.stderr)
                ok = False
            self._after(item, ok)

    def _after(self, item: _Delivery, ok: bool) -> None:
        rec = item.record
        with self._stats_lock:
            self.stats.attempts += 1
            if item.duplicate and item.attempt == 0:
                self.stats.duplicates_sent += 1
            if ok:
                self.stats.delivered += 1
            else:
                self.stats.failed_attempts += 1
        # Single dict operations, atomic under the GIL: the API reads these without waiting for us, and
        # only this delivery chain counts attempts for its (event, endpoint).
        if ok:
            rec.pending.pop(item.endpoint, None)
        elif not item.duplicate and item.endpoint in rec.pending:
            rec.pending[item.endpoint] = rec.pending.get(item.endpoint, 0) + 1
        if not ok:
            if item.attempt + 1 < self.max_attempts:
                backoff = min(self._base_delay * (2**item.attempt), self._max_delay)
                retry = _Delivery(time.monotonic() + backoff, next(self._seq), rec, item.endpoint,
                                  item.attempt + 1, item.duplicate)
                with self._cond:
                    heapq.heappush(self._heap, retry)
                    self._cond.notify()
            else:
                with self._stats_lock:
                    self.stats.gave_up += 1
        for callback in self.on_change:
            callback()

    def _attempt(self, item: _Delivery, url: str, secret: str) -> bool:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        host, port = parts.hostname or "", parts.port or (443 if https else 80)
        if time.monotonic() < self._down_until.get((host, port), 0.0):
            return False
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        payload = item.record.body
        header = sign(payload, secret, int(time.time()))
        cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
        conn = cls(host, port, timeout=self._timeout)
        try:
            try:
                conn.connect()
            except OSError:
                self._down_until[(host, port)] = time.monotonic() + DOWN_WINDOW_S
                return False
            conn.request(
                "POST",
                path,
                body=payload.encode(),
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                    "Stripe-Signature": header,
                    "Connection": "close",
                },
            )
            resp = conn.getresponse()
            resp.read()
            return 200 <= resp.status < 300
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()


def check_webhook_url(url: str) -> None:
    """Raise ValueError unless ``url`` is one the dispatcher can deliver to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be http(s)://host[:port]/path, got {url!r}")

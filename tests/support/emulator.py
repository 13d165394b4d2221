"""Start a Stripe emulator for a test, plus small helpers for its /_emulator endpoints and for the
emulator's own tests (tests/stripe_emulator/).

    from tests.support.emulator import running_emulator

    with running_emulator(webhook_url="http://127.0.0.1:5000/webhooks/stripe", error_rate=0.1) as base:
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": base},
                                     max_network_retries=0)

The emulator runs in-process on a free port (a thread, so startup costs milliseconds) and is reached
over real HTTP only, exactly as the SDK reaches Stripe.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

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
    api_keys: tuple[str, ...] = (),
    **faults: Any,
) -> Iterator[str]:
    """Yield the base URL of a fresh emulator; ``faults`` are the /_emulator/faults keys, ``api_keys``
    more secret keys of its default account (beside sk_test_emulator)."""
    config = Config(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        state_file=state_file,
        faults=Faults().merged(faults),
        webhook_base_delay_s=webhook_retry_base_s,
        webhook_max_attempts=webhook_max_attempts,
        webhook_events=webhook_events,
        api_keys=api_keys,
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


def create_account(base: str, **fields: Any) -> dict[str, Any]:
    """An account in the emulator's registry (POST /_emulator/accounts): connected to the default
    account as its platform unless ``connect=False``; the answer carries its keys."""
    status, body = admin(base, "POST", "/_emulator/accounts", fields)
    if status != 200:
        raise ValueError(f"account refused: {body}")
    result: dict[str, Any] = body
    return result


def emulator_state(base: str) -> dict[str, Any]:
    _, body = admin(base, "GET", "/_emulator/state")
    result: dict[str, Any] = body
    return result


# ---- helpers of the emulator's own tests -----------------------------------------------------------


def raw(base: str, method: str, path: str, body: str = "", headers: dict[str, str] | None = None,
        key: str = TEST_KEY) -> tuple[int, dict[str, Any], Any]:
    """A /v1 request without the SDK: (status, decoded JSON, headers)."""
    request = urllib.request.Request(
        base + path,
        data=body.encode() if method == "POST" else None,
        method=method,
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def visit(url: str, fields: dict[str, str] | None = None) -> tuple[int, str | None, str]:
    """One request of a browser to an emulator page, redirects not followed: GET, or POST of a form's
    ``fields``. Returns (status, Location, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        if fields is None:
            conn.request("GET", target)
        else:
            conn.request("POST", target, urlencode(fields),
                         {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        return response.status, response.getheader("Location"), response.read().decode()
    finally:
        conn.close()


def customer_with(client: stripe.StripeClient, token: str, **opts: Any) -> tuple[Any, Any]:
    """A customer with ``token`` attached as its default card."""
    options: Any = opts
    cus = client.v1.customers.create({"email": "a@example.com"}, options=options)
    pm = client.v1.payment_methods.attach(token, {"customer": cus.id}, options=options)
    client.v1.customers.update(
        cus.id, {"invoice_settings": {"default_payment_method": pm.id}}, options=options
    )
    return cus, pm


def charge(
    client: stripe.StripeClient,
    cus: Any,
    pm: Any,
    key: str | None = None,
    amount: int = 1234,
    metadata: dict[str, str] | None = None,
    **opts: Any,
) -> Any:
    """An off-session charge of ``pm``, as the product's gateway makes it."""
    options: Any = {"idempotency_key": key or str(uuid.uuid4()), **opts}
    return client.v1.payment_intents.create(
        {
            "amount": amount,
            "currency": "usd",
            "customer": cus.id,
            "payment_method": pm.id,
            "off_session": True,
            "confirm": True,
            "allowed_payment_method_types": ["card"],
            "metadata": metadata or {"charge_attempt_id": "att_1"},
        },
        options=options,
    )


def event_types(client: stripe.StripeClient, **opts: Any) -> list[str]:
    options: Any = opts
    return [e.type for e in client.v1.events.list({"limit": 100}, options=options).data]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds (a positive signal) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Receiver:
    """A tiny webhook endpoint that answers 500 to its first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.deliveries: list[tuple[int, float, str, bytes]] = []  # (status, time, signature, body)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = 500 if len(receiver.deliveries) < receiver.fail_first else 200
                    receiver.deliveries.append(
                        (status, time.monotonic(), self.headers["Stripe-Signature"], body)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/stripe"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ok(self) -> list[tuple[int, float, str, bytes]]:
        with self.lock:
            return [d for d in self.deliveries if d[0] == 200]

    def events(self) -> list[dict[str, Any]]:
        """The bodies of the accepted deliveries, decoded."""
        return [json.loads(d[3]) for d in self.ok()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ReturnSite:
    """The business's site a hosted page sends the browser back to (success_url, cancel_url,
    redirect_uri): answers every GET with a small page naming the path, and keeps the URLs visited."""

    def __init__(self) -> None:
        self.visits: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.visits.append(self.path)
                body = f"<!doctype html><title>Back</title><h1>Back at the shop: {self.path}</h1>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""Command line: ``python -m stripe_emulator`` (also reached as ``offsession emulator``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from .api import Config, parse_webhook_events
from .faults import FaultError, Faults
from .schema import API_VERSION
from .server import EmulatorServer


class _Terminate(Exception):
    """Raised from the SIGTERM handler to leave serve_forever through the normal cleanup path."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stripe_emulator",
        description="A stateful Stripe v1 emulator for the stripe SDK (test mode only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url", default=None, help="POST signed events here (none: only store them)")
    parser.add_argument("--webhook-events", default="*",
                        help="comma-separated event types the endpoint subscribes to (Stripe's "
                             "enabled_events): '*' (default, every type) or exact names like "
                             "payment_intent.succeeded")
    parser.add_argument("--webhook-secret", default=os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_emulator"),
                        help="signing secret (default: $STRIPE_WEBHOOK_SECRET or whsec_emulator)")
    parser.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help="another secret key (sk_test_...) of the default account, beside "
                             "sk_test_emulator; repeat for more. Any other key is refused with 401.")
    parser.add_argument("--state-file", type=Path, default=None,
                        help="load state from this JSON file at start, save it periodically and on exit")
    faults = parser.add_argument_group("faults (also switchable at run time: POST /_emulator/faults)")
    faults.add_argument("--latency-ms", type=float, default=0)
    faults.add_argument("--latency-jitter-ms", type=float, default=0)
    faults.add_argument("--rate-limit", type=float, default=None, help="requests per second per account")
    faults.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 500 unexecuted")
    faults.add_argument("--drop-after-commit-rate", type=float, default=0.0,
                        help="fraction of POSTs executed, then answered by closing the connection")
    faults.add_argument("--webhook-duplicate-rate", type=float, default=0.0)
    faults.add_argument("--webhook-reorder", action="store_true")
    faults.add_argument("--webhook-delay-ms", type=float, default=0)
    faults.add_argument("--response-delay-ms", type=float, default=0,
                        help="POSTs run and commit at once, the answer waits this long")
    faults.add_argument("--refund-failure-rate", type=float, default=0.0,
                        help="fraction of refunds that fail (pending, then failed)")
    faults.add_argument("--settle-delay-ms", type=_delay, default=1000.0,
                        help="how long pending refunds and disputes under review take to settle by "
                             "themselves; 'never': only when a test settles them (default 1000)")
    return parser


def _delay(value: str) -> float | None:
    if value.strip().lower() in ("never", "none", "null"):
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds or 'never': {value!r}") from None


def config_from_args(args: argparse.Namespace) -> Config:
    try:
        webhook_events = parse_webhook_events(args.webhook_events)
    except ValueError as err:
        raise SystemExit(f"stripe_emulator: {err}") from None
    try:
        faults = Faults().merged({
            "latency_ms": args.latency_ms,
            "latency_jitter_ms": args.latency_jitter_ms,
            "rate_limit": args.rate_limit,
            "error_rate": args.error_rate,
            "drop_after_commit_rate": args.drop_after_commit_rate,
            "webhook_duplicate_rate": args.webhook_duplicate_rate,
            "webhook_reorder": args.webhook_reorder,
            "webhook_delay_ms": args.webhook_delay_ms,
            "response_delay_ms": args.response_delay_ms,
            "refund_failure_rate": args.refund_failure_rate,
            "settle_delay_ms": args.settle_delay_ms,
        })
    except FaultError as err:
        raise SystemExit(f"stripe_emulator: {err}") from None
    return Config(webhook_url=args.webhook_url, webhook_secret=args.webhook_secret,
                  state_file=args.state_file, faults=faults, webhook_events=webhook_events,
                  api_keys=tuple(args.api_key))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    try:
        server = EmulatorServer(config, args.host, args.port)
    except (OSError, ValueError) as err:
        print(f"stripe_emulator: cannot start: {err}", file=sys.stderr)
        return 1
    print(f"stripe emulator listening on {server.base_url}, Stripe API version {API_VERSION}"
          f"{f', webhooks to {config.webhook_url}' if config.webhook_url else ''}", flush=True)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def on_term(signum: int, frame: FrameType | None) -> None:
            raise _Terminate

        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_term)
    try:
        server.serve_forever()
    except (_Terminate, KeyboardInterrupt):
        pass
    finally:
        server.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())

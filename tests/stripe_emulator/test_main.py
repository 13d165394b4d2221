"""The command line (python -m stripe_emulator / offsession emulator): flags and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stripe_emulator.__main__ import build_parser, config_from_args
from stripe_emulator.accounts import DEFAULT_ACCOUNT
from tests.support.emulator import admin, sdk_client, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_webhook_events_flag_takes_star_or_exact_names() -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).webhook_events == ("*",)
    flag = ["--webhook-events", "payment_intent.succeeded, charge.refunded"]
    chosen = config_from_args(parser.parse_args(flag))
    assert chosen.webhook_events == ("payment_intent.succeeded", "charge.refunded")
    assert chosen.subscribed("charge.refunded") and not chosen.subscribed("charge.succeeded")
    for wrong in ("refund.*", "", "succeeded"):
        with pytest.raises(SystemExit, match="webhook events"):
            config_from_args(parser.parse_args(["--webhook-events", wrong]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_command_line_saves_state_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    state_file = tmp_path / "cli.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_emulator",
            "--port",
            str(port),
            "--state-file",
            str(state_file),
            "--latency-ms",
            "1",
            "--error-rate",
            "0",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _port_open(port), timeout=15)
        assert admin(base, "GET", "/_emulator/faults")[1]["latency_ms"] == 1
        cus = sdk_client(base).v1.customers.create({"name": "cli"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = json.loads(state_file.read_text())
    assert [c["id"] for c in saved["accounts"][DEFAULT_ACCOUNT]["customers"]] == [cus.id]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_flags_for_keys_and_the_refund_faults() -> None:
    parser = build_parser()
    config = config_from_args(parser.parse_args(
        ["--api-key", "sk_test_one", "--api-key", "sk_test_two", "--refund-failure-rate", "0.5",
         "--settle-delay-ms", "never"]))
    assert config.api_keys == ("sk_test_one", "sk_test_two")
    assert (config.faults.refund_failure_rate, config.faults.settle_delay_ms) == (0.5, None)
    defaults = config_from_args(parser.parse_args([]))
    assert (defaults.api_keys, defaults.faults.settle_delay_ms) == ((), 1000.0)
    with pytest.raises(SystemExit, match="refund_failure_rate"):
        config_from_args(parser.parse_args(["--refund-failure-rate", "2"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--settle-delay-ms", "soon"])

"""shared.adapters.logs: one JSON object per line, ids from the context and from extra=, nothing secret."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from shared.adapters.logs import (
    REDACTED,
    TASK_REQUEST_ID_HEADER,
    JsonFormatter,
    SecretScrubber,
    TextFormatter,
    add_request_id_header,
    incoming_request_id,
    request_id_from_task_request,
    scrub_text,
)
from shared.log_context import bind_log_ids, current_log_ids, log_context

VISA = "4242424242424242"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the JSON formatter into a buffer, isolated from the root logger."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter(SecretScrubber(["os_configured-token-123"])))
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_record_is_one_json_line_with_the_bound_ids_and_its_extras(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = captured
    with log_context(request_id="req-1", charge_attempt_id="a-1"):
        logger.info("charge %s settled\nsecond line", "a-1", extra={"status": "succeeded", "invoice_id": 7})
    (line,) = lines(buffer)
    assert line["level"] == "info" and line["logger"] == "tests.logs"
    assert line["message"] == "charge a-1 settled\nsecond line"
    assert line["ts"].endswith("+00:00")
    assert line["request_id"] == "req-1" and line["charge_attempt_id"] == "a-1"
    assert line["invoice_id"] == 7 and line["status"] == "succeeded"
    assert "args" not in line and "msg" not in line


def test_contexts_nest_and_bind_adds_to_the_innermost_only_inside_a_block() -> None:
    bind_log_ids(invoice_id=1)  # outside every block: nothing to add to, nothing left behind
    assert current_log_ids() == {}
    with log_context(request_id="r"):
        with log_context(charge_attempt_id="a", request_id=None):
            bind_log_ids(invoice_id=3, payment_intent_id=None)
            assert current_log_ids() == {"request_id": "r", "charge_attempt_id": "a", "invoice_id": 3}
        assert current_log_ids() == {"request_id": "r"}
    assert current_log_ids() == {}


def test_exceptions_are_one_field_of_the_same_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    try:
        raise RuntimeError("boom with sk_test_abcdef123")
    except RuntimeError:
        logger.exception("failed")
    (line,) = lines(buffer)
    assert "RuntimeError: boom with" in line["exception"]
    assert "sk_test_abcdef123" not in buffer.getvalue()


def test_secrets_and_card_numbers_never_reach_a_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    logger.warning(
        "key sk_live_51Habc hook whsec_xyz789 secret pi_3Abc_secret_Def header Bearer os_tok.en "
        "card %s spaced 4000 0566 5566 5556 configured os_configured-token-123",
        VISA,
        extra={
            "client_secret": "pi_1_secret_2",
            "api_key": "anything",
            "Authorization": "Basic dXNlcjpwYXNz",
            "params": {"card_number": VISA, "nested": {"password": "hunter22"}, "note": f"pan {VISA}"},
            "payment_intent_id": "pi_3Abc",
        },
    )
    text = buffer.getvalue()
    for secret in (
        "sk_live_51Habc",
        "whsec_xyz789",
        "pi_3Abc_secret_Def",
        "os_tok.en",
        VISA,
        "4000 0566 5566 5556",
        "os_configured-token-123",
        "pi_1_secret_2",
        "dXNlcjpwYXNz",
        "hunter22",
    ):
        assert secret not in text, secret
    (line,) = lines(buffer)
    assert line["client_secret"] == REDACTED and line["api_key"] == REDACTED
    assert line["params"]["card_number"] == REDACTED
    assert line["params"]["nested"]["password"] == REDACTED
    assert line["params"]["note"] == "pan [card number]"
    # Ids are not secrets: the PaymentIntent id stays readable.
    assert line["payment_intent_id"] == "pi_3Abc"
    assert "Bearer [redacted]" in line["message"]


def test_numbers_that_fail_the_luhn_check_are_left_alone() -> None:
    assert scrub_text("order 4242424242424241 at 1732630000123") == "order 4242424242424241 at 1732630000123"
    assert scrub_text(f"x{VISA}y") == "x[card number]y"


def test_the_text_formatter_scrubs_alike_and_appends_the_ids() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "key %s", ("sk_test_zzz",), None)
    record.invoice_id = 5
    with log_context(request_id="abc"):
        line = TextFormatter().format(record)
    assert "sk_test_zzz" not in line and "request_id=abc" in line and "invoice_id=5" in line


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("3f2a9c0e-1b2d-4e5f-8a9b-0c1d2e3f4a5b", True),
        ("lb.req:42_x", True),
        ("", False),
        (None, False),
        ("a" * 65, False),
        ("bad id with spaces", False),
        ('inject"\nX-Evil: 1', False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_plausible(sent: str | None, kept: bool) -> None:
    got = incoming_request_id(sent)
    assert (got == sent) is kept
    assert (
        1 <= len(got) <= 64
        and got.replace("-", "").replace(".", "").replace(":", "").replace("_", "").isalnum()
    )


def test_the_request_id_travels_in_task_headers_and_is_read_back() -> None:
    headers: dict[str, Any] = {}
    add_request_id_header(headers=headers)
    assert headers == {}  # no request bound: nothing to carry
    with log_context(request_id="req-9"):
        add_request_id_header(headers=headers, body=None)
    assert headers == {TASK_REQUEST_ID_HEADER: "req-9"}
    # Celery keeps custom headers as attributes of the task's request (or, in older shapes, in .headers).
    assert request_id_from_task_request(SimpleNamespace(**headers)) == "req-9"
    assert request_id_from_task_request(SimpleNamespace(headers=headers)) == "req-9"
    assert request_id_from_task_request(SimpleNamespace(**{TASK_REQUEST_ID_HEADER: "x y"})) is None
    assert request_id_from_task_request(SimpleNamespace()) is None


def test_setup_leaves_configured_logging_alone_and_quiets_the_stripe_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.adapters.logs import setup_logging

    root = logging.getLogger()
    assert root.handlers  # pytest's capture handler: logging is configured, so setup keeps out
    assert setup_logging("json") is False
    saved_handlers, saved_level = root.handlers[:], root.level
    stripe_logger = logging.getLogger("stripe")
    saved_stripe = stripe_logger.level
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root.handlers = []
    stripe_logger.setLevel(logging.NOTSET)
    try:
        assert setup_logging("json", ["os_secret-token-abc"]) is True
        logging.getLogger("tests.setup").info("token os_secret-token-abc", extra={"invoice_id": 1})
        stripe_logger.debug("post_data client_secret=pi_1_secret_2")
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        stripe_logger.setLevel(saved_stripe)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["message"] == f"token {REDACTED}" and line["invoice_id"] == 1


def test_a_sign_in_link_token_in_a_path_is_redacted() -> None:
    line = '127.0.0.1 "GET /client/login/Zq8_-x1vN3xAbC HTTP/1.1" 302 "http://x/client/login/Q-1_a"'
    scrubbed = scrub_text(line)
    assert "Zq8_-x1vN3xAbC" not in scrubbed and "Q-1_a" not in scrubbed
    assert "GET /client/login/[redacted] HTTP/1.1" in scrubbed
    assert scrub_text("POST /client/login 200") == "POST /client/login 200"


def test_a_link_token_in_a_query_string_is_redacted() -> None:
    line = '"GET /client/cards?token=Ab-9_x&y=1 HTTP/1.1" 200 "http://x/client/authenticate?a=b&TOKEN=Zz_8"'
    scrubbed = scrub_text(line)
    assert "Ab-9_x" not in scrubbed and "Zz_8" not in scrubbed
    assert "/client/cards?token=[redacted]&y=1 HTTP/1.1" in scrubbed
    assert scrub_text("token=Qq1 only") == "token=[redacted] only"  # a query string logged alone (%(q)s)
    assert scrub_text("csrf_token=kept") == "csrf_token=kept"  # another field, not a link token


def test_the_log_format_and_metrics_token_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from shared.config import ConfigError, load_config

    monkeypatch.setenv("OFFSESSION_HOME", str(tmp_path))
    monkeypatch.setenv("OFFSESSION_LOG_FORMAT", "TEXT")
    monkeypatch.setenv("OFFSESSION_METRICS_TOKEN", "scrape-token-123")
    config = load_config()
    assert config.log_format == "text" and config.metrics_token == "scrape-token-123"
    assert "scrape-token-123" in config.log_secrets() and config.api_token in config.log_secrets()
    monkeypatch.delenv("OFFSESSION_LOG_FORMAT")
    monkeypatch.delenv("OFFSESSION_METRICS_TOKEN")
    # Not a terminal (pytest captures stderr): JSON by default.
    assert load_config().log_format == "json" and load_config().metrics_token is None
    monkeypatch.setenv("OFFSESSION_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="OFFSESSION_LOG_FORMAT"):
        load_config()


def test_uuids_are_never_taken_for_card_numbers() -> None:
    # Digits-only stretches of these UUIDs pass the Luhn check (the bench's worker logs showed
    # "[card number]d85-b64a-..." in place of a charge attempt's id).
    for attempt_id in ("40000000-0000-0000-0000-000000000000", "42424242-4242-4242-0000-4242b81c6acf"):
        line = f"charge {attempt_id}: applied (succeeded)"
        assert scrub_text(line) == line
    assert scrub_text("pan 4242-4242-4242-4242 in a note") == "pan [card number] in a note"

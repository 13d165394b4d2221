"""Structured logs: one JSON object per line, carrying the ids of what is being worked on.

The ids (invoice_id, charge_attempt_id, payment_intent_id, event_id, request_id, ...) are those bound
by shared.log_context: the web app binds the request id for a request, the worker binds the task's ids
for a task, and every line logged meanwhile carries them without being passed them.

Nothing secret reaches a line: values under secret-looking keys are replaced, and the message and every
value are scrubbed of API keys, webhook secrets, client secrets, bearer tokens, the configured secrets
themselves and anything shaped like a card number.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

from shared.log_context import current_log_ids

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "SecretScrubber",
    "TextFormatter",
    "add_request_id_header",
    "incoming_request_id",
    "install_formatter",
    "new_request_id",
    "request_id_from_task_request",
    "scrub_server_logs",
    "scrub_text",
    "setup_logging",
]

REQUEST_ID_HEADER = "X-Request-ID"
# The Celery message header carrying the request id from the web request to the tasks it caused.
TASK_REQUEST_ID_HEADER = "offsession_request_id"
MAX_REQUEST_ID_LENGTH = 64
# Letters, digits and a few separators: a caller's id is echoed into headers and logs, so nothing else.
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")

REDACTED = "[redacted]"
# A key containing any of these words has its value replaced whatever the value looks like.
_SECRET_KEY_WORDS = (
    "secret",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "authorization",
    "token",
    "cookie",
    "card_number",
    "cvc",
    "cvv",
)
# (pattern, replacement): what is kept of a match is only what says what was there.
_SECRET_PATTERNS = [
    # Stripe keys (secret, restricted, publishable), webhook secrets, PaymentIntent/SetupIntent secrets.
    (re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9_\-]+"), REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9_\-]+"), REDACTED),
    (re.compile(r"\b(?:pi|seti)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"), rf"\1 {REDACTED}"),
    # An emailed link's token is a credential: in a sign-in link's path, in the query string of the
    # others (an access log line shows both, and the Referer of the next request too).
    (re.compile(r"(/client/login/)[A-Za-z0-9_\-%]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(\btoken=)[^&;#\s\"']+"), rf"\1{REDACTED}"),
]
# 13 to 19 digits, optionally grouped by spaces or dashes: a card number if the Luhn check passes.
# A UUID (every charge attempt's id) may hold a digits-only stretch that passes Luhn: the alternation
# consumes whole UUIDs first so that their digits are never taken for a card.
_CARD_CANDIDATE = re.compile(
    r"(?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"
    r"|(?<![\d])(?:\d[ \-]?){12,18}\d(?![\d])"
)

# The standard LogRecord attributes: everything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}

# ---- request ids -------------------------------------------------------------------------------------


def new_request_id() -> str:
    return uuid.uuid4().hex


def incoming_request_id(value: str | None) -> str:
    """The caller's X-Request-ID when it is a plausible id, else a fresh one: it is echoed, so it is
    never trusted to be short or clean."""
    if value and _REQUEST_ID_PATTERN.match(value):
        return value
    return new_request_id()


# ---- Celery propagation (plain functions: shared/ imports no Celery) --------------------------------


def add_request_id_header(headers: MutableMapping[str, Any] | None = None, **_kwargs: Any) -> None:
    """A `before_task_publish` receiver: the current request id travels with every task published."""
    request_id = current_log_ids().get("request_id")
    if headers is not None and request_id and TASK_REQUEST_ID_HEADER not in headers:
        headers[TASK_REQUEST_ID_HEADER] = request_id


def request_id_from_task_request(task_request: Any) -> str | None:
    """The request id a task was published with (Celery keeps custom headers on the task's request)."""
    value = getattr(task_request, TASK_REQUEST_ID_HEADER, None)
    if value is None and isinstance(getattr(task_request, "headers", None), Mapping):
        value = task_request.headers.get(TASK_REQUEST_ID_HEADER)
    return value if isinstance(value, str) and _REQUEST_ID_PATTERN.match(value) else None


# ---- scrubbing ---------------------------------------------------------------------------------------


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _redact_card(match: re.Match[str]) -> str:
    if match.group("uuid"):
        return match.group(0)
    digits = re.sub(r"[ \-]", "", match.group(0))
    return "[card number]" if 13 <= len(digits) <= 19 and _luhn_valid(digits) else match.group(0)


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return _CARD_CANDIDATE.sub(_redact_card, text)


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_KEY_WORDS)


class SecretScrubber:
    """Scrubs messages and values; knows the configured secrets (keys, tokens) by value as well."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole; short ones would eat words.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def text(self, value: str) -> str:
        return scrub_text(value, self.secrets)

    def value(self, key: str, value: Any) -> Any:
        if _is_secret_key(key):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {str(k): self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [self.value(key, v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.text(str(value))


# ---- formatters --------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the bound ids, the record's extras and, for
    an exception, its traceback as one string."""

    def __init__(self, scrubber: SecretScrubber | None = None) -> None:
        super().__init__()
        self.scrubber = scrubber or SecretScrubber()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.scrubber.text(record.getMessage()),
        }
        fields = {**current_log_ids(), **_extras(record)}
        for key, value in fields.items():
            if key not in entry:
                entry[key] = self.scrubber.value(key, value)
        if record.exc_info:
            entry["exception"] = self.scrubber.text(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self.scrubber.text(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.scrubber.text(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a terminal: the classic line, with the bound ids appended as key=value, scrubbed alike."""

    def __init__(self, scrubber: SecretScrubber | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.scrubber = scrubber or SecretScrubber()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {**current_log_ids(), **_extras(record)}
        if fields:
            line += " " + " ".join(f"{k}={self.scrubber.value(k, v)}" for k, v in fields.items())
        return self.scrubber.text(line)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


# ---- setup -------------------------------------------------------------------------------------------

# The Stripe SDK logs request parameters at DEBUG; nothing below WARNING from it reaches a handler.
QUIET_LOGGERS = {"stripe": logging.WARNING, "urllib3": logging.WARNING}


def make_formatter(log_format: str, secrets: Iterable[str] = ()) -> logging.Formatter:
    scrubber = SecretScrubber(secrets)
    return TextFormatter(scrubber) if log_format == "text" else JsonFormatter(scrubber)


def install_formatter(logger: logging.Logger, formatter: logging.Formatter) -> None:
    """Give every handler of `logger` the formatter (Celery and gunicorn create the handlers)."""
    for handler in logger.handlers:
        handler.setFormatter(formatter)
    for name, level in QUIET_LOGGERS.items():
        quiet = logging.getLogger(name)
        if quiet.level == logging.NOTSET or quiet.level < level:
            quiet.setLevel(level)


# Loggers with handlers of their own (not propagating to the root): gunicorn's error and access logs.
SERVER_LOGGERS = ("gunicorn.error", "gunicorn.access")


class ScrubbingFilter(logging.Filter):
    """Scrubs a record's message template and arguments before any handler formats it, whatever the
    formatter: gunicorn's access log passes the request line, the Referer and every header as
    arguments, and its own format (or a --log-config one) would print them as they came."""

    def __init__(self, scrubber: SecretScrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.scrubber.text(record.msg)
        args = record.args
        if isinstance(args, Mapping):
            for key, value in list(args.items()):
                if isinstance(value, str):
                    args[key] = self.scrubber.text(value)  # type: ignore[index]
        elif isinstance(args, tuple):
            record.args = tuple(self.scrubber.text(a) if isinstance(a, str) else a for a in args)
        return True


def scrub_server_logs(secrets: Iterable[str] = ()) -> None:
    """Put a ScrubbingFilter on gunicorn's loggers (once per process), configured or not: the access
    log must never show an emailed link's token (the Procfile turns it on)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, ScrubbingFilter)]:
            logger.removeFilter(existing)
        logger.addFilter(ScrubbingFilter(SecretScrubber(secrets)))


def setup_logging(log_format: str, secrets: Iterable[str] = (), level: int = logging.INFO) -> bool:
    """Log to stderr through the chosen formatter, unless logging is configured already (by pytest, a
    --log-config, a host application): those keep theirs. Returns whether it installed a handler.

    gunicorn's own loggers get the formatter too, from the moment the app loads in a worker (the
    master's start-up lines before that stay in gunicorn's format)."""
    root = logging.getLogger()
    if root.handlers:
        return False
    formatter = make_formatter(log_format, secrets)
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    root.setLevel(level)
    install_formatter(root, formatter)
    for name in SERVER_LOGGERS:
        install_formatter(logging.getLogger(name), formatter)
    return True

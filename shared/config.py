"""Configuration from the environment (design §2), with embedded defaults that need no server.

A `.env` file in the working directory is read first when present; real environment variables win.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import load_dotenv

STRIPE_HOSTED_API_BASE = "https://api.stripe.com"
EMULATOR_API_KEY = "sk_test_emulator"
EMULATOR_API_BASE = "http://127.0.0.1:12111"


class ConfigError(Exception):
    """The configuration is unsafe or malformed; the process must not start."""


def project_root() -> Path:
    return Path(os.environ.get("OFFSESSION_HOME", Path.cwd()))


def var_dir() -> Path:
    """Where the embedded defaults keep their files (SQLite, broker folders, outbox, secret key)."""
    path = project_root() / "var"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _secret_key_from_var() -> str:
    # Generated once and kept, so sessions survive restarts of the embedded setup.
    path = var_dir() / "secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key


def _api_token_from_var() -> str:
    path = var_dir() / "api_token"
    if path.exists():
        return path.read_text().strip()
    token = "os_" + secrets.token_urlsafe(32)
    path.write_text(token)
    path.chmod(0o600)
    return token


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _default_log_format() -> str:
    # A person at a terminal reads text; anything else (a file, a container's log driver) gets JSON.
    return "text" if sys.stderr.isatty() else "json"


@dataclass(frozen=True)
class Config:
    database_url: str
    celery_broker_url: str
    redis_url: str | None
    stripe_api_key: str
    stripe_api_base: str | None
    stripe_webhook_secret: str
    stripe_rate_limit: float
    api_token: str
    secret_key: str
    public_base_url: str
    mail_url: str | None
    # How long a worker may hold a charge before the janitor asks Stripe what became of it.
    charge_lease_seconds: float = 300.0
    # Transient Stripe errors (5xx, timeouts, 429) retried with the same key before `unknown`.
    charge_transient_retries: int = 6
    # When the due-invoice fan-out runs: a cron expression (minute hour day month weekday) and its zone.
    batch_cron: str = "0 6 * * *"
    batch_timezone: str = "UTC"
    # json (one object per line, for collectors) or text (for a terminal); OFFSESSION_LOG_FORMAT.
    log_format: str = "json"
    # A token Prometheus may scrape /metrics with instead of the API token (which can move money).
    metrics_token: str | None = None

    @property
    def stripe_webhook_secrets(self) -> tuple[str, ...]:
        """STRIPE_WEBHOOK_SECRET as a comma-separated list: an event signed with any of them is Stripe's
        (the account's endpoint and a Connect endpoint each have one; rotating means two for a while)."""
        return tuple(part.strip() for part in self.stripe_webhook_secret.split(",") if part.strip())

    def log_secrets(self) -> tuple[str, ...]:
        """Values no log line may contain, whatever their shape."""
        return tuple(
            s
            for s in (
                self.stripe_api_key,
                self.stripe_webhook_secret,
                *self.stripe_webhook_secrets,
                self.api_token,
                self.secret_key,
                self.metrics_token,
            )
            if s
        )

    def batch_zone(self) -> ZoneInfo:
        return ZoneInfo(self.batch_timezone)

    @property
    def stripe_mode(self) -> str:
        return "live" if self.stripe_api_key.startswith(("sk_live_", "rk_live_")) else "test"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.celery_broker_url.startswith("filesystem://")

    def check_safe(self) -> None:
        """Refuse a live key pointed anywhere but Stripe: it would leak the key or fake real money."""
        if self.stripe_mode == "live" and self.stripe_api_base not in (None, STRIPE_HOSTED_API_BASE):
            raise ConfigError(
                f"STRIPE_API_KEY is a live key but STRIPE_API_BASE is {self.stripe_api_base!r}; "
                "a live key may only talk to Stripe itself (unset STRIPE_API_BASE)."
            )


def load_config() -> Config:
    load_dotenv(project_root() / ".env", override=False)
    env = os.environ
    default_db = f"sqlite:///{var_dir() / 'offsession.db'}"
    api_key = env.get("STRIPE_API_KEY") or EMULATOR_API_KEY
    api_base = env.get("STRIPE_API_BASE")
    if api_base is None:
        # The embedded default key talks to the emulator; a real key with no base talks to Stripe.
        api_base = EMULATOR_API_BASE if api_key == EMULATOR_API_KEY else ""
    config = Config(
        database_url=env.get("DATABASE_URL") or default_db,
        celery_broker_url=env.get("CELERY_BROKER_URL") or "filesystem://",
        redis_url=env.get("REDIS_URL") or None,
        stripe_api_key=api_key,
        stripe_api_base=api_base.rstrip("/") or None,
        stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or "whsec_emulator",
        stripe_rate_limit=_float_env("STRIPE_RATE_LIMIT", 20.0),
        api_token=env.get("OFFSESSION_API_TOKEN") or _api_token_from_var(),
        secret_key=env.get("SECRET_KEY") or _secret_key_from_var(),
        public_base_url=(env.get("PUBLIC_BASE_URL") or "http://127.0.0.1:8000").rstrip("/"),
        mail_url=env.get("MAIL_URL") or None,
        charge_lease_seconds=_float_env("OFFSESSION_CHARGE_LEASE_SECONDS", 300.0),
        charge_transient_retries=int(_float_env("OFFSESSION_CHARGE_TRANSIENT_RETRIES", 6)),
        batch_cron=env.get("OFFSESSION_BATCH_CRON") or "0 6 * * *",
        batch_timezone=env.get("OFFSESSION_BATCH_TIMEZONE") or "UTC",
        log_format=(env.get("OFFSESSION_LOG_FORMAT") or _default_log_format()).lower(),
        metrics_token=env.get("OFFSESSION_METRICS_TOKEN") or None,
    )
    if config.log_format not in ("json", "text"):
        raise ConfigError(f"OFFSESSION_LOG_FORMAT must be json or text, got {config.log_format!r}")
    if len(config.batch_cron.split()) != 5:
        raise ConfigError(
            f"OFFSESSION_BATCH_CRON must have five fields (m h dom mon dow), got {config.batch_cron!r}"
        )
    try:
        config.batch_zone()
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"OFFSESSION_BATCH_TIMEZONE is not a known time zone: {config.batch_timezone!r}"
        ) from exc
    if config.stripe_rate_limit <= 0:
        raise ConfigError("STRIPE_RATE_LIMIT must be a positive number of requests per second")
    config.check_safe()
    return config


@lru_cache(maxsize=1)
def get_config() -> Config:
    """The process-wide configuration, read once."""
    return load_config()

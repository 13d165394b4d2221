"""Configuration from the environment, with embedded defaults that need no server.

A `.env` file in OFFSESSION_HOME (default: the working directory) is read first when present; real
environment variables win. `check_safe` refuses a configuration that must not run.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import load_dotenv

STRIPE_HOSTED_API_BASE = "https://api.stripe.com"
EMULATOR_API_KEY = "sk_test_emulator"
EMULATOR_API_BASE = "http://127.0.0.1:12111"
# The emulator signs its events with this secret, and it is printed in the README: anyone can sign with it.
EMULATOR_WEBHOOK_SECRET = "whsec_emulator"
# With a live key, SECRET_KEY and OFFSESSION_API_TOKEN are at least this long (secrets.token_urlsafe(32)
# gives 43 characters).
MIN_LIVE_SECRET_LENGTH = 32
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")


DEFAULT_CHARGE_LEASE_SECONDS = 15.0
# Below this a renewal (every third of the lease) would come round faster than a busy database answers.
MIN_CHARGE_LEASE_SECONDS = 3.0


class ConfigError(Exception):
    """The configuration is unsafe or malformed; the process must not start."""


def project_root() -> Path:
    return Path(os.environ.get("OFFSESSION_HOME") or Path.cwd())


def var_dir() -> Path:
    """Where the embedded defaults keep their files (SQLite, broker folders, outbox, generated secrets),
    created on first use: only a process using one of those defaults calls this."""
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


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from exc


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
    # How long a charge's lease lasts unless its holder renews it (every third of it, while it works):
    # a worker that dies hands its charges to recovery this long after its last renewal
    # (shared.services.leases).
    charge_lease_seconds: float = DEFAULT_CHARGE_LEASE_SECONDS
    # Transient Stripe errors (5xx, timeouts, 429) retried with the same key before `unknown`.
    charge_transient_retries: int = 6
    # When the due-invoice fan-out runs: a cron expression (minute hour day month weekday) and its zone.
    batch_cron: str = "0 6 * * *"
    batch_timezone: str = "UTC"
    # json (one object per line, for collectors) or text (for a terminal); OFFSESSION_LOG_FORMAT.
    log_format: str = "json"
    # A token Prometheus may scrape /metrics with instead of the API token (which can move money).
    metrics_token: str | None = None
    # Reverse proxies in front of the web app whose X-Forwarded-For/-Proto/-Host/-Port are believed
    # (werkzeug's ProxyFix); 0 = none, the socket's peer is the client.
    trusted_proxies: int = 0

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
        return "live" if self.stripe_api_key.startswith(LIVE_KEY_PREFIXES) else "test"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.celery_broker_url.startswith("filesystem://")

    @property
    def uses_emulator_key(self) -> bool:
        return self.stripe_api_key == EMULATOR_API_KEY


def _webhook_secrets(config: Config) -> list[str]:
    """Every signing secret configured for the webhook endpoint (a comma-separated list: old and new
    while a secret is rolled)."""
    return [part.strip() for part in config.stripe_webhook_secret.split(",") if part.strip()]


def check_safe(config: Config) -> None:
    """Refuse, naming the variable, a configuration that must not run: every process checks it at start.

    - A live key aimed anywhere but Stripe would leak the key or fake real money.
    - With any key but the emulator's, the webhook endpoint needs the endpoint's own signing secret:
      without one, or with the emulator's (printed in the README), anyone could sign a
      payment_intent.succeeded event and mark invoices paid.
    - In live mode, links in emails go out over https, and the session key and API token are long.
    """
    live = config.stripe_mode == "live"
    if live and config.stripe_api_base not in (None, STRIPE_HOSTED_API_BASE):
        raise ConfigError(
            f"STRIPE_API_BASE is {config.stripe_api_base!r} but STRIPE_API_KEY is a live key; "
            "a live key may only talk to Stripe itself (unset STRIPE_API_BASE)."
        )
    if not config.uses_emulator_key:
        configured = _webhook_secrets(config)
        if not configured:
            raise ConfigError(
                "STRIPE_WEBHOOK_SECRET is not set: with a Stripe key other than the emulator's, set it to "
                "the webhook endpoint's signing secret (Stripe dashboard, whsec_...)."
            )
        if EMULATOR_WEBHOOK_SECRET in configured:
            raise ConfigError(
                f"STRIPE_WEBHOOK_SECRET is the emulator's published secret ({EMULATOR_WEBHOOK_SECRET}): "
                "anyone could sign events with it; set the webhook endpoint's signing secret."
            )
    if not live:
        return
    if not config.public_base_url.startswith("https://"):
        raise ConfigError(
            f"PUBLIC_BASE_URL must be an https:// URL with a live Stripe key, got {config.public_base_url!r}."
        )
    for variable, value in (("SECRET_KEY", config.secret_key), ("OFFSESSION_API_TOKEN", config.api_token)):
        if len(value) < MIN_LIVE_SECRET_LENGTH:
            raise ConfigError(
                f"{variable} must be at least {MIN_LIVE_SECRET_LENGTH} random characters with a live Stripe "
                f"key ({'unset' if not value else f'it has {len(value)}'}); "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one."
            )


def load_config() -> Config:
    load_dotenv(project_root() / ".env", override=False)
    env = os.environ
    api_key = env.get("STRIPE_API_KEY") or EMULATOR_API_KEY
    api_base = env.get("STRIPE_API_BASE")
    if api_base is None:
        # The embedded default key talks to the emulator; a real key with no base talks to Stripe.
        api_base = EMULATOR_API_BASE if api_key == EMULATOR_API_KEY else ""
    # Only the emulator's key falls back to the emulator's signing secret (check_safe refuses the rest).
    webhook_secret = env.get("STRIPE_WEBHOOK_SECRET") or (
        EMULATOR_WEBHOOK_SECRET if api_key == EMULATOR_API_KEY else ""
    )
    config = Config(
        database_url=env.get("DATABASE_URL") or f"sqlite:///{project_root() / 'var' / 'offsession.db'}",
        celery_broker_url=env.get("CELERY_BROKER_URL") or "filesystem://",
        redis_url=env.get("REDIS_URL") or None,
        stripe_api_key=api_key,
        stripe_api_base=api_base.rstrip("/") or None,
        stripe_webhook_secret=webhook_secret,
        stripe_rate_limit=_float_env("STRIPE_RATE_LIMIT", 20.0),
        api_token=env.get("OFFSESSION_API_TOKEN") or "",
        secret_key=env.get("SECRET_KEY") or "",
        public_base_url=(env.get("PUBLIC_BASE_URL") or "http://127.0.0.1:8000").rstrip("/"),
        mail_url=env.get("MAIL_URL") or None,
        charge_lease_seconds=_float_env("OFFSESSION_CHARGE_LEASE_SECONDS", DEFAULT_CHARGE_LEASE_SECONDS),
        charge_transient_retries=int(_float_env("OFFSESSION_CHARGE_TRANSIENT_RETRIES", 6)),
        batch_cron=env.get("OFFSESSION_BATCH_CRON") or "0 6 * * *",
        batch_timezone=env.get("OFFSESSION_BATCH_TIMEZONE") or "UTC",
        log_format=(env.get("OFFSESSION_LOG_FORMAT") or _default_log_format()).lower(),
        metrics_token=env.get("OFFSESSION_METRICS_TOKEN") or None,
        trusted_proxies=_int_env("OFFSESSION_TRUSTED_PROXIES", 0),
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
    if config.charge_lease_seconds < MIN_CHARGE_LEASE_SECONDS:
        raise ConfigError(
            f"OFFSESSION_CHARGE_LEASE_SECONDS must be at least {MIN_CHARGE_LEASE_SECONDS:g}, "
            f"got {config.charge_lease_seconds:g}"
        )
    if config.stripe_rate_limit <= 0:
        raise ConfigError("STRIPE_RATE_LIMIT must be a positive number of requests per second")
    if config.trusted_proxies < 0:
        raise ConfigError("OFFSESSION_TRUSTED_PROXIES must be a whole number of proxies, 0 or more")
    # Live, the secrets must come from the environment: check_safe refuses them unset, before anything
    # is written. In test mode, unset ones are generated once and kept under var/.
    check_safe(config)
    if not env.get("DATABASE_URL"):
        var_dir()  # the embedded SQLite file's folder, created only when it is the database in use
    return replace(
        config,
        api_token=config.api_token or _api_token_from_var(),
        secret_key=config.secret_key or _secret_key_from_var(),
    )


def config_or_exit() -> Config:
    """load_config() for a process starting up: a configuration that must not run stops it with one line
    on stderr naming the variable, and exit status 2."""
    try:
        return load_config()
    except ConfigError as exc:
        print(f"offsession: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

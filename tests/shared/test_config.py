"""shared.config.check_safe: with a real Stripe key the processes refuse a missing or published webhook
secret; in live mode also plain-http links and short secrets. Every refusal names its variable first.
The embedded defaults write under OFFSESSION_HOME/var only when they are in use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import (
    EMULATOR_WEBHOOK_SECRET,
    ConfigError,
    config_or_exit,
    load_config,
)

LONG = "x" * 32
TEST_KEY = "sk_test_51RealLookingTestKey"
LIVE_KEY = "sk_live_51RealLookingLiveKey"
SERVED = {
    # Every server named: no embedded default needs var/.
    "DATABASE_URL": "postgresql+psycopg://offsession@db.internal/offsession",
    "CELERY_BROKER_URL": "redis://redis.internal:6379/0",
    "MAIL_URL": "smtp://mail.internal:587",
}
VARIABLES = (
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRET",
    "PUBLIC_BASE_URL",
    "SECRET_KEY",
    "OFFSESSION_API_TOKEN",
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "REDIS_URL",
    "MAIL_URL",
    "OFFSESSION_TRUSTED_PROXIES",
)


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty OFFSESSION_HOME and none of the variables below set."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OFFSESSION_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def configure(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def refusal(monkeypatch: pytest.MonkeyPatch, **values: str) -> str:
    configure(monkeypatch, **values)
    with pytest.raises(ConfigError) as caught:
        load_config()
    message = str(caught.value)
    assert "\n" not in message  # one line
    return message


def test_the_embedded_defaults_run_against_the_emulator(home: Path) -> None:
    config = load_config()
    assert config.stripe_webhook_secret == EMULATOR_WEBHOOK_SECRET
    assert config.stripe_api_base == "http://127.0.0.1:12111"


@pytest.mark.parametrize("key", [TEST_KEY, LIVE_KEY, "rk_live_51Restricted"])
def test_a_real_key_without_a_webhook_secret_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    message = refusal(monkeypatch, STRIPE_API_KEY=key)
    assert message.startswith("STRIPE_WEBHOOK_SECRET is not set")
    # A blank list is no secret either.
    assert refusal(monkeypatch, STRIPE_WEBHOOK_SECRET=" , ").startswith("STRIPE_WEBHOOK_SECRET is not set")


def test_a_refused_configuration_writes_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any embedded default makes var/ (no SQLite folder, no generated secrets)."""
    refusal(monkeypatch, STRIPE_API_KEY=TEST_KEY)
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("secret", [EMULATOR_WEBHOOK_SECRET, f"whsec_new,{EMULATOR_WEBHOOK_SECRET}"])
def test_a_real_key_with_the_emulator_s_secret_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    message = refusal(monkeypatch, STRIPE_API_KEY=TEST_KEY, STRIPE_WEBHOOK_SECRET=secret)
    assert message.startswith("STRIPE_WEBHOOK_SECRET is the emulator's published secret")


def test_test_mode_with_its_own_secret_runs_on_plain_http_and_short_secrets(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(
        monkeypatch,
        STRIPE_API_KEY=TEST_KEY,
        STRIPE_WEBHOOK_SECRET="whsec_staging",
        PUBLIC_BASE_URL="http://staging.internal:8000",
        SECRET_KEY="short",
        OFFSESSION_API_TOKEN="short",
    )
    config = load_config()
    assert config.stripe_api_base is None  # a real key with no base talks to Stripe itself
    assert config.stripe_mode == "test"


def live(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
    values = {
        "STRIPE_API_KEY": LIVE_KEY,
        "STRIPE_WEBHOOK_SECRET": "whsec_live",
        "PUBLIC_BASE_URL": "https://pay.example.com",
        "SECRET_KEY": LONG,
        "OFFSESSION_API_TOKEN": LONG,
        **SERVED,
        **overrides,
    }
    configure(monkeypatch, **{k: v for k, v in values.items() if v is not None})


def test_a_complete_live_configuration_runs_and_writes_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live(monkeypatch)
    config = load_config()
    assert config.stripe_mode == "live" and config.stripe_api_base is None
    assert list(home.iterdir()) == []  # no var/: nothing embedded is in use


def test_a_live_key_aimed_at_anything_but_stripe_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live(monkeypatch, STRIPE_API_BASE="http://127.0.0.1:12111")
    assert refusal(monkeypatch).startswith("STRIPE_API_BASE is 'http://127.0.0.1:12111'")


def test_live_links_must_be_https(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live(monkeypatch, PUBLIC_BASE_URL="http://pay.example.com")
    assert refusal(monkeypatch).startswith("PUBLIC_BASE_URL must be an https:// URL")


@pytest.mark.parametrize("variable", ["SECRET_KEY", "OFFSESSION_API_TOKEN"])
def test_live_secrets_must_be_long(home: Path, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    live(monkeypatch, **{variable: "x" * 31})
    message = refusal(monkeypatch)
    assert message.startswith(f"{variable} must be at least 32") and "it has 31" in message


@pytest.mark.parametrize("variable", ["SECRET_KEY", "OFFSESSION_API_TOKEN"])
def test_live_secrets_are_never_generated(home: Path, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """Generated into var/ they would differ between containers and vanish with one: live needs them set."""
    live(monkeypatch)
    monkeypatch.delenv(variable)
    message = refusal(monkeypatch)
    assert message.startswith(f"{variable} must be at least 32") and "unset" in message
    assert not (home / "var").exists()


def test_var_is_created_only_for_the_embedded_default_that_needs_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, **SERVED, SECRET_KEY="set", OFFSESSION_API_TOKEN="set")
    load_config()
    assert list(home.iterdir()) == []
    monkeypatch.delenv("DATABASE_URL")
    assert load_config().database_url == f"sqlite:///{home / 'var' / 'offsession.db'}"
    assert (home / "var").is_dir()


def test_generated_secrets_are_kept_under_var_in_test_mode(home: Path) -> None:
    first = load_config()
    assert (home / "var" / "secret_key").read_text() == first.secret_key
    assert load_config().api_token == first.api_token


@pytest.mark.parametrize(("raw", "expected"), [("", 0), ("0", 0), ("2", 2)])
def test_trusted_proxies_is_a_count(
    home: Path, monkeypatch: pytest.MonkeyPatch, raw: str, expected: int
) -> None:
    configure(monkeypatch, OFFSESSION_TRUSTED_PROXIES=raw)
    assert load_config().trusted_proxies == expected


@pytest.mark.parametrize("raw", ["-1", "one", "1.5"])
def test_trusted_proxies_refuses_what_is_not_a_count(
    home: Path, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    assert refusal(monkeypatch, OFFSESSION_TRUSTED_PROXIES=raw).startswith("OFFSESSION_TRUSTED_PROXIES")


def test_a_process_starting_with_an_unsafe_configuration_exits_2_with_one_line(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch, STRIPE_API_KEY=TEST_KEY)
    with pytest.raises(SystemExit) as stopped:
        config_or_exit()
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("offsession: STRIPE_WEBHOOK_SECRET is not set")

"""The shared Stripe rate budget (shared/adapters/rate_budget.py): the Redis backend through fakeredis and
its Lua
support, the database backend on SQLite and PostgreSQL. The same behaviour tests run on both, on a fake
clock (no real sleeping); a few use the real clock to show the server-side time and the locking."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import fakeredis
import pytest
import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.rate_budget import (
    PLATFORM_ACCOUNT,
    DatabaseRateBudget,
    RateBudget,
    RedisRateBudget,
    budget_account,
    default_burst,
    gateway_hooks,
    rate_budget_from_config,
)
from shared.adapters.stripe_gateway import StripeGateway
from shared.config import Config, load_config
from shared.domain.models import RateLimitState
from shared.domain.payments import TransientStripeError
from shared.services.ports import RateBudgetTimeout

RATE = 20.0
BURST = 2.0
BURST_INT = int(BURST)
INTERVAL = 1 / RATE


class FakeTime:
    """An epoch clock that only moves when the code under test sleeps."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeBudget = Callable[..., RateBudget]


def grant_times(budget: RateBudget, clock: FakeTime, account: str | None, count: int) -> list[float]:
    times = []
    for _ in range(count):
        budget.acquire(account)
        times.append(clock.now)
    return times


def max_in_any_window(times: list[float], window: float) -> int:
    """The most grants any closed window [t, t + window] holds (it suffices to start at a grant)."""
    return max(sum(1 for t in times if start <= t <= start + window) for start in times)


class BudgetBehaviour:
    """Tests every backend must pass; subclasses provide `make_budget(clock=..., rate=..., burst=...)`."""

    @pytest.fixture
    def clock(self) -> FakeTime:
        return FakeTime()

    @pytest.fixture
    def budget(self, make_budget: MakeBudget, clock: FakeTime) -> RateBudget:
        return make_budget(clock=clock)

    def test_an_idle_account_gets_its_burst_at_once_then_waits_one_interval(self, budget: RateBudget) -> None:
        assert [budget.try_acquire("acct_a") for _ in range(2)] == [0.0, 0.0]
        assert budget.try_acquire("acct_a") == pytest.approx(INTERVAL, abs=1e-5)
        # A refusal takes nothing: asking again at once gets the same answer.
        assert budget.try_acquire("acct_a") == pytest.approx(INTERVAL, abs=1e-5)

    def test_grants_follow_the_configured_rate(self, budget: RateBudget, clock: FakeTime) -> None:
        start = clock.now
        times = grant_times(budget, clock, "acct_a", 102)
        # The burst goes at once, then exactly one grant per interval: 100 more take 5 s at 20/s.
        assert times[-1] - start == pytest.approx(100 * INTERVAL, abs=1e-4)
        # Windows a hair over and under one second, so microsecond rounding cannot decide the count.
        assert max_in_any_window(times, 1.001) == RATE + BURST
        assert max_in_any_window(times[BURST_INT:], 0.999) == RATE

    def test_acquire_returns_the_seconds_it_waited(self, budget: RateBudget, clock: FakeTime) -> None:
        assert budget.acquire("acct_a") == 0.0
        assert budget.acquire("acct_a") == 0.0
        assert budget.acquire("acct_a") == pytest.approx(INTERVAL, abs=1e-5)
        assert sum(clock.sleeps) == pytest.approx(INTERVAL, abs=1e-5)

    def test_accounts_have_independent_budgets(self, budget: RateBudget) -> None:
        assert [budget.try_acquire("acct_a") for _ in range(3)][-1] > 0
        assert [budget.try_acquire("acct_b") for _ in range(2)] == [0.0, 0.0]
        assert budget.try_acquire(None) == 0.0
        # None is the platform account: one budget however it is named.
        assert budget.try_acquire(PLATFORM_ACCOUNT) == 0.0
        assert budget.try_acquire(None) > 0

    def test_slow_down_pauses_the_account_then_resumes_without_a_burst(
        self, budget: RateBudget, clock: FakeTime
    ) -> None:
        budget.slow_down("acct_a", 1.0)
        assert budget.try_acquire("acct_a") == pytest.approx(1.0, abs=1e-5)
        assert budget.try_acquire("acct_b") == 0.0
        clock.advance(1.0)
        assert budget.try_acquire("acct_a") == 0.0
        # Back at the configured rate, not with a burst that would provoke another 429.
        assert budget.try_acquire("acct_a") == pytest.approx(INTERVAL, abs=1e-5)

    def test_slow_down_is_felt_by_callers_already_waiting(self, budget: RateBudget, clock: FakeTime) -> None:
        grant_times(budget, clock, "acct_a", 2)
        assert budget.try_acquire("acct_a") == pytest.approx(INTERVAL, abs=1e-5)
        budget.slow_down("acct_a", 1.0)
        # The caller that expected a token in 50 ms finds the account paused when it asks again.
        clock.advance(INTERVAL)
        assert budget.try_acquire("acct_a") == pytest.approx(1.0 - INTERVAL, abs=1e-5)

    def test_429s_pause_once_not_once_per_worker_and_never_shorten_a_pause(self, budget: RateBudget) -> None:
        for _ in range(5):
            budget.slow_down("acct_a", 1.0)
        assert budget.try_acquire("acct_a") == pytest.approx(1.0, abs=1e-5)
        # Nor does a shorter pause cut a longer one short.
        budget.slow_down("acct_b", 2.0)
        budget.slow_down("acct_b", 1.0)
        assert budget.try_acquire("acct_b") == pytest.approx(2.0, abs=1e-5)

    def test_acquire_gives_up_at_once_when_the_token_is_beyond_the_timeout(
        self, budget: RateBudget, clock: FakeTime
    ) -> None:
        budget.slow_down("acct_a", 2.0)
        with pytest.raises(RateBudgetTimeout, match="acct_a") as caught:
            budget.acquire("acct_a", timeout=0.5)
        assert caught.value.needed_wait == pytest.approx(2.0, abs=1e-5)
        assert clock.sleeps == []  # no pointless sleep before failing
        assert budget.acquire("acct_a", timeout=2.5) == pytest.approx(2.0, abs=1e-5)


class TestRedisBudget(BudgetBehaviour):
    @pytest.fixture
    def redis_client(self) -> fakeredis.FakeRedis:
        return fakeredis.FakeRedis()

    @pytest.fixture
    def make_budget(self, redis_client: fakeredis.FakeRedis) -> MakeBudget:
        def make(clock: FakeTime | None = None, rate: float = RATE, burst: float = BURST) -> RedisRateBudget:
            if clock is None:
                return RedisRateBudget(redis_client, rate, burst)
            return RedisRateBudget(
                redis_client, rate, burst, clock=clock.time, sleep=clock.sleep, monotonic=clock.time
            )

        return make

    def test_the_server_clock_decides_when_no_clock_is_given(
        self, make_budget: MakeBudget, redis_client: fakeredis.FakeRedis
    ) -> None:
        budget = make_budget()
        assert [budget.try_acquire("acct_a") for _ in range(2)] == [0.0, 0.0]
        assert 0 < budget.try_acquire("acct_a") <= INTERVAL
        # The key lives only while its TAT is ahead of now: idle accounts leave nothing behind.
        assert 0 < redis_client.pttl("offsession:stripe-rate:acct_a") <= BURST * INTERVAL * 1000

    def test_several_budget_objects_share_one_account_budget(
        self, make_budget: MakeBudget, clock: FakeTime
    ) -> None:
        # As separate worker processes would: separate objects, one Redis.
        workers = [make_budget(clock=clock) for _ in range(3)]
        assert [w.try_acquire("acct_a") for w in workers] == [0.0, 0.0, pytest.approx(INTERVAL, abs=1e-5)]
        workers[0].slow_down("acct_a", 1.0)
        assert workers[2].try_acquire("acct_a") == pytest.approx(1.0, abs=1e-5)

    def test_a_flushed_script_cache_is_reloaded(
        self, budget: RateBudget, redis_client: fakeredis.FakeRedis
    ) -> None:
        assert budget.try_acquire("acct_a") == 0.0
        redis_client.script_flush()
        assert budget.try_acquire("acct_a") == 0.0
        assert budget.try_acquire("acct_a") > 0


class TestDatabaseBudget(BudgetBehaviour):
    @pytest.fixture
    def make_budget(self, session_factory: sessionmaker[Session]) -> MakeBudget:
        def make(
            clock: FakeTime | None = None, rate: float = RATE, burst: float = BURST
        ) -> DatabaseRateBudget:
            if clock is None:
                return DatabaseRateBudget(session_factory, rate, burst)
            return DatabaseRateBudget(
                session_factory, rate, burst, clock=clock.time, sleep=clock.sleep, monotonic=clock.time
            )

        return make

    def test_one_row_per_account_holds_the_tat(
        self, budget: RateBudget, clock: FakeTime, session_factory: sessionmaker[Session]
    ) -> None:
        grant_times(budget, clock, "acct_a", 3)
        grant_times(budget, clock, None, 1)
        with session_factory() as session:
            rows = {row.account: row.tat for row in session.execute(select(RateLimitState)).scalars()}
        assert rows == {
            "acct_a": pytest.approx(clock.now + 2 * INTERVAL, abs=1e-5),
            PLATFORM_ACCOUNT: pytest.approx(clock.now + INTERVAL, abs=1e-5),
        }

    def test_threads_racing_for_a_second_get_at_most_rate_plus_burst(self, make_budget: MakeBudget) -> None:
        budget = make_budget()  # the real clock: the database's on PostgreSQL, this machine's on SQLite
        window = 1.0
        started = time.time()
        deadline = started + window
        granted: list[float] = []
        lock = threading.Lock()

        def worker() -> None:
            while (remaining := deadline - time.time()) > 0:
                try:
                    budget.acquire("acct_threads", timeout=remaining)
                except RateBudgetTimeout:
                    return
                with lock:
                    granted.append(time.time())

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert granted
        # Every grant happened between `started` and the last return, so GCRA bounds their number exactly.
        elapsed = max(granted) - started
        assert len(granted) <= int(RATE * elapsed) + BURST
        assert len(granted) >= 0.7 * RATE * window  # and the budget was actually used, not starved


def test_default_burst_keeps_rate_plus_burst_under_stripes_limits() -> None:
    assert default_burst(20) == 2  # 22/s at most against the emulator's and test mode's 25
    assert default_burst(90) == 9  # 99/s at most against live mode's 100
    assert default_burst(3) == 1
    assert RedisRateBudget(fakeredis.FakeRedis(), 20).burst == 2


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (10, 0.5)])
def test_nonsense_rates_are_refused(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError):
        RedisRateBudget(fakeredis.FakeRedis(), rate, burst)


def test_budget_account_names_the_platform() -> None:
    assert budget_account(None) == budget_account("") == PLATFORM_ACCOUNT
    assert budget_account("acct_1") == "acct_1"


def _config(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, **env: str) -> Config:
    monkeypatch.setenv("OFFSESSION_HOME", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("STRIPE_RATE_LIMIT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_config()


def test_from_config_uses_redis_when_redis_url_is_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    config = _config(monkeypatch, tmp_path, REDIS_URL="redis://127.0.0.1:1/0", STRIPE_RATE_LIMIT="90")
    budget = rate_budget_from_config(config, sessionmaker())
    assert isinstance(budget, RedisRateBudget)  # no connection is made until the first token
    assert (budget.rate_per_second, budget.burst) == (90.0, 9.0)


def test_from_config_uses_the_database_without_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    budget = rate_budget_from_config(_config(monkeypatch, tmp_path), sessionmaker())
    assert isinstance(budget, DatabaseRateBudget)
    assert budget.rate_per_second == 20.0


class OneAnswerAtATime(stripe.HTTPClient):
    """Stripe's HTTP transport, answering the queued (status, body) pairs in order."""

    name = "queued"

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        super().__init__()
        self.answers = answers
        self.accounts: list[str | None] = []

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> tuple[str, int, Mapping[str, str]]:
        self.accounts.append((headers or {}).get("Stripe-Account"))
        status, body = self.answers.pop(0)
        return json.dumps(body), status, {"request-id": "req_1"}

    def close(self) -> None:
        pass


def test_gateway_hooks_take_a_token_per_call_and_slow_down_on_429() -> None:
    clock = FakeTime()
    redis_client = fakeredis.FakeRedis()
    budget = RedisRateBudget(
        redis_client, RATE, BURST, clock=clock.time, sleep=clock.sleep, monotonic=clock.time
    )
    before_request, on_rate_limited = gateway_hooks(budget)
    http = OneAnswerAtATime(
        [
            (429, {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow"}}),
            (200, {"id": "cus_1", "object": "customer"}),
        ]
    )
    gateway = StripeGateway(
        "sk_test_unit",
        "http://127.0.0.1:12111",
        "whsec_unit",
        max_network_retries=0,
        http_client=http,
        before_request=before_request,
        on_rate_limited=on_rate_limited,
    )

    def create_customer() -> str:
        return gateway.ensure_customer(
            "Ada", "ada@example.com", idempotency_key="k1", stripe_account="acct_9"
        )

    with pytest.raises(TransientStripeError) as caught:
        create_customer()
    assert caught.value.rate_limited
    # The retry, same key, waits out the pause every worker now sees, then goes through.
    assert create_customer() == "cus_1"
    assert sum(clock.sleeps) == pytest.approx(1.0, abs=1e-5)
    assert http.accounts == ["acct_9", "acct_9"]
    assert budget.try_acquire("acct_9") == pytest.approx(INTERVAL, abs=1e-5)
    assert budget.try_acquire(None) == 0.0


def test_gateway_hooks_time_out_before_anything_is_sent() -> None:
    clock = FakeTime()
    budget = RedisRateBudget(
        fakeredis.FakeRedis(), RATE, BURST, clock=clock.time, sleep=clock.sleep, monotonic=clock.time
    )
    before_request, _ = gateway_hooks(budget, timeout=0.5)
    budget.slow_down("acct_9", 5.0)
    with pytest.raises(RateBudgetTimeout):
        before_request("acct_9")


def test_a_budget_store_that_is_down_means_not_sent_not_a_crash() -> None:
    """Redis down while a charge asks for a token: the charge is requeued, never counted as sent."""
    import redis as redis_lib

    from shared.adapters.rate_budget import gateway_hooks
    from shared.services.ports import RateBudgetUnavailable

    class DownBudget:
        def acquire(self, account: str | None, timeout: float | None = None) -> float:
            raise redis_lib.ConnectionError("Connection refused")

        def slow_down(self, account: str | None, seconds: float = 1.0) -> None:
            raise redis_lib.ConnectionError("Connection refused")

    before_request, on_rate_limited = gateway_hooks(DownBudget())  # type: ignore[arg-type]
    with pytest.raises(RateBudgetUnavailable, match="unavailable"):
        before_request("acct_1")
    on_rate_limited("acct_1")  # advice only: it must not raise

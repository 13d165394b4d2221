"""Fixtures of the use-case tests: FakeStripe on a clock the product reads too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.charge_model import START, product_time_and_holders
from tests.support.fake_stripe import FakeClock, FakeStripe


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    clock = FakeClock(START, frozen=True)
    with product_time_and_holders(clock):
        yield clock


@pytest.fixture
def stripe(clock: FakeClock) -> FakeStripe:
    return FakeStripe(clock=clock)

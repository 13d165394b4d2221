"""The emulator's tests: one in-process emulator per test, reached over HTTP through the stripe SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from tests.support.emulator import Receiver, running_emulator, sdk_client


@pytest.fixture
def base() -> Iterator[str]:
    with running_emulator() as url:
        yield url


@pytest.fixture
def client(base: str) -> stripe.StripeClient:
    return sdk_client(base)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()

"""The state file (stripe_emulator/store.py): objects, events and idempotency keys survive a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.emulator import charge, create_account, customer_with, running_emulator, sdk_client

pytestmark = pytest.mark.integration


def test_state_file_survives_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "emulator.json"
    with running_emulator(state_file=state_file) as url:
        create_account(url, id="acct_P")
        client = sdk_client(url)
        cus, pm = customer_with(client, "pm_card_visa", stripe_account="acct_P")
        pi = charge(client, cus, pm, key="k-persist", stripe_account="acct_P")
    assert state_file.exists()
    with running_emulator(state_file=state_file) as url:
        client = sdk_client(url)
        opts: Any = {"stripe_account": "acct_P"}
        restored = client.v1.customers.retrieve(cus.id, options=opts)
        assert restored.invoice_settings.default_payment_method == pm.id
        replay = charge(client, cus, pm, key="k-persist", stripe_account="acct_P")
        assert replay.id == pi.id and replay.last_response.headers["Idempotent-Replayed"] == "true"
        assert client.v1.payment_intents.list({"customer": cus.id}, options=opts).data[0].id == pi.id
        assert len(client.v1.events.list(options=opts).data) > 3

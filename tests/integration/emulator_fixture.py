"""Old path of tests/support/emulator.py, kept only for tests/integration/test_emulator*.py, which another
branch moves to tests/stripe_emulator/: delete this module once they import tests.support.emulator."""

from tests.support.emulator import (
    WEBHOOK_SECRET,
    admin,
    emulator_state,
    running_emulator,
    sdk_client,
    set_faults,
)

__all__ = ["WEBHOOK_SECRET", "admin", "emulator_state", "running_emulator", "sdk_client", "set_faults"]

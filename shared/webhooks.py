"""Old path of one name, kept only for tests/integration/test_emulator.py, which another branch moves to
tests/stripe_emulator/: delete this module once that test imports shared.services.webhooks."""

from shared.services.webhooks import EVENTS_WITH_WORK

__all__ = ["EVENTS_WITH_WORK"]

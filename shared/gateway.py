"""Old path of two names, kept only for tests/integration/test_emulator_contract.py, which another branch
moves to tests/stripe_emulator/: delete this module once that test imports shared.adapters.stripe_gateway."""

from shared.adapters.stripe_wire import STRIPE_API_VERSION
from shared.domain.payments import payment_intent_view

__all__ = ["STRIPE_API_VERSION", "payment_intent_view"]

#!/usr/bin/env bash
# `make test-stripe`: the gateway contract suite (tests/shared/adapters/test_stripe_gateway_contract.py) against
# Stripe's own test mode, every call the product makes to Stripe, at the API version shared/gateway.py
# pins. Needs STRIPE_API_KEY=sk_test_... in the environment and STRIPE_API_BASE unset; without a test
# key it says that it skipped, and it never runs with a live key (the suite creates charges).
set -euo pipefail
cd "$(dirname "$0")/.."

key="${STRIPE_API_KEY:-}"
case "$key" in
  sk_live_* | rk_live_*)
    echo "test-stripe: refused: STRIPE_API_KEY is a live key; the contract suite creates charges and refunds." >&2
    echo "test-stripe: give it a test-mode secret key (sk_test_...) instead." >&2
    exit 2 ;;
  "" | sk_test_emulator)
    echo "test-stripe: SKIPPED: nothing was run against Stripe, because STRIPE_API_KEY is not a Stripe test key."
    echo "test-stripe: run it as: STRIPE_API_KEY=sk_test_... make test-stripe"
    echo "test-stripe: (your test-mode secret key: Stripe Dashboard > Developers > API keys, test mode)"
    exit 0 ;;
  sk_test_*) ;;
  *)
    echo "test-stripe: refused: STRIPE_API_KEY does not look like a Stripe test-mode secret key (sk_test_...)." >&2
    exit 2 ;;
esac
if [ -n "${STRIPE_API_BASE:-}" ]; then
  echo "test-stripe: refused: STRIPE_API_BASE is set ($STRIPE_API_BASE); unset it so the suite reaches Stripe itself." >&2
  exit 2
fi

echo "test-stripe: running the gateway contract suite against Stripe test mode"
echo "test-stripe: (tests that need the emulator's fault injection are skipped; set STRIPE_TEST_CONNECTED_ACCOUNT=acct_... to include Connect)"
exec .venv/bin/python -m pytest tests/shared/adapters/test_stripe_gateway_contract.py -rs -o addopts="" "$@"

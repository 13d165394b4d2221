"""Offsession's domain: models, money, ledger, eligibility, the charge state machine, the Stripe gateway.

Nothing in this package imports Flask or Celery: web/ and worker/ are thin adapters over it.
"""

"""Offsession's domain: models, money, ledger, eligibility, the charge state machine, the Stripe gateway.

Nothing in this package imports Flask or Celery (but shared.adapters, which holds what the processes share
to reach Celery, kombu and Alembic): web/ and worker/ are thin adapters over it.
"""

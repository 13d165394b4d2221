"""The domain: the rules of charging an invoice, as pure functions and the records they read.
Imports nothing of shared.services or shared.adapters, no web/worker, no Flask, Celery, stripe or redis."""

"""Adapters to the outside world: Stripe, the database, Redis, mail, metrics, logs, Celery's settings.
They implement the ports of shared.services and may import it and shared.domain, never web/ or worker/."""

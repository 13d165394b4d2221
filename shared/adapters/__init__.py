"""Adapters to the outside world every process shares: migrations, Celery settings, broker transport.
They import the domain and the libraries they adapt, never web/ or worker/; the domain never imports them."""

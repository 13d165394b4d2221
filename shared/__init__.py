"""Offsession's core, in layers: domain (rules), services (use cases), adapters (the outside world).
config.py reads the environment; bootstrap.py builds every process's adapters once. No Flask or Celery
outside shared.adapters: web/, worker/ and cli/ are thin entry points over it."""

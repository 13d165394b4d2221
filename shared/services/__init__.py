"""Use cases, one function per thing a person or a schedule does, over the domain and the ports.
Imports shared.domain and shared.services.ports only, never shared.adapters, web/, worker/, Flask or
Celery."""

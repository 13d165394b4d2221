"""A stateful Stripe v1 emulator that the unmodified stripe SDK can talk to (README: The Stripe emulator).

Reached over HTTP only, like Stripe. Run it with ``python -m stripe_emulator`` or embed it:

    server = EmulatorServer(Config(webhook_url=...), "127.0.0.1", 0)
    server.start(); ...; server.close()
"""

from .api import Config, Emulator
from .events import sign
from .faults import Faults
from .schema import API_VERSION
from .server import EmulatorServer

__all__ = ["API_VERSION", "Config", "Emulator", "EmulatorServer", "Faults", "sign"]

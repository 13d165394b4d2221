"""Object ids shaped like Stripe's (a prefix, then random letters and digits)."""

from __future__ import annotations

import random
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
# Its own generator: a caller reseeding the global `random` (Hypothesis does) must not repeat ids.
_ID_RANDOM = random.Random(secrets.randbits(64))


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(_ID_RANDOM.choices(_ALPHABET, k=length))

"""Secrets kept in the database, encrypted: Fernet (AES-128-CBC + HMAC-SHA256, cryptography's recipe)
under a key derived from SECRET_KEY with HKDF-SHA256, so the database alone (a dump, a backup) does not
give away the webhook endpoint's signing secret. Changing SECRET_KEY makes the stored secrets
unreadable: connecting again stores a new one."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.services.ports import SecretUnreadable

__all__ = ["FernetSecretBox"]

# HKDF's `info`: a key derived for this use only (SECRET_KEY also signs the web sessions).
KEY_PURPOSE = b"offsession stored stripe secrets v1"


class FernetSecretBox:
    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("SECRET_KEY is empty: nothing to derive the storage key from")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_PURPOSE).derive(
            secret_key.encode("utf-8")
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError) as exc:
            raise SecretUnreadable(
                "a stored secret cannot be decrypted with this SECRET_KEY (changed since it was stored?): "
                "connect Stripe again in Settings"
            ) from exc

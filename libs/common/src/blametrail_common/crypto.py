"""Encryption of secrets at rest and in transit on Kafka (Fernet: AES-128-CBC + HMAC-SHA256).

A :class:`SecretBox` holds one or more keys; the first encrypts, any decrypts, so a key can be
rotated without downtime. Plaintext never leaves this module in a log or an error message.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = ["SecretBox", "SecretBoxError", "generate_key"]


class SecretBoxError(Exception):
    """A ciphertext could not be decrypted with any configured key, or no key is configured."""


def generate_key() -> str:
    """Return a new random key, suitable for ``BLAMETRAIL_SECRET_KEYS``."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts and decrypts short secrets (tokens, client secrets)."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise SecretBoxError("no encryption key configured (BLAMETRAIL_SECRET_KEYS is empty)")
        try:
            self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in parts])
        except ValueError as exc:
            raise SecretBoxError("BLAMETRAIL_SECRET_KEYS holds a malformed key") from exc
        self._keys = [k.encode("ascii") for k in parts]

    def mac_keys(self, purpose: str) -> list[bytes]:
        """HMAC keys for ``purpose``, one derived from each configured key (the first is the
        current one; the others verify what older keys signed). Never the keys themselves."""
        return [
            hmac.new(k, b"blametrail:" + purpose.encode(), hashlib.sha256).digest()
            for k in self._keys
        ]

    def encrypt(self, plaintext: str) -> str:
        """Return an ASCII token that only holders of a configured key can read."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """Return the plaintext; raises :class:`SecretBoxError` (never showing the token)."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError) as exc:
            raise SecretBoxError("secret could not be decrypted with any configured key") from exc

"""Passwords: argon2id (``argon2-cffi``'s :class:`~argon2.PasswordHasher`, its default
parameters, RFC 9106's low-memory profile). CPU-bound: the async callers run these in a thread."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["MIN_LENGTH", "Passwords"]

MIN_LENGTH = 12


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy = self.hasher.hash("an account that does not exist")

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; with ``stored`` ``None`` (no such account)
        a dummy hash is checked, so an unknown email costs what a wrong password costs."""
        try:
            return self.hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than today's (rehash on sign-in)."""
        return self.hasher.check_needs_rehash(stored)

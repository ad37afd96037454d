"""Domain errors the routes turn into HTTP answers."""

from __future__ import annotations

from typing import Any

__all__ = ["Conflict", "Invalid", "NotFound"]


class NotFound(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")


class Conflict(Exception):
    def __init__(self, message: str, existing: Any = None) -> None:
        super().__init__(message)
        self.existing = existing


class Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

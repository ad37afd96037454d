"""Reads several pages share."""

from __future__ import annotations

from typing import Any

from blametrail_web.web import Ctx

__all__ = ["all_items", "first", "text"]


async def all_items(c: Ctx, path: str, cap: int = 1000, **params: Any) -> list[dict[str, Any]]:
    """Every item of a (small) list, following cursors up to ``cap`` items."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        got = await c.api.get(path, limit=200, cursor=cursor, **params)
        items += got["items"]
        cursor = got.get("next_cursor")
        if not cursor or len(items) >= cap:
            return items


def first(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""

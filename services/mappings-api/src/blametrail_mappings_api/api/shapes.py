"""Rows to answers: ids as strings, one model per row, pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from blametrail_mappings_api.schemas import Page
from blametrail_mappings_api.store.db import Row

__all__ = ["ids", "out", "page_of", "plain"]

M = TypeVar("M", bound=BaseModel)


def ids(row: Row) -> dict[str, Any]:
    """``row`` with its ids (``id``, ``service_id``...) as strings."""
    return {
        k: str(v) if k.endswith("id") and v is not None and not isinstance(v, str) else v
        for k, v in row.items()
    }


def out(model: type[M], row: Row) -> M:
    return model.model_validate(ids(row))


def page_of(
    model: type[M], page: tuple[list[Row], str | None], shape: Callable[[Row], Row] = dict
) -> Page[M]:
    rows, cursor = page
    return Page(items=[out(model, shape(r)) for r in rows], next_cursor=cursor)


def plain(value: Any) -> Any:
    """JSON-ready: ids and times as strings (orjson does the rest)."""
    return orjson.loads(orjson.dumps(value, default=str))

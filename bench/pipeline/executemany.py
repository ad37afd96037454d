"""The projection's previous write path, kept for bench/pipeline's reference figure: one
``executemany`` of per-row upserts per table (psycopg pipelines them), no folding. The same
conflict rules as ``blametrail_projector.projection.MERGES``, row by row."""

from __future__ import annotations

from typing import Any

import psycopg
from blametrail_projector.projection import MERGES
from blametrail_projector.rows import EncodedJson, Rows
from psycopg.adapt import Dumper

__all__ = ["write_executemany"]


class _Jsonb(Dumper):
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: EncodedJson) -> bytes:
        return obj.encoded


def _upsert(
    columns: tuple[str, ...], derived: tuple[tuple[str, str], ...], table: str, conflict: str
) -> str:
    names = (*columns, *(c for c, _ in derived))
    values = (*(f"%({c})s" for c in columns), *(f"%({e})s" for _, e in derived))
    return (
        f"INSERT INTO {table} AS cur ({', '.join(names)}) VALUES ({', '.join(values)})"  # noqa: S608
        f" ON CONFLICT {conflict}"
    )


_SQL = [(m.rows, _upsert(m.columns, m.derived, m.target(""), m.conflict)) for m in MERGES]


async def write_executemany(conn: psycopg.AsyncConnection[Any], rows: Rows) -> None:
    async with conn.cursor() as cur:
        cur.adapters.register_dumper(EncodedJson, _Jsonb)
        for name, sql in _SQL:
            batch = getattr(rows, name)
            if batch:
                await cur.executemany(sql, batch)

"""The pool, row types, keyset cursors and the SQL every aggregate store shares.

Table and column names passed to these helpers are ours (never a request's); values always go
as parameters. Errors come back as the domain's: :class:`NotFound` (404), :class:`Invalid` (422),
:class:`Conflict` (409 on a unique violation).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from blametrail_mappings_api.errors import Conflict, Invalid, NotFound

__all__ = [
    "Conn",
    "Page",
    "Pool",
    "Row",
    "create_pool",
    "decode_cursor",
    "encode_cursor",
    "get",
    "get_in",
    "insert_unique",
    "must_own",
    "page",
    "transaction",
    "update",
    "uuid_or_404",
]

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Conn]
Page = tuple[list[Row], str | None]


def create_pool(dsn: str, max_size: int = 10) -> Pool:
    """The control plane's pool (not opened): rows come back as dicts."""
    return AsyncConnectionPool(
        dsn,
        connection_class=psycopg.AsyncConnection[DictRow],
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row},
        # a connection broken by a Postgres restart is replaced before a request gets it
        check=AsyncConnectionPool.check_connection,
    )


def encode_cursor(ts: datetime, ident: Any) -> str:
    """An opaque cursor for keyset pagination on ``(ts, ident)``."""
    return base64.urlsafe_b64encode(orjson.dumps([ts.isoformat(), str(ident)])).decode()


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The ``(ts, ident)`` of a cursor; :class:`Invalid` (422) when it is not one of ours."""
    if not cursor:
        return None
    try:
        ts, ident = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(ts), str(ident)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise Invalid("cursor", "malformed cursor") from None


def uuid_or_404(value: str, what: str) -> str:
    """``value`` as a UUID string; :class:`NotFound` (``what``) when it is none: an id that cannot
    exist is answered like one that does not."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(what) from None


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Conn]:
    async with pool.connection() as conn, conn.transaction():
        yield conn


async def page(
    pool: Pool,
    table: str,
    org: str,
    cursor: str | None,
    limit: int,
    where: str,
    args: tuple[Any, ...],
) -> Page:
    """One page of ``table``'s rows of ``org``, oldest first, ``where`` (`` AND ...``) applied."""
    after = decode_cursor(cursor)
    sql = f"SELECT * FROM {table} WHERE org_id = %s{where}"  # noqa: S608 - table/columns are ours
    params: list[Any] = [org, *args]
    if after:
        sql += " AND (created_at, id) > (%s, %s)"
        params += [after[0], uuid_or_404(after[1], "cursor")]
    sql += " ORDER BY created_at, id LIMIT %s"
    params.append(limit + 1)
    async with pool.connection() as conn:
        rows: list[Row] = await (await conn.execute(sql.encode(), params)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None


async def get(pool: Pool, table: str, org: str, ident: str, what: str) -> Row:
    async with transaction(pool) as conn:
        return await get_in(conn, table, org, ident, what)


async def get_in(
    conn: Conn, table: str, org: str, ident: str, what: str, lock: bool = False
) -> Row:
    """The row of ``org`` with id ``ident``; :class:`NotFound` (``what``) otherwise."""
    sql = f"SELECT * FROM {table} WHERE org_id = %s AND id = %s{' FOR UPDATE' if lock else ''}"  # noqa: S608
    row: Row | None = await (
        await conn.execute(sql.encode(), (org, uuid_or_404(ident, what)))
    ).fetchone()
    if row is None:
        raise NotFound(what)
    return row


async def must_own(conn: Conn, table: str, org: str, ident: str, field: str) -> None:
    """:class:`Invalid` (``field``) unless ``org`` has a row ``ident`` in ``table``."""
    try:
        await get_in(conn, table, org, ident, field)
    except NotFound:
        raise Invalid(field, f"no such {field.removesuffix('_id')} in this organization") from None


async def insert_unique(conn: Conn, table: str, values: dict[str, Any], conflict: str) -> Row:
    """Insert ``values``; :class:`Conflict` (``conflict``) on a unique violation."""
    cols = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    try:
        async with conn.transaction():
            cur = await conn.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({marks}) RETURNING *".encode(),  # noqa: S608
                list(values.values()),
            )
    except psycopg.errors.UniqueViolation:
        raise Conflict(conflict) from None
    row: Row | None = await cur.fetchone()
    assert row is not None
    return row


async def update(
    conn: Conn,
    table: str,
    org: str,
    ident: str,
    changes: dict[str, Any],
    what: str,
    conflict: str,
) -> Row:
    """Apply ``changes`` (and ``updated_at``) to ``org``'s row ``ident``, locked first."""
    await get_in(conn, table, org, ident, what, lock=True)
    sets = ", ".join(f"{k} = %s" for k in changes)
    sql = f"UPDATE {table} SET {sets}{', ' if sets else ''}updated_at = %s WHERE org_id = %s AND id = %s RETURNING *"  # noqa: S608
    try:
        async with conn.transaction():
            cur = await conn.execute(
                sql.encode(), [*changes.values(), datetime.now(UTC), org, uuid_or_404(ident, what)]
            )
    except psycopg.errors.UniqueViolation:
        raise Conflict(conflict or f"{what} conflicts with an existing one") from None
    row: Row | None = await cur.fetchone()
    assert row is not None
    return row

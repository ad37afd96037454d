"""Postgres access for the control plane (psycopg 3). SQL lives here, and every write puts its
state event in the outbox within the same transaction. Every query is scoped to one organization.
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
from blametrail_common.crypto import SecretBox
from blametrail_common.events import (
    ConnectionStateV1,
    MappingStateV1,
    ServiceStateV1,
    mapping_key,
    new_event,
)
from blametrail_common.events.deploys import DeployRecordedV1, deploy_id_for
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from blametrail_mappings_api import auth
from blametrail_mappings_api.errors import Conflict, Invalid, NotFound
from blametrail_mappings_api.outbox import enqueue, enqueue_tombstone

__all__ = [
    "Conn",
    "Page",
    "Pool",
    "Repository",
    "create_pool",
    "decode_cursor",
    "publish_connection",
]

Row = dict[str, Any]
Conn = psycopg.AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Conn]
Page = tuple[list[Row], str | None]


async def publish_connection(conn: Conn, row: Row) -> None:
    """Put a ``sentry_connections`` row's state on ``cp-connections`` (outbox, same transaction)."""
    state = ConnectionStateV1(
        connection_id=str(row["id"]),
        tenant_id=str(row["org_id"]),
        mode=row["mode"],
        enabled=row["enabled"],
        sentry_org_slug=row["sentry_org_slug"],
        api_base_url=row["api_base_url"],
        installation_uuid=row["installation_uuid"],
        client_secrets_enc=list(row["client_secrets_enc"]),
        auth_token_enc=row["auth_token_enc"],
        token_expires_at=row["token_expires_at"],
        updated_at=row["updated_at"],
    )
    await enqueue(
        conn, "cp-connections", new_event(state, key=state.connection_id, tenant=state.tenant_id)
    )


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


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(what) from None


class Repository:
    def __init__(self, pool: Pool, box: SecretBox) -> None:
        self.pool, self.box = pool, box

    # -- organizations and keys ----------------------------------------------------------------
    async def create_api_key(self, org_slug: str) -> str:
        key, prefix = auth.new_key()
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO organizations (id, slug, name) VALUES (%s, %s, %s)"
                " ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug RETURNING id",
                (uuid.uuid4(), org_slug, org_slug),
            )
            org_id = ((await cur.fetchone()) or {})["id"]
            await conn.execute(
                "INSERT INTO api_keys (id, org_id, prefix, key_sha256) VALUES (%s, %s, %s, %s)",
                (uuid.uuid4(), org_id, prefix, auth.key_hash(key)),
            )
        return key

    async def org_for_key(self, authorization: str | None) -> str | None:
        parsed = auth.parse_key(authorization)
        if parsed is None:
            return None
        key, prefix = parsed
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT org_id, key_sha256 FROM api_keys WHERE prefix = %s AND revoked_at IS NULL",
                (prefix,),
            )
            row = await cur.fetchone()
        return str(row["org_id"]) if row and auth.key_matches(key, row["key_sha256"]) else None

    # -- services ------------------------------------------------------------------------------
    async def list_services(self, org: str, cursor: str | None, limit: int) -> Page:
        return await self._page("services", org, cursor, limit, "", ())

    async def get_service(self, org: str, service_id: str) -> Row:
        return await self._get("services", org, service_id, "service")

    async def create_service(self, org: str, body: dict[str, Any]) -> Row:
        async with self._tx() as conn:
            row = await self._insert_unique(
                conn,
                "services",
                {"id": uuid.uuid4(), "org_id": org, **body},
                f"a service with slug {body['slug']!r} already exists",
            )
            await self._publish_service(conn, row)
            return row

    async def update_service(self, org: str, service_id: str, changes: dict[str, Any]) -> Row:
        async with self._tx() as conn:
            row = await self._update(
                conn,
                "services",
                org,
                service_id,
                changes,
                "service",
                "a service with that slug already exists",
            )
            await self._publish_service(conn, row)
            return row

    async def delete_service(self, org: str, service_id: str) -> None:
        async with self._tx() as conn:
            row = await self._get_in(conn, "services", org, service_id, "service", lock=True)
            cur = await conn.execute(
                "SELECT id, sentry_project_slug FROM project_mappings WHERE service_id = %s ORDER BY sentry_project_slug",
                (row["id"],),
            )
            mappings = await cur.fetchall()
            if mappings:
                names = ", ".join(m["sentry_project_slug"] for m in mappings)
                raise Conflict(
                    f"service is the target of mappings: {names}; delete or move them first",
                    [
                        {"id": str(m["id"]), "sentry_project_slug": m["sentry_project_slug"]}
                        for m in mappings
                    ],
                )
            await conn.execute("DELETE FROM services WHERE id = %s", (row["id"],))
            await enqueue_tombstone(conn, "cp-services", str(row["id"]))

    async def _publish_service(self, conn: Conn, row: Row) -> None:
        state = ServiceStateV1(
            service_id=str(row["id"]),
            tenant_id=str(row["org_id"]),
            slug=row["slug"],
            name=row["name"],
            description=row["description"],
            updated_at=row["updated_at"],
        )
        await enqueue(
            conn, "cp-services", new_event(state, key=state.service_id, tenant=state.tenant_id)
        )

    # -- deploys -------------------------------------------------------------------------------
    async def create_deploy(self, org: str, body: dict[str, Any]) -> tuple[Row, bool]:
        """Record a deploy; the same deploy posted again updates it. Returns (row, created)."""
        start = body["started_at"] or body["finished_at"]
        ident = deploy_id_for(org, body["service_id"], body["environment"], body["version"], start)
        values = {"id": ident, "org_id": org, **body}
        cols = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        updates = ", ".join(f"{k} = EXCLUDED.{k}" for k in body if k != "service_id")
        async with self._tx() as conn:
            await self._must_own(conn, "services", org, body["service_id"], "service_id")
            cur = await conn.execute(
                f"INSERT INTO deploys ({cols}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE"  # noqa: S608
                f" SET {updates}, updated_at = now() RETURNING *, (xmax = 0) AS created".encode(),
                list(values.values()),
            )
            row: Row | None = await cur.fetchone()
            assert row is not None
            created = bool(row.pop("created"))
            state = DeployRecordedV1(
                deploy_id=str(row["id"]),
                tenant_id=str(row["org_id"]),
                service_id=str(row["service_id"]),
                version=row["version"],
                environment=row["environment"],
                commit_sha=row["commit_sha"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                author=row["author"],
                url=row["url"],
                changed_paths=row["changed_paths"],
                source=row["source"],
                recorded_at=row["updated_at"],
            )
            await enqueue(
                conn, "deploys", new_event(state, key=state.deploy_id, tenant=state.tenant_id)
            )
            return row, created

    async def list_deploys(
        self,
        org: str,
        cursor: str | None,
        limit: int,
        service_id: str | None,
        since: datetime | None,
    ) -> Page:
        where, args = "", list[Any]()
        if service_id is not None:
            where += " AND service_id = %s"
            args.append(_uuid(service_id, "service_id"))
        if since is not None:
            where += " AND coalesce(finished_at, started_at) >= %s"
            args.append(since)
        return await self._page("deploys", org, cursor, limit, where, tuple(args))

    # -- connections ---------------------------------------------------------------------------
    async def list_connections(self, org: str, cursor: str | None, limit: int) -> Page:
        return await self._page("sentry_connections", org, cursor, limit, "", ())

    async def get_connection(self, org: str, connection_id: str) -> Row:
        return await self._get("sentry_connections", org, connection_id, "connection")

    async def create_connection(self, org: str, body: dict[str, Any]) -> Row:
        values = {
            "id": uuid.uuid4(),
            "org_id": org,
            "mode": body["mode"],
            "sentry_org_slug": body["sentry_org_slug"],
            "api_base_url": body["api_base_url"],
            "client_secrets_enc": [self.box.encrypt(body["client_secret"])],
            "auth_token_enc": self.box.encrypt(body["auth_token"]),
        }
        async with self._tx() as conn:
            row = await self._insert_unique(
                conn,
                "sentry_connections",
                values,
                f"Sentry organization {body['sentry_org_slug']!r} is already connected",
            )
            await self._publish_connection(conn, row)
            return row

    async def update_connection(self, org: str, connection_id: str, patch: dict[str, Any]) -> Row:
        async with self._tx() as conn:
            current = await self._get_in(
                conn, "sentry_connections", org, connection_id, "connection", lock=True
            )
            changes: dict[str, Any] = {
                k: patch[k] for k in ("api_base_url", "enabled") if patch.get(k) is not None
            }
            secrets = list(current["client_secrets_enc"])
            if patch.get("client_secret"):
                secrets = [
                    self.box.encrypt(patch["client_secret"]),
                    *secrets[:1],
                ]  # new + previous, for rotation
            if patch.get("retire_old_secrets"):
                secrets = secrets[:1]
            changes["client_secrets_enc"] = secrets
            if patch.get("auth_token"):
                changes["auth_token_enc"] = self.box.encrypt(patch["auth_token"])
            row = await self._update(
                conn, "sentry_connections", org, connection_id, changes, "connection", ""
            )
            await self._publish_connection(conn, row)
            return row

    async def delete_connection(self, org: str, connection_id: str) -> None:
        async with self._tx() as conn:
            row = await self._get_in(
                conn, "sentry_connections", org, connection_id, "connection", lock=True
            )
            cur = await conn.execute(
                "SELECT sentry_project_slug FROM project_mappings WHERE connection_id = %s "
                "ORDER BY sentry_project_slug",
                (row["id"],),
            )
            slugs = [r["sentry_project_slug"] for r in await cur.fetchall()]
            if slugs:
                raise Conflict(
                    f"connection has mappings: {', '.join(slugs)}; delete them first", slugs
                )
            await conn.execute("DELETE FROM sentry_connections WHERE id = %s", (row["id"],))
            await enqueue_tombstone(conn, "cp-connections", str(row["id"]))

    async def _publish_connection(self, conn: Conn, row: Row) -> None:
        await publish_connection(conn, row)

    # -- mappings ------------------------------------------------------------------------------
    async def list_mappings(
        self,
        org: str,
        cursor: str | None,
        limit: int,
        service_id: str | None,
        active: bool | None,
        connection_id: str | None,
    ) -> Page:
        where, args = [], []
        for column, value in (
            ("service_id", service_id),
            ("active", active),
            ("connection_id", connection_id),
        ):
            if value is not None:
                where.append(f" AND {column} = %s")
                args.append(value if isinstance(value, bool) else _uuid(value, column))
        return await self._page("project_mappings", org, cursor, limit, "".join(where), tuple(args))

    async def get_mapping(self, org: str, mapping_id: str) -> Row:
        return await self._get("project_mappings", org, mapping_id, "mapping")

    async def create_mapping(self, org: str, body: dict[str, Any]) -> Row:
        async with self._tx() as conn:
            await self._must_own(
                conn, "sentry_connections", org, body["connection_id"], "connection_id"
            )
            await self._must_own(conn, "services", org, body["service_id"], "service_id")
            cur = await conn.execute(
                "SELECT * FROM project_mappings WHERE connection_id = %s AND sentry_project_slug = %s",
                (body["connection_id"], body["sentry_project_slug"]),
            )
            existing = await cur.fetchone()
            if existing:
                raise Conflict(
                    f"Sentry project {body['sentry_project_slug']!r} is already mapped to a service",
                    existing,
                )
            row = await self._insert_unique(
                conn,
                "project_mappings",
                {"id": uuid.uuid4(), "org_id": org, **body},
                "Sentry project is already mapped",
            )
            await self._publish_mapping(conn, row)
            return row

    async def update_mapping(self, org: str, mapping_id: str, changes: dict[str, Any]) -> Row:
        async with self._tx() as conn:
            if changes.get("service_id") is not None:
                await self._must_own(conn, "services", org, changes["service_id"], "service_id")
            row = await self._update(
                conn,
                "project_mappings",
                org,
                mapping_id,
                {k: v for k, v in changes.items() if v is not None},
                "mapping",
                "",
            )
            await self._publish_mapping(conn, row)
            return row

    async def delete_mapping(self, org: str, mapping_id: str) -> None:
        async with self._tx() as conn:
            row = await self._get_in(
                conn, "project_mappings", org, mapping_id, "mapping", lock=True
            )
            await conn.execute("DELETE FROM project_mappings WHERE id = %s", (row["id"],))
            await enqueue_tombstone(
                conn,
                "cp-mappings",
                mapping_key(str(row["connection_id"]), row["sentry_project_slug"]),
            )

    async def _publish_mapping(self, conn: Conn, row: Row) -> None:
        state = MappingStateV1(
            mapping_id=str(row["id"]),
            tenant_id=str(row["org_id"]),
            connection_id=str(row["connection_id"]),
            sentry_project_slug=row["sentry_project_slug"],
            sentry_project_id=row["sentry_project_id"],
            service_id=str(row["service_id"]),
            active=row["active"],
            updated_at=row["updated_at"],
        )
        key = mapping_key(state.connection_id, state.sentry_project_slug)
        await enqueue(conn, "cp-mappings", new_event(state, key=key, tenant=state.tenant_id))

    # -- shared SQL ------------------------------------------------------------------------------
    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Conn]:
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def _page(
        self,
        table: str,
        org: str,
        cursor: str | None,
        limit: int,
        where: str,
        args: tuple[Any, ...],
    ) -> Page:
        after = decode_cursor(cursor)
        sql = f"SELECT * FROM {table} WHERE org_id = %s{where}"  # noqa: S608 - table/columns are ours
        params: list[Any] = [org, *args]
        if after:
            sql += " AND (created_at, id) > (%s, %s)"
            params += [after[0], _uuid(after[1], "cursor")]
        sql += " ORDER BY created_at, id LIMIT %s"
        params.append(limit + 1)
        async with self.pool.connection() as conn:
            rows: list[Row] = await (await conn.execute(sql.encode(), params)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(
            rows[-1]["created_at"], rows[-1]["id"]
        ) if more and rows else None

    async def _get(self, table: str, org: str, ident: str, what: str) -> Row:
        async with self._tx() as conn:
            return await self._get_in(conn, table, org, ident, what)

    async def _get_in(
        self,
        conn: Conn,
        table: str,
        org: str,
        ident: str,
        what: str,
        lock: bool = False,
    ) -> Row:
        sql = f"SELECT * FROM {table} WHERE org_id = %s AND id = %s{' FOR UPDATE' if lock else ''}"  # noqa: S608
        row: Row | None = await (
            await conn.execute(sql.encode(), (org, _uuid(ident, what)))
        ).fetchone()
        if row is None:
            raise NotFound(what)
        return row

    async def _must_own(self, conn: Conn, table: str, org: str, ident: str, field: str) -> None:
        try:
            await self._get_in(conn, table, org, ident, field)
        except NotFound:
            raise Invalid(
                field, f"no such {field.removesuffix('_id')} in this organization"
            ) from None

    async def _insert_unique(
        self, conn: Conn, table: str, values: dict[str, Any], conflict: str
    ) -> Row:
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

    async def _update(
        self,
        conn: Conn,
        table: str,
        org: str,
        ident: str,
        changes: dict[str, Any],
        what: str,
        conflict: str,
    ) -> Row:
        await self._get_in(conn, table, org, ident, what, lock=True)
        sets = ", ".join(f"{k} = %s" for k in changes)
        sql = f"UPDATE {table} SET {sets}{', ' if sets else ''}updated_at = %s WHERE org_id = %s AND id = %s RETURNING *"  # noqa: S608
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    sql.encode(), [*changes.values(), datetime.now(UTC), org, _uuid(ident, what)]
                )
        except psycopg.errors.UniqueViolation:
            raise Conflict(conflict or f"{what} conflicts with an existing one") from None
        row: Row | None = await cur.fetchone()
        assert row is not None
        return row

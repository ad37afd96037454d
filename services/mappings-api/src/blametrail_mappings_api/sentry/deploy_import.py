"""Deploys from Sentry: an on-demand import, and the store of those the suspects worker found.

- ``blametrail deploys import-sentry --org SLUG --connection ID [--release V]…``: for each
  release (the newest ``--limit`` when none is named), Sentry's deploys of it
  (``GET /api/0/organizations/{org}/releases/{version}/deploys/``, PROTOCOL §6) become deploys of
  the services its projects are mapped to, recorded like API deploys (``source = 'sentry'``,
  same ids, so importing twice changes nothing) and published through the outbox.
- :class:`SentryDeployStore`: when an enrichment names a release the deploy history does not
  know, the suspects worker publishes the release's last deploy (as Sentry reported it in the
  event) on ``deploys``; this consumer, run by the API process, stores those rows so
  ``GET /api/v1/deploys`` lists them. The topic already holds them, so there is no outbox here.

Mapping Sentry's JSON to deploy rows is pure (:func:`deploys_from_release`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from aiokafka import ConsumerRecord
from blametrail_common.crypto import SecretBox, generate_key
from blametrail_common.events import DecodeError, decode
from blametrail_common.events.deploys import DeployRecordedV1
from blametrail_common.settings import PostgresSettings, SecretsSettings
from rich.console import Console

from blametrail_mappings_api.repository import Repository
from blametrail_mappings_api.store.db import Pool, create_pool

__all__ = [
    "ImportSummary",
    "SentryDeployStore",
    "deploys_command",
    "deploys_from_release",
    "import_from_sentry",
]


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def deploys_from_release(
    release: Mapping[str, Any], deploys: Sequence[Mapping[str, Any]], services: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Deploy bodies (as ``POST /api/v1/deploys`` takes them, plus ``source``) for every deploy of
    ``release`` and every project of it mapped to a service (``services``: project slug -> id).
    Deploys without a time are skipped: a deploy is placed in time or not at all."""
    version = release.get("version")
    slugs = [p.get("slug") for p in release.get("projects") or () if isinstance(p, Mapping)]
    targets = sorted({services[s] for s in slugs if isinstance(s, str) and s in services})
    out = []
    for d in deploys:
        started, finished = _when(d.get("dateStarted")), _when(d.get("dateFinished"))
        if started is None and finished is None:
            continue
        for service_id in targets:
            out.append(
                {
                    "service_id": service_id,
                    "version": version if isinstance(version, str) else None,
                    "environment": d.get("environment")
                    if isinstance(d.get("environment"), str)
                    else None,
                    "commit_sha": release.get("ref")
                    if isinstance(release.get("ref"), str)
                    else None,
                    "started_at": started,
                    "finished_at": finished,
                    "author": None,
                    "url": d.get("url") if isinstance(d.get("url"), str) else None,
                    "changed_paths": None,
                    "source": "sentry",
                }
            )
    return out


@dataclass
class ImportSummary:
    releases: int = 0
    deploys_seen: int = 0
    recorded: int = 0
    unmapped_releases: int = 0


async def import_from_sentry(
    repo: Repository,
    http: httpx.AsyncClient,
    org: str,
    connection_id: str,
    releases: Sequence[str] = (),
    limit: int = 20,
) -> ImportSummary:
    """Import the deploys of ``releases`` (the newest ``limit`` when empty) of a connection."""
    async with repo.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT sentry_org_slug, api_base_url, auth_token_enc FROM sentry_connections"
                " WHERE org_id = %s AND id = %s",
                (org, connection_id),
            )
        ).fetchone()
        if row is None or row["auth_token_enc"] is None:
            raise LookupError("no such connection with a token in this organization")
        mapped = await (
            await conn.execute(
                "SELECT sentry_project_slug, service_id FROM project_mappings"
                " WHERE org_id = %s AND connection_id = %s",
                (org, connection_id),
            )
        ).fetchall()
    services = {m["sentry_project_slug"]: str(m["service_id"]) for m in mapped}
    base = f"{row['api_base_url']}/api/0/organizations/{quote(row['sentry_org_slug'])}/releases"
    headers = {"Authorization": f"Bearer {repo.box.decrypt(row['auth_token_enc'])}"}
    if releases:
        found = [await _get(http, f"{base}/{quote(v, safe='')}/", headers) for v in releases]
    else:
        found = list(await _get(http, f"{base}/", headers, {"per_page": str(limit)}))[:limit]
    summary = ImportSummary()
    for release in found:
        summary.releases += 1
        version = str(release.get("version", ""))
        deploys = await _get(http, f"{base}/{quote(version, safe='')}/deploys/", headers)
        summary.deploys_seen += len(deploys)
        bodies = deploys_from_release(release, deploys, services)
        if deploys and not bodies:
            summary.unmapped_releases += 1
        for body in bodies:
            await repo.deploys.create(org, body)
            summary.recorded += 1
    return summary


async def _get(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], params: dict[str, str] | None = None
) -> Any:
    resp = await http.get(url, headers=headers, params=params, timeout=10)
    resp.raise_for_status()
    return resp.json()


class SentryDeployStore:
    """Stores ``deploys`` records of source ``sentry`` (see the module docstring)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        rows = []
        for record in records:
            try:
                p = decode(record.value or b"").payload
            except DecodeError:
                continue  # not ours to dead-letter: the suspects worker reads this topic too
            if isinstance(p, DeployRecordedV1) and p.source == "sentry":
                rows.append(p)
        if not rows:
            return
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO deploys (id, org_id, service_id, version, environment, commit_sha,"
                " started_at, finished_at, author, url, changed_paths, source)"
                " SELECT %s, %s, s.id, %s, %s, %s, %s, %s, %s, %s, %s, 'sentry'"
                " FROM services s WHERE s.id = %s AND s.org_id = %s"
                " ON CONFLICT (id) DO NOTHING",
                [
                    (
                        p.deploy_id,
                        p.tenant_id,
                        p.version,
                        p.environment,
                        p.commit_sha,
                        p.started_at,
                        p.finished_at,
                        p.author,
                        p.url,
                        p.changed_paths,
                        p.service_id,
                        p.tenant_id,
                    )
                    for p in rows
                ],
            )


def deploys_command(sub: Any) -> None:
    p = sub.add_parser("deploys", help="Deploy history.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import-sentry", help="Import a Sentry connection's release deploys (idempotent)."
    )
    imp.add_argument("--org", required=True, help="organization slug")
    imp.add_argument("--connection", required=True, help="connection id")
    imp.add_argument("--release", action="append", default=[], help="repeatable; default: newest")
    imp.add_argument("--limit", type=int, default=20, help="newest releases to import")
    imp.set_defaults(handler=_import)


async def _import(args: argparse.Namespace) -> int:
    console = Console()
    pool = create_pool(PostgresSettings().database_url, max_size=2)
    await pool.open()
    try:
        keys = SecretsSettings().secret_keys.get_secret_value() or generate_key()
        repo = Repository(pool, SecretBox(keys))
        async with pool.connection() as conn:
            org = await (
                await conn.execute("SELECT id FROM organizations WHERE slug = %s", (args.org,))
            ).fetchone()
        if org is None:
            console.print(f"[red]no organization {args.org!r}[/]")
            return 1
        async with httpx.AsyncClient() as http:
            with console.status("importing deploys from Sentry"):
                s = await import_from_sentry(
                    repo, http, str(org["id"]), args.connection, args.release, args.limit
                )
    finally:
        await pool.close()
    console.print(
        f"releases {s.releases}, Sentry deploys {s.deploys_seen}, recorded {s.recorded}, "
        f"releases of unmapped projects {s.unmapped_releases}"
    )
    return 0

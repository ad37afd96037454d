"""Schema migrations: plain versioned SQL files, applied in order, recorded in a table.

Files live in ``blametrail_common/migrations`` as ``NNNN_name.sql``. Each runs in its own
transaction under an advisory lock, so concurrent runners are safe and a re-run is a no-op. A
file whose content changed after it was applied is an error, never silently re-applied. What a
migration tells with ``RAISE NOTICE`` (a fallback it took: 0037, 0038) is logged as a warning.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

__all__ = ["Migration", "MigrationError", "load_migrations", "migrate"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x6274_6D69  # "btmi": any constant shared by all runners
log = logging.getLogger(__name__)


class MigrationError(Exception):
    """A migration file is malformed, or one already applied has since changed."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """Every migration shipped with this package, ordered by version."""
    found = []
    for entry in resources.files("blametrail_common.migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _NAME.match(entry.name)
        if not m:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(m[1]), m[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return found


def migrate(dsn: str, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply the migrations not yet applied; return those applied now (empty on a re-run)."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                v: c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            for m in migrations:
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"migration {m.version:04d}_{m.name} changed after it was applied"
                        )
                    continue
                with conn.transaction():
                    told = functools.partial(_notice, m)
                    conn.add_notice_handler(told)
                    try:
                        conn.execute(m.sql.encode())
                    finally:
                        conn.remove_notice_handler(told)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                applied_now.append(m)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now


def _notice(m: Migration, diagnostic: psycopg.errors.Diagnostic) -> None:
    log.warning(
        "migration notice",
        extra={"migration": f"{m.version:04d}_{m.name}", "notice": diagnostic.message_primary},
    )

"""Built-in commands: ``blametrail topics ensure|list`` and ``blametrail db migrate``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from blametrail_common.db import migrate
from blametrail_common.kafka.admin import ensure_topics
from blametrail_common.settings import KafkaSettings, PostgresSettings
from blametrail_common.topics import TOPICS

__all__ = ["db_command", "topics_command"]


def topics_command(sub: Any) -> None:
    p = sub.add_parser("topics", help="Kafka topics from the registry.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ensure = actions.add_parser(
        "ensure", help="Create or update every registered topic (idempotent)."
    )
    ensure.set_defaults(handler=_topics_ensure)
    show = actions.add_parser("list", help="Print the registry.")
    show.set_defaults(handler=_topics_list)


def db_command(sub: Any) -> None:
    p = sub.add_parser("db", help="Postgres schema.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = actions.add_parser("migrate", help="Apply pending SQL migrations (idempotent).")
    m.set_defaults(handler=_db_migrate)


async def _topics_ensure(_: argparse.Namespace) -> int:
    changes = await ensure_topics(KafkaSettings())
    table = Table("topic", "action", "detail", title="topics ensure")
    for c in changes:
        table.add_row(c.topic, c.action, c.detail)
    Console().print(table)
    return 0


def _topics_list(_: argparse.Namespace) -> int:
    table = Table("topic", "key", "partitions", "cleanup", "retention.ms", title="topic registry")
    for t in TOPICS:
        table.add_row(t.name, t.key, str(t.partitions), t.cleanup_policy, str(t.retention_ms))
    Console().print(table)
    return 0


def _db_migrate(_: argparse.Namespace) -> int:
    applied = migrate(PostgresSettings().database_url)
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing (up to date)"
    Console().print(f"db migrate: applied {names}")
    return 0

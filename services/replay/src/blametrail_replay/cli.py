"""``blametrail replay …``: operator commands over the log (see each module for how they work)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from blametrail_common.kafka.admin import admin_client, committed_offsets
from blametrail_common.settings import KafkaSettings, PostgresSettings
from blametrail_common.topics import TOPICS
from blametrail_projector.settings import ProjectorSettings
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.prompt import Confirm
from rich.table import Table
from rich.text import Text

from blametrail_replay import offsets as off
from blametrail_replay.rebuild import rebuild_projection
from blametrail_replay.reprocess import ignored_raw_ids, reprocess

__all__ = ["replay_command"]

console = Console()


def replay_command(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="Consumer-group offsets, projection rebuilds and re-normalization from the log.",
        description="Operator commands over the Kafka log. Every command prints a summary; "
        "commands that change something ask first unless --yes.",
    )
    cmds = p.add_subparsers(dest="replay", required=True, metavar="COMMAND")

    s = cmds.add_parser(
        "status", help="Committed offsets, end offsets and lag per group and topic."
    )
    s.add_argument("--group", action="append", help="only this group (repeatable); default: all")
    s.set_defaults(handler=_status)

    r = cmds.add_parser(
        "reset",
        help="Move a consumer group's offsets on one topic (the group must have no live members).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Move GROUP's committed offsets on TOPIC. The broker refuses offset commits from "
        "outside a group with live members, and a live member would overwrite a reset at its next "
        "commit anyway, so the reset refuses while members are live. --force does not override "
        "that: it waits up to --force-wait seconds for the members to leave (a consumer just "
        "stopped stays a member until its session times out) and then resets. Groups that keep "
        "their offsets in Postgres (the projection) have those rows written too.",
    )
    r.add_argument("--group", required=True)
    r.add_argument("--topic", required=True, help="registry name or alias (raw, incidents, ...)")
    to = r.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-datetime", type=_when, metavar="ISO", help="UTC when no offset is given")
    to.add_argument(
        "--to-offset", action="append", type=_partition_offset, metavar="P:N", help="repeatable"
    )
    r.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    r.add_argument(
        "--force", action="store_true", help="wait for live members to leave (see above)"
    )
    r.add_argument("--force-wait", type=float, default=60.0, metavar="SECONDS")
    r.add_argument("--yes", action="store_true", help="do not ask")
    r.set_defaults(handler=_reset)

    proj = cmds.add_parser("projection", help="The Postgres read model.")
    pcmds = proj.add_subparsers(dest="projection", required=True, metavar="ACTION")
    rb = pcmds.add_parser(
        "rebuild",
        help="Rebuild the read model from offset zero into shadow tables, then swap atomically.",
    )
    rb.add_argument(
        "--group", default=None, help="the live projection's group (default: its settings)"
    )
    rb.add_argument("--keep-previous", action="store_true", help="keep previous_* tables")
    rb.add_argument("--yes", action="store_true", help="do not ask")
    rb.set_defaults(handler=_rebuild)

    ri = cmds.add_parser(
        "reprocess-ignored",
        help="Normalize again the webhooks of a project ignored as unmapped or inactive.",
    )
    ri.add_argument("--project", required=True, metavar="SLUG", help="Sentry project slug")
    ri.add_argument("--connection", default=None, help="only this connection's webhooks")
    ri.add_argument("--since", type=_when, default=None, metavar="ISO", help="default: the start")
    ri.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    ri.add_argument("--yes", action="store_true", help="do not ask")
    ri.set_defaults(handler=_reprocess_ignored)

    rp = cmds.add_parser("reprocess", help="Normalize again every raw webhook of a time window.")
    rp.add_argument("--topic", required=True, choices=["raw", "sentry-webhooks-raw"])
    rp.add_argument("--since", type=_when, required=True, metavar="ISO")
    rp.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    rp.add_argument("--yes", action="store_true", help="do not ask")
    rp.set_defaults(handler=_reprocess)


# -- status ------------------------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> int:
    kafka, dsn = KafkaSettings(), await _dsn_if_reachable()
    groups = list(args.group or await off.list_groups(kafka))
    if dsn is not None and not args.group:
        groups = sorted(set(groups) | set(await _pg_groups(dsn)))
    registry = {t.name for t in TOPICS}
    table = Table("group", "state", "topic", "committed", "end", "lag", "offsets in")
    for group in groups:
        info = await off.describe_group(kafka, group)
        stored = {} if dsn is None else await off.pg_offsets(dsn, group)
        committed = await _kafka_committed_topics(kafka, group)
        topics = sorted(
            t
            for t in {tp.topic for tp in stored} | committed
            if t.startswith(kafka.topic_prefix) and t.removeprefix(kafka.topic_prefix) in registry
        )
        for topic in topics:
            logical = topic.removeprefix(kafka.topic_prefix)
            parts = await off.read_offsets(kafka, group, [logical], dsn if stored else None)
            table.add_row(
                group,
                f"{info.state} ({len(info.members)})",
                logical,
                f"{sum(p.committed or 0 for p in parts):,}",
                f"{sum(p.end for p in parts):,}",
                f"{sum(p.lag for p in parts):,}",
                "postgres" if stored else "kafka",
            )
    console.print(table)
    if dsn is None:
        console.print("[yellow]Postgres unreachable: offsets kept there are not shown[/]")
    console.print(f"{len(groups)} groups")
    return 0


async def _kafka_committed_topics(kafka: KafkaSettings, group: str) -> set[str]:
    admin = admin_client(kafka)
    await admin.start()
    try:
        return {tp.topic for tp in await committed_offsets(admin, group)}
    finally:
        await admin.close()


async def _pg_groups(dsn: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn:
        cur = await conn.execute("SELECT DISTINCT group_id FROM consumer_offsets")
        return [str(r[0]) for r in await cur.fetchall()]


async def _dsn_if_reachable() -> str | None:
    dsn = PostgresSettings().database_url
    try:
        async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=3):
            return dsn
    except psycopg.Error:
        return None


# -- reset -------------------------------------------------------------------------------------


async def _reset(args: argparse.Namespace) -> int:
    kafka, dsn = KafkaSettings(), await _dsn_if_reachable()
    topic = off.logical_topic(args.topic)
    info = await off.describe_group(kafka, args.group)
    if info.live and not args.dry_run:
        if not args.force:
            console.print(
                f"[red]refusing:[/] group {args.group} has {len(info.members)} live member(s): "
                f"{', '.join(info.members)}. Stop them first (or --force to wait for them to leave)."
            )
            return 1
        info = await _wait_until_empty(kafka, args.group, args.force_wait)
        if info.live:
            console.print(f"[red]refusing:[/] members still live after {args.force_wait:.0f} s")
            return 1
    parts = await off.read_offsets(kafka, args.group, [topic], dsn)
    target = _target(args)
    times = (
        await off.offsets_at(kafka, topic, target.at) if isinstance(target, off.ToTime) else None
    )
    moves = off.plan_reset(parts, target, times)
    table = Table("topic", "partition", "current", "new", "delta", title=f"reset {args.group}")
    for m in moves:
        delta = "" if m.current is None else f"{m.target - m.current:+,}"
        cur = "-" if m.current is None else f"{m.current:,}"
        table.add_row(m.topic, str(m.partition), cur, f"{m.target:,}", delta)
    console.print(table)
    if args.dry_run:
        console.print(f"dry run: {len(moves)} partitions would move; nothing changed")
        return 0
    if not _confirm(args, f"move {len(moves)} partitions of {args.group}?"):
        return 1
    started = time.monotonic()
    in_pg = await off.apply_reset(kafka, args.group, moves, dsn)
    console.print(
        f"reset {len(moves)} partitions of {args.group} on {topic}"
        f"{' (Kafka and Postgres)' if in_pg else ''} in {time.monotonic() - started:.2f} s"
    )
    return 0


def _target(args: argparse.Namespace) -> off.Target:
    if args.to_earliest:
        return off.Earliest()
    if args.to_latest:
        return off.Latest()
    if args.to_datetime is not None:
        return off.ToTime(args.to_datetime)
    return off.Explicit(dict(args.to_offset))


async def _wait_until_empty(kafka: KafkaSettings, group: str, seconds: float) -> off.GroupInfo:
    deadline = time.monotonic() + seconds
    info = await off.describe_group(kafka, group)
    with console.status(f"waiting for {len(info.members)} member(s) of {group} to leave"):
        while info.live and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            info = await off.describe_group(kafka, group)
    return info


# -- rebuild -----------------------------------------------------------------------------------


async def _rebuild(args: argparse.Namespace) -> int:
    kafka, dsn = KafkaSettings(), PostgresSettings().database_url
    group = args.group or ProjectorSettings().group_id
    if not _confirm(args, f"rebuild the read model from the log and swap it in (group {group})?"):
        return 1
    with _progress("rebuilding") as report:
        summary = await rebuild_projection(
            kafka, dsn, group, keep_previous=args.keep_previous, report=report
        )
    table = Table("table", "live before swap", "rebuilt", title="checksums (rows:md5)")
    for name, value in summary.live.items():
        table.add_row(name, value, summary.rebuilt.get(name, ""))
    console.print(table)
    console.print(
        f"read {summary.read:,}, applied {summary.applied:,}, refused {summary.refused:,} in "
        f"{summary.seconds:.1f} s ({summary.applied / max(summary.seconds, 1e-9):,.0f} events/s); "
        + (
            "identical to the live tables"
            if summary.identical
            else "[yellow]differs from the live tables[/]"
        )
    )
    return 0


# -- reprocess ---------------------------------------------------------------------------------


async def _reprocess_ignored(args: argparse.Namespace) -> int:
    kafka = KafkaSettings()
    ids = await ignored_raw_ids(kafka, args.project, args.since, args.connection)
    console.print(f"{len(ids):,} webhooks of {args.project} were ignored as unmapped or inactive")
    if not ids:
        return 0
    if not args.dry_run and not _confirm(args, "normalize them again now?"):
        return 1
    with _progress("reprocessing") as report:
        summary = await reprocess(kafka, args.since, only=ids, dry_run=args.dry_run, report=report)
    _print_reprocess(summary, args.dry_run)
    return 0


async def _reprocess(args: argparse.Namespace) -> int:
    kafka = KafkaSettings()
    if not args.dry_run and not _confirm(args, f"normalize every raw webhook since {args.since}?"):
        return 1
    with _progress("reprocessing") as report:
        summary = await reprocess(kafka, args.since, dry_run=args.dry_run, report=report)
    _print_reprocess(summary, args.dry_run)
    return 0


def _print_reprocess(s: Any, dry_run: bool) -> None:
    console.print(
        f"read {s.read:,}, selected {s.selected:,}, {'would write' if dry_run else 'written'} "
        f"{s.written:,}, still ignored {s.still_ignored:,}, undecodable {s.undecodable:,} "
        f"in {s.seconds:.1f} s"
    )


# -- helpers -----------------------------------------------------------------------------------


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} events/s")


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield report


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        console.print("[red]not a terminal:[/] pass --yes to confirm")
        return False
    return Confirm.ask(question, console=console)


def _when(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _partition_offset(value: str) -> tuple[int, int]:
    try:
        partition, offset = value.split(":")
        return int(partition), int(offset)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected PARTITION:OFFSET, got {value!r}") from exc

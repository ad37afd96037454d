"""``blametrail reconcile sweep --connection ID``: one sweep now, with progress and a summary."""

from __future__ import annotations

from typing import Any

import httpx
from blametrail_common.crypto import SecretBox
from blametrail_common.events import ConnectionStateV1
from blametrail_common.kafka import EventProducer, create_producer
from blametrail_common.kafka.table import CompactedTable
from blametrail_common.sentry_api import HttpxSentryApi, TokenRejected
from blametrail_common.settings import KafkaSettings, PostgresSettings, SecretsSettings
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from blametrail_reconciler.connections import Connections
from blametrail_reconciler.settings import ReconcilerSettings

__all__ = ["reconcile_command", "run_sweep"]

console = Console()


def reconcile_command(sub: Any) -> None:
    p = sub.add_parser(
        "reconcile",
        help="Compare incidents with their Sentry issues now (missed webhooks, merges).",
        description="Reconciliation of missed Sentry webhooks (issue 18 §3-4).",
    )
    cmds = p.add_subparsers(dest="reconcile", required=True, metavar="COMMAND")
    s = cmds.add_parser("sweep", help="Run one sweep of a connection now and print what it found.")
    s.add_argument("--connection", required=True, help="the connection id")
    s.set_defaults(handler=_sweep)


async def _sweep(args: Any) -> int:
    return await run_sweep(args.connection)


async def run_sweep(connection_id: str, out: Console = console) -> int:
    """One sweep of ``connection_id`` (the service's own code), printed; the exit status."""
    from blametrail_reconciler.__main__ import policy_of  # the service's own client policy
    from blametrail_reconciler.sweep import Sweeper

    settings, kafka = ReconcilerSettings(), KafkaSettings()
    box = SecretBox(SecretsSettings().secret_keys.get_secret_value())
    table = CompactedTable(kafka, "cp-connections", ConnectionStateV1)
    await table.start()
    producer = EventProducer(create_producer(kafka), kafka)
    await producer.start()
    try:
        connections = Connections(table, box, producer)
        conn = connections.get(connection_id)
        if conn is None:
            out.print(f"[red]no connection {connection_id!r} on cp-connections[/red]")
            return 2
        creds = connections.credentials(conn)
        if creds is None or not conn.enabled:
            out.print(f"[red]connection {connection_id} is disabled or has no usable token[/red]")
            return 2
        async with httpx.AsyncClient() as http:
            sweeper = Sweeper(
                HttpxSentryApi(http, policy_of(settings)),
                producer,
                PostgresSettings().database_url,
                settings,
            )
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=out
            ) as bars:
                tasks: dict[str, Any] = {}

                def progress(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        tasks[stage] = bars.add_task(stage, total=max(total, 1))
                    bars.update(tasks[stage], completed=done, total=max(total, done, 1))

                try:
                    row = await sweeper.sweep(conn, creds, progress)
                except TokenRejected:
                    await connections.request_refresh(connection_id, creds)
                    row = None
                    rejected = True
                else:
                    rejected = False
        if rejected:
            out.print(
                f"[red]Sentry rejected connection {connection_id}'s token (401).[/red] An OAuth"
                " token's refresh was requested from the token keeper: run this again shortly."
                " An internal integration's token must be replaced (PATCH the connection)."
            )
            return 3
        if row is None:
            out.print("[yellow]another replica is sweeping this connection now; try again[/yellow]")
            return 1
        summary = Table(title=f"sweep {row.sweep_id} of {connection_id}")
        summary.add_column("what")
        summary.add_column("count", justify="right")
        summary.add_row("incidents compared", str(row.checked))
        summary.add_row("Sentry API calls", str(row.api_calls))
        for kind, n in sorted(row.counts().items()):
            summary.add_row(f"repaired: {kind}", str(n))
        if not row.repairs:
            summary.add_row("repairs", "0 (nothing missed)")
        if row.deleted:
            summary.add_row("deleted in Sentry (no longer swept)", str(len(row.deleted)))
        out.print(summary)
        for r in row.repairs[:50]:
            out.print(f"  {r.kind:9} issue {r.sentry_issue_id} -> incident {r.incident_id}")
        if len(row.repairs) > 50:
            out.print(f"  ... and {len(row.repairs) - 50} more (table reconcile_repairs)")
        return 0
    finally:
        await producer.stop()
        await table.stop()

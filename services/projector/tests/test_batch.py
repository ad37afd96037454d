"""The set-based projection: one poll batch, folded and merged, leaves exactly the tables that
applying its records one at a time leaves, whatever the batch holds: several events of one
incident (in and out of order), duplicates, enrichments, failures, suspects, links, audit
records, and poison (bytes that are no event, a record Postgres refuses, text to sanitize).

Pure first (``fold``, property-tested against ``rows.merge_incident``), then on Postgres."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from aiokafka.structs import ConsumerRecord
from blametrail_common.db import migrate
from blametrail_common.events import encode, new_event
from blametrail_common.events.audit import WebhookAuditedV1
from blametrail_common.events.deploys import IncidentSuspectsV1
from blametrail_common.events.enrichment import (
    IncidentEnrichedV1,
    IncidentEnrichmentFailedV1,
    IncidentLinkedV1,
)
from blametrail_common.events.incidents import (
    Assignee,
    IncidentAssignedV1,
    IncidentEvent,
    IncidentMutedV1,
    IncidentOpenedV1,
    IncidentReopenedV1,
    IncidentResolvedV1,
    IssueSnapshot,
    SentryRef,
)
from blametrail_devstack.pytest_plugin import Infra, create_database
from blametrail_projector import projection as projection_module
from blametrail_projector.fold import FOLDS, fold_rows, fold_table
from blametrail_projector.projection import MERGES, TABLES, Projection
from blametrail_projector.rows import Rows, merge_incident, rows_for
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
INCIDENTS = [str(uuid.uuid5(uuid.NAMESPACE_OID, f"batch-{i}")) for i in range(4)]
KINDS = ("opened", "resolved", "reopened", "assigned", "muted")


def incident_event(rng: random.Random, incident_id: str) -> IncidentEvent:
    kind = rng.choice(KINDS)
    common: dict[str, Any] = {
        "incident_id": incident_id,
        "tenant_id": "t",
        "service_id": rng.choice(["svc", "other"]),
        "source": "sentry_issue",
        "severity": rng.choice(["sev1", "sev2"]),
        "status_at": T0 + timedelta(seconds=rng.randint(0, 3)),
        "sentry": SentryRef(
            connection_id="c",
            issue_id=incident_id[:6],
            short_id="CHECKOUT-1" if rng.random() < 0.5 else None,
            web_url="https://acme.sentry.io/issues/1/" if rng.random() < 0.5 else None,
        ),
        "snapshot": IssueSnapshot(
            title=rng.choice(["A", "B", "nul \x00 inside"]),
            culprit=rng.choice([None, "x"]),
            first_seen=T0 - timedelta(minutes=rng.randint(0, 5)),
            last_seen=rng.choice([None, T0 + timedelta(milliseconds=rng.randint(0, 999))]),
            count=rng.choice([None, 1, 2, 3]),
        ),
    }
    if kind == "opened":
        return IncidentOpenedV1(**common)
    if kind == "resolved":
        return IncidentResolvedV1(**common, resolution_type=None)
    if kind == "reopened":
        return IncidentReopenedV1(**common)
    if kind == "muted":
        return IncidentMutedV1(**common, details={})
    who = rng.choice([None, "u1", "u2"])
    return IncidentAssignedV1(**common, assignee=Assignee(type="user", id=who) if who else None)


def other_event(rng: random.Random, incident_id: str) -> Any:
    at = T0 + timedelta(seconds=rng.randint(0, 3))
    kind = rng.choice(["enriched", "failed", "suspects", "linked", "audit"])
    if kind == "enriched":
        return IncidentEnrichedV1(
            incident_id=incident_id,
            tenant_id="t",
            connection_id="c",
            sentry_issue_id="1",
            sentry_event_id=None,
            fetched_at=at,
            title=rng.choice(["t1", "t2"]),
            message=None,
            platform="python",
            environment=None,
            release=None,
            tags=[],
            event_tags=[],
            exceptions=[],
            breadcrumbs=[],
            user=None,
            contexts={},
            event_created_at=None,
            event_received_at=None,
            links={},
            truncated=[],
        )
    if kind == "failed":
        return IncidentEnrichmentFailedV1(
            incident_id=incident_id,
            tenant_id="t",
            sentry_issue_id="1",
            reason=rng.choice(["gone", "timeout"]),
            attempts=3,
            failed_at=at,
        )
    if kind == "suspects":
        return IncidentSuspectsV1(
            incident_id=incident_id,
            tenant_id="t",
            computed_at=at,
            candidates=rng.randint(0, 3),
            suspects=[],
        )
    if kind == "linked":
        return IncidentLinkedV1(
            incident_id=incident_id,
            tenant_id="t",
            connection_id="c",
            sentry_issue_id="1",
            external_issue_id=rng.choice(["e1", "e2"]),
            sentry_web_url=rng.choice([None, "https://acme.sentry.io/issues/1/"]),
            incident_url="https://blametrail.example/i",
            linked_at=at,
        )
    return WebhookAuditedV1(
        reason="unmapped",
        detail=rng.choice(["d", "d\x00"]),
        tenant_id="t",
        connection_id="c",
        installation_uuid=None,
        resource="issue",
        action="created",
        project_slug="p",
        raw_event_id=f"r{rng.randint(0, 3)}",
        body_sha256="0" * 64,
        received_at=at,
    )


def record(offset: int, value: bytes, topic: str = "incident-events") -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic=topic,
        partition=offset % 3,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


def log_of(seed: int, n: int = 80) -> list[ConsumerRecord[Any, Any]]:
    """``n`` records about four incidents: every kind, redeliveries of earlier records (the same
    bytes again: the same event id), junk, and an incident id Postgres refuses."""
    rng = random.Random(seed)
    values: list[bytes] = []
    for _ in range(n):
        incident_id = rng.choice(INCIDENTS)
        roll = rng.random()
        if roll < 0.1 and values:
            values.append(rng.choice(values))  # a duplicate
            continue
        if roll < 0.13:
            values.append(b"\xff not an event")
            continue
        if roll < 0.15:
            incident_id = "not-a-uuid"  # decodes (a str), but no uuid column takes it
        payload = incident_event(rng, incident_id) if roll < 0.6 else other_event(rng, incident_id)
        key = getattr(payload, "incident_id", "t")
        values.append(encode(new_event(payload, key=key, tenant="t")))
    return [record(i, v) for i, v in enumerate(values)]


# -- pure --------------------------------------------------------------------------------------
def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """An incident row with its refs and assignee as the plain values ``merge_incident`` takes."""
    out = dict(row)
    for column in ("sentry", "assignee"):
        if out[column] is not None and not isinstance(out[column], dict):
            out[column] = orjson.loads(out[column].encoded)
    return out


def _merged(state: dict[str, Any] | None, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    for row in rows:
        state = merge_incident(state, row)
    return None if state is None else {k: v for k, v in state.items() if k != "sets_assignee"}


def _incident_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    events = [incident_event(rng, INCIDENTS[0]) for _ in range(n)]
    values = [encode(new_event(e, key=e.incident_id)) for e in events]
    return rows_for([record(i, v) for i, v in enumerate(values)]).incidents


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 8), st.integers(0, 4))
def test_a_folded_incident_merges_as_its_events_one_by_one(seed: int, n: int, before: int) -> None:
    """Whatever row is stored (none, or the state of ``before`` earlier events), merging the
    batch's folded row gives what merging each of its events in turn gives: so one upsert per
    incident per batch has the same effect."""
    rng = random.Random(seed)
    stored = _merged(None, [_plain(r) for r in _incident_rows(rng, before)])
    batch = _incident_rows(rng, n)
    (folded,) = fold_table(batch, FOLDS["incidents"])
    assert folded["sets_assignee"] == any(r["sets_assignee"] for r in batch)
    one_by_one = _merged(stored, [_plain(r) for r in batch])
    assert _merged(stored, [_plain(folded)]) == one_by_one


def test_every_table_has_a_fold_and_a_merge() -> None:
    tables = {f.name for f in fields(Rows)} - {"undecodable"}
    assert set(FOLDS) == tables
    assert {m.rows for m in MERGES} == tables
    assert {m.table for m in MERGES if m.shadowed} == set(TABLES)


def test_folding_keeps_the_first_of_a_duplicate_and_the_latest_state() -> None:
    records = log_of(seed=7)
    rows, folded = rows_for(records), fold_rows(rows_for(records))
    assert len({r["event_id"] for r in rows.timeline}) == len(folded.timeline)
    first: dict[Any, dict[str, Any]] = {}
    for r in rows.timeline:
        first.setdefault(r["event_id"], r)
    assert folded.timeline == list(first.values())  # the first delivery's log position
    assert len(folded.incidents) == len({r["incident_id"] for r in rows.incidents})
    assert folded.undecodable == rows.undecodable


# -- on Postgres -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def db(infra: Infra) -> str:
    """A migrated database of this module's own (Postgres only: no topics needed)."""
    dsn = create_database(infra.server_dsn, f"bt_batch_{uuid.uuid4().hex[:6]}")
    migrate(dsn)
    return dsn


SNAPSHOT = {**{t: "1" for t in TABLES}, "sentry_issue_links": "1"}


async def _tables(conn: psycopg.AsyncConnection[Any]) -> dict[str, list[Any]]:
    out = {}
    for table in SNAPSHOT:
        cur = await conn.execute(
            f"SELECT to_jsonb(t)::text AS row FROM {table} t ORDER BY 1"  # noqa: S608 (constants)
        )
        out[table] = [r["row"] for r in await cur.fetchall()]
    return out


async def _empty(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(f"TRUNCATE {', '.join(SNAPSHOT)}")
    await conn.commit()


async def _one_by_one(conn: psycopg.AsyncConnection[Any], records: list[Any]) -> tuple[Any, int]:
    projection = Projection(None)
    for r in records:
        await projection.apply(conn, [r])
        await conn.commit()
    return await _tables(conn), projection.refused


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_batch_leaves_the_tables_its_records_leave_one_by_one(db: str, seed: int) -> None:
    records = log_of(seed)
    async with await psycopg.AsyncConnection.connect(db, row_factory=dict_row) as conn:
        await _empty(conn)
        expected, refused = await _one_by_one(conn, records)
        assert refused >= 1  # the log holds poison: it is refused, the rest applied
        assert expected["incidents"]
        assert expected["incident_timeline"]
        # one by one took ``Merge.insert``; staged (``values_max=0``) and inserted alike; the
        # rows computed ahead (``Projection.ahead``) for these records, for others (dropped)
        for chunk, decode_slice, values_max, ahead in (
            (1000, 50, 0, None),
            (1000, 50, 300, None),
            (7, 3, 0, None),
            (1, 1, 0, None),
            (1000, 5, 300, "these"),
            (7, 3, 0, "these"),
            (7, 3, 0, "others"),
        ):
            await _empty(conn)
            projection = Projection(
                None, chunk=chunk, decode_slice=decode_slice, values_max=values_max
            )
            if ahead is not None:
                projection.ahead(records if ahead == "these" else records[1:])
                await asyncio.sleep(0.05)  # nothing is written nor refused before ``apply``
                assert projection.refused == 0
            await projection.apply(conn, records)
            await conn.commit()
            assert await _tables(conn) == expected, (chunk, decode_slice, values_max, ahead)
            assert projection.refused == refused
            await projection.apply(conn, records)  # the whole batch redelivered
            await conn.commit()
            assert await _tables(conn) == expected


async def test_a_batch_given_ahead_is_written_from_the_rows_computed_then(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Projection.ahead`` decodes the batch before ``apply`` is given it: ``apply`` decodes
    nothing more, and the batch before it (given ahead too, never applied) is dropped."""
    rng = random.Random(5)
    clean = [
        record(i, encode(new_event(e, key=e.incident_id, tenant="t")))
        for i, e in enumerate(incident_event(rng, INCIDENTS[i % 2]) for i in range(40))
    ]
    async with await psycopg.AsyncConnection.connect(db, row_factory=dict_row) as conn:
        await _empty(conn)
        expected, refused = await _one_by_one(conn, clean)
        assert refused == 0
        await _empty(conn)
        projection = Projection(None, chunk=7, decode_slice=2)
        projection.ahead(clean[:5])  # a batch the loop polled but never applied
        projection.ahead(clean)
        await asyncio.sleep(0.1)

        def no_decoding(_: Any) -> None:
            raise AssertionError("apply decoded a record ahead gave it")

        monkeypatch.setattr(projection_module, "rows_for", no_decoding)
        await projection.apply(conn, clean)
        await conn.commit()
        assert await _tables(conn) == expected
        assert projection._ahead == []  # nothing left running


async def test_a_batch_merges_into_rows_stored_before(db: str) -> None:
    """Half the log applied one by one, then the rest as one batch (reversed: out of order):
    the same tables as the same sequence one by one."""
    records = log_of(seed=11)
    half = len(records) // 2
    rest = list(reversed(records[half:]))
    async with await psycopg.AsyncConnection.connect(db, row_factory=dict_row) as conn:
        await _empty(conn)
        expected, _ = await _one_by_one(conn, records[:half] + rest)
        await _empty(conn)
        await _one_by_one(conn, records[:half])
        await Projection(None, chunk=5).apply(conn, rest)
        await conn.commit()
        assert await _tables(conn) == expected


async def test_a_refused_record_inside_a_batch_costs_only_itself(db: str) -> None:
    rng = random.Random(5)
    good = [incident_event(rng, INCIDENTS[1]) for _ in range(6)]
    bad = incident_event(rng, "not-a-uuid")
    values = [encode(new_event(e, key=e.incident_id)) for e in (*good[:3], bad, *good[3:])]
    records = [record(i, v) for i, v in enumerate([*values, b"junk"])]
    async with await psycopg.AsyncConnection.connect(db, row_factory=dict_row) as conn:
        await _empty(conn)
        projection = Projection(None, chunk=2)
        await projection.apply(conn, records)
        await conn.commit()
        assert projection.refused == 2  # the bad uuid and the junk, nothing else
        cur = await conn.execute("SELECT count(*) AS n FROM incident_timeline")
        assert await cur.fetchone() == {"n": 6}
        cur = await conn.execute("SELECT count(*) AS n FROM incidents")
        assert await cur.fetchone() == {"n": 1}


async def test_the_bulk_mode_of_a_rebuild_keeps_the_first_of_each_event(db: str) -> None:
    """A sole writer copies the append-only tables straight in: duplicates within a batch,
    across chunks and across batches are left out, as ``ON CONFLICT DO NOTHING`` leaves them."""
    records = log_of(seed=13)
    async with await psycopg.AsyncConnection.connect(db, row_factory=dict_row) as conn:
        await _empty(conn)
        expected, _ = await _one_by_one(conn, records)
        await _empty(conn)
        projection = Projection(None, bulk=True, chunk=4)
        half = len(records) // 2
        await projection.apply(conn, records[:half])
        await conn.commit()
        await projection.apply(conn, records[half - 5 :])  # overlapping batches: redeliveries
        await conn.commit()
        assert await _tables(conn) == expected


@pytest.mark.parametrize("values_max", [0, 300])  # staged, and inserted with its values
async def test_large_values_are_stored_with_lz4_whichever_way_they_are_written(
    db: str, values_max: int
) -> None:
    """Migrations 0037 and 0038: a staging table (``CREATE TEMP TABLE ... AS``) has no column
    compression of its own, and a value merged from it keeps the compression it got there."""
    rng = random.Random(7)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    values = []
    for incident_id in ids:
        enriched = other_event(rng, incident_id)
        while not isinstance(enriched, IncidentEnrichedV1):
            enriched = other_event(rng, incident_id)
        big = enriched.model_copy(update={"contexts": {"k": {"v": "compressible " * 400}}})
        values.append(encode(new_event(big, key=incident_id, tenant="t")))
    async with await psycopg.AsyncConnection.connect(db) as conn:
        projection = Projection(None, values_max=values_max)
        await projection.apply(conn, [record(i, v) for i, v in enumerate(values)])
        await conn.commit()
        cur = await conn.execute(
            "SELECT pg_column_compression(record) FROM incident_enrichments"
            " WHERE incident_id = ANY(%s::uuid[])",
            (ids,),
        )
        assert [c for (c,) in await cur.fetchall()] == ["lz4"] * 3

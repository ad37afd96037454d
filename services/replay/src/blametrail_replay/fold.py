"""Pure: the log folded by key into the read model's final rows, as ``COPY`` text. No I/O library.

A rebuild reads the log from offset zero into empty tables, so it can know each row's final
state before it writes anything. :class:`Fold` takes batches of records (the rows of each come
from :func:`blametrail_projector.rows.rows_for`, the live projection's own mapping) and keeps:

- ``incidents``: one compact state per incident, merged exactly as the live upsert merges
  (``rows.merge_incident``; the tests hold the two to each other);
- ``incident_enrichments``: the latest enrichment per incident, else its first failure;
- ``incident_suspects``: the latest computation per incident;
- Sentry issue links: first ``linked_at``, latest external issue, latest known web URL.

The append-only tables (``incident_timeline``, ``webhook_audit``) are not held: each batch's rows
come back at once as ``COPY`` text for the caller to stream (their duplicates are the caller's:
it keeps the first of each event id, as ``ON CONFLICT DO NOTHING`` does). So memory grows with
the number of distinct keys (:attr:`Fold.keys`), not with the length of the log; the caller
bounds it with ``BLAMETRAIL_REPLAY_FOLD_MAX_INCIDENTS`` (see ``rebuild.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

import orjson
from blametrail_projector.rows import STATE_COLUMNS, STATUS_COLUMNS, EncodedJson, rows_for

__all__ = ["COLUMNS", "Batch", "Fold", "copy_field", "copy_line"]

# Column lists of the COPY statements, table by table (the incidents' grouped by how they merge).
COLUMNS: dict[str, tuple[str, ...]] = {
    "incidents": (
        "incident_id",
        "tenant_id",
        "service_id",
        "source",
        "status",
        "severity",
        "title",
        "culprit",
        "resolved_at",
        "state_changed_at",
        "updated_at",
        "state_order",
        "assignee",
        "assignee_order",
        "sentry",
        "first_seen",
        "last_seen",
        "event_count",
        "opened_at",
        "status_order",
    ),
    "incident_timeline": (
        "event_id",
        "incident_id",
        "tenant_id",
        "event_type",
        "occurred_at",
        "log_partition",
        "log_offset",
        "payload",
        "sanitized",
    ),
    "webhook_audit": (
        "event_id",
        "tenant_id",
        "connection_id",
        "reason",
        "resource",
        "action",
        "project_slug",
        "project_id",
        "detail",
        "received_at",
        "sanitized",
    ),
    "incident_enrichments": (
        "incident_id",
        "tenant_id",
        "event_id",
        "status",
        "reason",
        "record",
        "fetched_at",
        "sanitized",
    ),
    "incident_suspects": (
        "incident_id",
        "tenant_id",
        "event_id",
        "computed_at",
        "candidates",
        "suspects",
    ),
}
_HEAD_COLUMNS = ("incident_id", "tenant_id", "service_id", "source")
_NULL = b"\\N"


def _escape(data: bytes) -> bytes:
    if b"\\" in data or b"\t" in data or b"\n" in data or b"\r" in data:
        return (
            data.replace(b"\\", b"\\\\")
            .replace(b"\t", b"\\t")
            .replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r")
        )
    return data


def _own(data: bytes) -> bytes:
    """A copy of its own: orjson's output keeps a buffer of kilobytes behind a short value,
    which a value held for the whole fold must not."""
    return bytes(bytearray(data))


def _datetime(value: datetime) -> bytes:
    if value.tzinfo is None:  # psycopg sends a naive datetime as timestamp: the session's zone
        raise TypeError("a naive datetime has no single timestamptz")
    return value.isoformat().encode()


_FORMAT: dict[type, Any] = {
    type(None): lambda _: _NULL,
    str: lambda v: _escape(v.encode()),
    EncodedJson: lambda v: _escape(v.encoded),
    bool: lambda v: b"t" if v else b"f",
    int: lambda v: str(v).encode(),
    uuid.UUID: lambda v: str(v).encode(),
    datetime: _datetime,
}


def copy_field(value: Any) -> bytes:
    """One value in ``COPY ... FROM STDIN`` text format (Postgres parses it as psycopg's
    parameter of the same value: text, ``jsonb``, ``timestamptz``, ``uuid``, integers, booleans)."""
    fmt = _FORMAT.get(type(value))
    if fmt is not None:
        return fmt(value)  # type: ignore[no-any-return]
    for kind, fmt in _FORMAT.items():  # a subclass (an enum of str, a datetime subclass)
        if kind is not type(None) and isinstance(value, kind):
            return fmt(value)  # type: ignore[no-any-return]
    raise TypeError(f"no COPY text for {type(value).__name__}")


def copy_line(row: dict[str, Any], columns: Sequence[str]) -> bytes:
    return b"\t".join(map(copy_field, map(row.__getitem__, columns))) + b"\n"


# Fast lines for the rows of the log's common events: one f-string per line, then one check of
# the whole line instead of one escape per field. A line is plain when it has exactly its
# separators and every backslash in it is one of its NULLs' (``\N``: one per ``None`` written);
# otherwise (a tab, a newline or a backslash in a value) the generic ``copy_line`` writes it.
# They take the types ``rows_for`` gives (aware datetimes from the events' ``AwareDatetime``).


def _plain(line: str, tabs: int, nulls: int = 0) -> bool:
    return (
        line.count("\t") == tabs
        and line.count("\\") == nulls
        and "\n" not in line
        and "\r" not in line
    )


def _ts(value: datetime | None) -> str:
    return "\\N" if value is None else _at(value)


def _at(value: datetime) -> str:
    if value.tzinfo is None:
        raise TypeError("a naive datetime has no single timestamptz")
    return value.isoformat()


def timeline_line(row: dict[str, Any]) -> bytes:
    """``copy_line(row, COLUMNS["incident_timeline"])``, faster."""
    line = (
        f"{row['event_id']}\t{row['incident_id']}\t{row['tenant_id']}\t{row['event_type']}\t"
        f"{_at(row['occurred_at'])}\t{row['log_partition']}\t{row['log_offset']}\t"
    )
    if not _plain(line, 7):
        return copy_line(row, COLUMNS["incident_timeline"])
    end = b"\tt\n" if row["sanitized"] else b"\tf\n"
    return line.encode() + _escape(row["payload"].encoded) + end


def audit_line(row: dict[str, Any]) -> bytes:
    """``copy_line(row, COLUMNS["webhook_audit"])``, faster."""
    tenant, conn, resource, action = (
        row["tenant_id"],
        row["connection_id"],
        row["resource"],
        row["action"],
    )
    slug, project = row["project_slug"], row["project_id"]
    nulls = sum(v is None for v in (tenant, conn, resource, action, slug, project))
    line = (
        f"{row['event_id']}\t{_n(tenant)}\t{_n(conn)}\t{row['reason']}\t{_n(resource)}\t"
        f"{_n(action)}\t{_n(slug)}\t{_n(project)}\t"
    )
    if not _plain(line, 8, nulls):
        return copy_line(row, COLUMNS["webhook_audit"])
    tail = f"\t{_at(row['received_at'])}\t{'t' if row['sanitized'] else 'f'}\n"
    return line.encode() + _escape(row["detail"].encoded) + tail.encode()


def _n(value: str | None) -> str:
    return "\\N" if value is None else value


def _int(value: int | None) -> str:
    return "\\N" if value is None else str(value)


def _least(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _merge_refs(older: bytes, newer: bytes) -> bytes:
    """``older || newer`` of two jsonb objects (the later event's value wins a shared key)."""
    if older == newer:
        return newer
    return _own(orjson.dumps({**orjson.loads(older), **orjson.loads(newer)}))


# An incident's state, compact (a list, values pre-encoded where they only ever move together):
_HEAD, _FACTS, _ORDER, _ASSIGNEE, _ASSIGNEE_ORDER, _REFS, _FIRST, _LAST, _COUNT, _OPENED = range(10)
# ... and the status change shown: its key, the status and its times (``rows.STATUS_COLUMNS``,
# by ``status_order``); _FACTS are ``rows.STATE_COLUMNS`` (by ``state_order``). As COPY text:
_STATUS_ORDER, _STATUS, _STATUS_TAIL = range(10, 13)
if (STATUS_COLUMNS, STATE_COLUMNS) != (
    ("status", "resolved_at", "state_changed_at"),
    ("severity", "title", "culprit"),
):  # the incidents' line below puts them in COLUMNS order by hand
    raise ImportError("fold.incident_line is out of date with rows.STATUS_COLUMNS/STATE_COLUMNS")


def _new_incident(row: dict[str, Any]) -> list[Any]:
    head = f"{row['incident_id']}\t{row['tenant_id']}\t{row['service_id']}\t{row['source']}"
    if _plain(head, 3):
        head_text = head.encode()
    else:
        head_text = b"\t".join([copy_field(row[c]) for c in _HEAD_COLUMNS])
    status, status_tail = _status_text(row)
    return [
        head_text,
        _facts_text(row),
        row["state_order"],
        _own(row["assignee"].encoded) if row["assignee"] is not None else None,
        row["assignee_order"],
        _own(row["sentry"].encoded),
        row["first_seen"],
        row["last_seen"],
        row["event_count"],
        row["opened_at"],
        row["status_order"],
        status,
        status_tail,
    ]


def _facts_text(row: dict[str, Any]) -> bytes:
    """``severity, title, culprit`` (``rows.STATE_COLUMNS``: they move by ``state_order``)."""
    title, culprit = row["title"], row["culprit"]
    line = f"{row['severity']}\t{_n(title)}\t{_n(culprit)}"
    if _plain(line, 2, (title is None) + (culprit is None)):
        return line.encode()
    return b"\t".join([copy_field(row[c]) for c in STATE_COLUMNS])


def _status_text(row: dict[str, Any]) -> tuple[bytes, bytes]:
    """``status`` and ``resolved_at, state_changed_at, updated_at`` (``rows.STATUS_COLUMNS``:
    they move by ``status_order``; updated_at is the shown status's own time, as the live
    upsert writes it). Times only in the second part: nothing to escape there."""
    changed = _at(row["state_changed_at"])
    return copy_field(row["status"]), f"{_ts(row['resolved_at'])}\t{changed}\t{changed}".encode()


def fold_incident(cur: list[Any] | None, row: dict[str, Any]) -> list[Any]:
    """The incident's state after one more event's row (``rows._incident``): what
    ``rows.merge_incident`` (and so the live upsert) computes, in compact form (the status
    and the facts apart, as bytes: they move by different orders)."""
    if cur is None:
        return _new_incident(row)
    newer = cur[_ORDER] < row["state_order"]
    if newer:
        cur[_ORDER], cur[_FACTS] = row["state_order"], _facts_text(row)
    if cur[_STATUS_ORDER] < row["status_order"]:
        cur[_STATUS_ORDER] = row["status_order"]
        cur[_STATUS], cur[_STATUS_TAIL] = _status_text(row)
    if row["sets_assignee"] and (
        cur[_ASSIGNEE_ORDER] is None or cur[_ASSIGNEE_ORDER] < row["assignee_order"]
    ):
        assignee = row["assignee"]
        cur[_ASSIGNEE] = _own(assignee.encoded) if assignee is not None else None
        cur[_ASSIGNEE_ORDER] = row["assignee_order"]
    refs = row["sentry"].encoded
    merged = _merge_refs(cur[_REFS], refs) if newer else _merge_refs(refs, cur[_REFS])
    cur[_REFS] = merged if merged is not refs else _own(refs)
    cur[_FIRST] = _least(cur[_FIRST], row["first_seen"])
    cur[_LAST] = _greatest(cur[_LAST], row["last_seen"])
    cur[_COUNT] = _greatest(cur[_COUNT], row["event_count"])
    cur[_OPENED] = _least(cur[_OPENED], row["opened_at"])
    return cur


def incident_line(state: list[Any]) -> bytes:
    assignee = b"\\N" if state[_ASSIGNEE] is None else _escape(state[_ASSIGNEE])
    order, assignee_order, count = state[_ORDER], state[_ASSIGNEE_ORDER], state[_COUNT]
    status_order = state[_STATUS_ORDER]
    # the orders are incident_order keys (digits, dashes, hex), the count an int or None
    middle = f"\t{order}\t".encode() + assignee
    tail = (
        f"\t{_n(assignee_order)}\t".encode(),
        _escape(state[_REFS]),
        f"\t{_ts(state[_FIRST])}\t{_ts(state[_LAST])}\t{_int(count)}\t{_ts(state[_OPENED])}"
        f"\t{status_order}\n".encode(),
    )
    if any("\t" in o or "\\" in o for o in (order, status_order)) or (
        assignee_order and "\\" in assignee_order
    ):
        return _incident_line_slow(state)
    shown = (state[_STATUS], state[_FACTS], state[_STATUS_TAIL])
    return b"".join((state[_HEAD], b"\t", b"\t".join(shown), middle, *tail))


def _incident_line_slow(state: list[Any]) -> bytes:
    assignee = _NULL if state[_ASSIGNEE] is None else _escape(state[_ASSIGNEE])
    tail = [
        copy_field(state[_ORDER]),
        assignee,
        copy_field(state[_ASSIGNEE_ORDER]),
        _escape(state[_REFS]),
        *(copy_field(state[i]) for i in (_FIRST, _LAST, _COUNT, _OPENED, _STATUS_ORDER)),
    ]
    shown = [state[_STATUS], state[_FACTS], state[_STATUS_TAIL]]
    return b"\t".join([state[_HEAD], *shown, *tail]) + b"\n"


@dataclass
class Batch:
    """What one batch of records gives at once: the append-only tables' lines."""

    timeline: bytes = b""
    audit: bytes = b""
    refused: int = 0  # records that are no event of the projection (the live one dead-letters them)


@dataclass
class Fold:
    """Records in log order (per partition) -> final rows. See the module docstring."""

    incidents: dict[str, list[Any]] = field(default_factory=dict)
    # incident id -> [incident id + tenant (COPY text), the rest (COPY text), status, fetched_at]
    enrichments: dict[str, list[Any]] = field(default_factory=dict)
    # incident id -> [incident id + tenant (COPY text), the rest (COPY text), computed_at]
    suspects: dict[str, list[Any]] = field(default_factory=dict)
    links: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def keys(self) -> int:
        """Distinct keys held: what the fold's memory grows with."""
        return len(self.incidents) + len(self.enrichments) + len(self.suspects) + len(self.links)

    def add(self, records: Sequence[Any]) -> Batch:
        rows = rows_for(list(records))
        incidents = self.incidents
        for row in rows.incidents:
            key = row["incident_id"]
            incidents[key] = fold_incident(incidents.get(key), row)
        for row in rows.enriched:
            self._enriched(row)
        for row in rows.failed:  # the first failure stays only while nothing else came
            if row["incident_id"] not in self.enrichments:
                self.enrichments[row["incident_id"]] = self._keyed(row, "incident_enrichments")
        for row in rows.suspects:
            cur = self.suspects.get(row["incident_id"])
            if cur is None or cur[2] <= row["computed_at"]:
                new = self._keyed(row, "incident_suspects")
                self.suspects[row["incident_id"]] = new if cur is None else [cur[0], *new[1:]]
        for row in rows.links:
            self._link(row)
        return Batch(
            timeline=b"".join([timeline_line(r) for r in rows.timeline]),
            audit=b"".join([audit_line(r) for r in rows.audit]),
            refused=len(rows.undecodable),
        )

    def _enriched(self, row: dict[str, Any]) -> None:
        # the upsert replaces a failure, or an enrichment fetched no later; the tenant stays
        cur = self.enrichments.get(row["incident_id"])
        if cur is None or cur[2] == "failed" or cur[3] <= row["fetched_at"]:
            new = self._keyed(row, "incident_enrichments")
            self.enrichments[row["incident_id"]] = new if cur is None else [cur[0], *new[1:]]

    @staticmethod
    def _keyed(row: dict[str, Any], table: str) -> list[Any]:
        """[incident id + tenant, the other columns] as COPY text, then what the merge compares."""
        head = copy_field(row["incident_id"]) + b"\t" + copy_field(row["tenant_id"])
        tail = b"\t".join([copy_field(row[c]) for c in COLUMNS[table][2:]])
        if table == "incident_enrichments":
            return [head, tail, row["status"], row["fetched_at"]]
        return [head, tail, row["computed_at"]]

    def _link(self, row: dict[str, Any]) -> None:
        key = (row["incident_id"], row["connection_id"], row["sentry_issue_id"])
        cur = self.links.get(key)
        if cur is None:
            self.links[key] = dict(row)
            return
        cur["external_issue_id"] = row["external_issue_id"]
        if row["web_url"] is not None:
            cur["web_url"] = row["web_url"]

    def lines(self, table: str, part: int = 0, parts: int = 1) -> Iterator[bytes]:
        """The folded table's final rows as ``COPY`` text lines (``COLUMNS[table]``); with
        ``parts``, only every ``parts``-th row from the ``part``-th (for parallel streams)."""
        if table == "incidents":
            yield from map(incident_line, islice(self.incidents.values(), part, None, parts))
            return
        held = {"incident_enrichments": self.enrichments, "incident_suspects": self.suspects}
        for state in islice(held[table].values(), part, None, parts):
            yield state[0] + b"\t" + state[1] + b"\n"

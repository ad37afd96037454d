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

import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
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
_NULL_TEXT = "\\N"


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


def _merge_refs(older: bytes, newer: bytes) -> bytes:
    """``older || newer`` of two jsonb objects (the later event's value wins a shared key)."""
    if older == newer:
        return newer
    return _own(orjson.dumps({**orjson.loads(older), **orjson.loads(newer)}))


# An incident's state, compact: one tuple of a few objects (a folded incident is ~0.5 KB, where
# a list of 13 separate values was ~0.9), its pieces replaced as their own orders move:
_KEY, _BLOB, _HEAD, _STATUS, _FACTS, _ASSIGNED = range(6)
# _KEY: the incident id (the fold's dict key itself); _BLOB: what is compared or merged, in one
# bytes (below); _HEAD: ``tenant_id, service_id, source`` as COPY text, _STATUS: ``status`` (by
# ``status_order``, ``rows.STATUS_COLUMNS``), _FACTS: ``severity, title, culprit`` (by
# ``state_order``, ``rows.STATE_COLUMNS``), each shared between incidents with equal text;
# _ASSIGNED: None, or (``assignee`` jsonb or None, ``assignee_order``).
if (STATUS_COLUMNS, STATE_COLUMNS) != (
    ("status", "resolved_at", "state_changed_at"),
    ("severity", "title", "culprit"),
):  # the incidents' line below puts them in COLUMNS order by hand
    raise ImportError("fold.incident_line is out of date with rows.STATUS_COLUMNS/STATE_COLUMNS")

# _BLOB: first_seen, last_seen, opened_at, resolved_at, state_changed_at (each as microseconds
# since the epoch, UTC, and its zone's offset in microseconds), event_count (11 int64; NULL is
# the int64 that loses the column's merge: the greatest for a least() column, the least for a
# greatest() one and for the shown status's times, which only move together); the lengths of
# ``state_order`` and ``status_order`` (_SAME: equal to it); the two orders (UTF-8: its bytes
# compare as the text's code points), then the ``sentry`` jsonb.
_PACK = struct.Struct("<11q")
_LENGTHS = struct.Struct("<II")
_SAME = 2**32 - 1
_LOW, _HIGH = -(2**63), 2**63 - 1
_FIRST, _LAST, _OPENED, _RESOLVED, _CHANGED = 0, 2, 4, 6, 8
_COUNT = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_ZONES: dict[int, timezone] = {0: UTC}
_SUFFIXES: dict[int, bytes] = {0: b"+00:00"}  # an offset's text in isoformat(), by microseconds
_SHARED_MAX = 100_000  # distinct texts shared at most (beyond it each incident keeps its own)


class Unfoldable(ValueError):
    """A value the compact state cannot hold (a count beyond ``bigint``, a time out of range):
    the caller rebuilds the live way, as for a row Postgres refuses."""


def _micros(value: datetime | None, null: int) -> tuple[int, int]:
    if value is None:
        return null, 0
    off = value.utcoffset()
    if off is None:  # psycopg sends a naive datetime as timestamp: the session's zone
        raise TypeError("a naive datetime has no single timestamptz")
    return (value - _EPOCH) // _US, off // _US  # exact: whole microseconds


def _time_text(utc: int, offset: int) -> str:
    """The ``isoformat()`` of the datetime packed (its own zone), ``\\N`` for NULL."""
    if utc in (_LOW, _HIGH):
        return "\\N"
    zone = _ZONES.get(offset)
    if zone is None:
        zone = _ZONES.setdefault(offset, timezone(timedelta(microseconds=offset)))
    try:
        return (_EPOCH + timedelta(microseconds=utc + offset)).replace(tzinfo=zone).isoformat()
    except OverflowError as exc:
        raise Unfoldable(f"time out of range: {utc} us") from exc


def _time_bytes(utc: int, offset: int) -> bytes:
    """``_time_text(utc, offset).encode()``, faster: an aware ``isoformat()`` is the naive one
    and then its offset's text, which is kept per offset."""
    if utc in (_LOW, _HIGH):
        return _NULL
    suffix = _SUFFIXES.get(offset)
    if suffix is None:
        zone = timezone(timedelta(microseconds=offset))
        suffix = datetime(2000, 1, 1, tzinfo=zone).isoformat()[19:].encode()
        if len(_SUFFIXES) < 1000:
            _SUFFIXES[offset] = suffix
    try:
        return (_NAIVE_EPOCH + _US * (utc + offset)).isoformat().encode() + suffix
    except OverflowError as exc:
        raise Unfoldable(f"time out of range: {utc} us") from exc


def _count(value: int | None) -> int:
    if value is None:
        return _LOW
    if not _LOW < value <= _HIGH:
        raise Unfoldable(f"event_count {value} is no bigint")
    return value


def _times(row: dict[str, Any]) -> tuple[int, ...]:
    """The row's times and count as packed (``_PACK``): first_seen, last_seen, opened_at,
    resolved_at, state_changed_at (the event's own time is most of them: converted once)."""
    changed = row["state_changed_at"]
    at = _micros(changed, _LOW)
    opened, resolved = row["opened_at"], row["resolved_at"]
    same = changed is not None
    return (
        *_micros(row["first_seen"], _HIGH),
        *_micros(row["last_seen"], _LOW),
        *(at if same and opened is changed else _micros(opened, _HIGH)),
        *(at if same and resolved is changed else _micros(resolved, _LOW)),
        *at,
        _count(row["event_count"]),
    )


class Shared(dict[bytes, bytes]):
    """Equal COPY texts of different incidents as one object (tenant, service and source; the
    status; severity, title and culprit), up to ``_SHARED_MAX`` distinct ones."""

    def get_shared(self, text: bytes) -> bytes:
        held = self.get(text)
        if held is not None:
            return held
        if len(self) < _SHARED_MAX:
            self[text] = text
        return text


def _blob(times: bytes, order: bytes, status_order: bytes, refs: bytes) -> bytes:
    if status_order == order:
        return b"".join((times, _LENGTHS.pack(len(order), _SAME), order, refs))
    lengths = _LENGTHS.pack(len(order), len(status_order))
    return b"".join((times, lengths, order, status_order, refs))


def _unblob(blob: bytes) -> tuple[tuple[int, ...], bytes, bytes, bytes]:
    """(times and count, state_order, status_order, refs)."""
    return (_PACK.unpack_from(blob), *_unblob_texts(blob))


def _unblob_texts(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(state_order, status_order, refs)."""
    n, m = _LENGTHS.unpack_from(blob, _PACK.size)
    at = _PACK.size + _LENGTHS.size
    order = blob[at : at + n]
    if m == _SAME:
        return order, order, blob[at + n :]
    return order, blob[at + n : at + n + m], blob[at + n + m :]


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _new_incident(row: dict[str, Any], shared: Shared) -> tuple[Any, ...]:
    head = f"{row['tenant_id']}\t{row['service_id']}\t{row['source']}"
    if _plain(head, 2):
        head_text = head.encode()
    else:
        head_text = b"\t".join([copy_field(row[c]) for c in _HEAD_COLUMNS[1:]])
    assignee, assignee_order = row["assignee"], row["assignee_order"]
    if assignee is None and assignee_order is None:
        assigned = None
    else:
        assigned = (None if assignee is None else _own(assignee.encoded), assignee_order)
    times = _PACK.pack(*_times(row))
    blob = _blob(
        times, _utf8(row["state_order"]), _utf8(row["status_order"]), row["sentry"].encoded
    )
    return (
        row["incident_id"],
        blob,
        shared.get_shared(head_text),
        shared.get_shared(copy_field(row["status"])),
        shared.get_shared(_facts_text(row)),
        assigned,
    )


def _facts_text(row: dict[str, Any]) -> bytes:
    """``severity, title, culprit`` (``rows.STATE_COLUMNS``: they move by ``state_order``)."""
    title, culprit = row["title"], row["culprit"]
    line = f"{row['severity']}\t{_n(title)}\t{_n(culprit)}"
    if _plain(line, 2, (title is None) + (culprit is None)):
        return line.encode()
    return b"\t".join([copy_field(row[c]) for c in STATE_COLUMNS])


def fold_incident(
    cur: tuple[Any, ...] | None, row: dict[str, Any], shared: Shared | None = None
) -> tuple[Any, ...]:
    """The incident's state after one more event's row (``rows._incident``): what
    ``rows.merge_incident`` (and so the live upsert) computes, in compact form (the status
    and the facts apart: they move by different orders)."""
    if shared is None:
        shared = Shared()
    if cur is None:
        return _new_incident(row, shared)
    key, blob, head, status, facts, assigned = cur
    (
        first,
        first_zone,
        last,
        last_zone,
        opened,
        opened_zone,
        resolved,
        resolved_zone,
        changed,
        changed_zone,
        count,
    ) = _PACK.unpack_from(blob)
    order, status_order, refs = _unblob_texts(blob)
    new = _times(row)
    row_order = _utf8(row["state_order"])
    newer = order < row_order
    if newer:
        order, facts = row_order, shared.get_shared(_facts_text(row))
    row_status_order = _utf8(row["status_order"])
    if status_order < row_status_order:
        status_order = row_status_order
        status = shared.get_shared(copy_field(row["status"]))
        resolved, resolved_zone, changed, changed_zone = new[_RESOLVED : _CHANGED + 2]
    if row["sets_assignee"] and (
        assigned is None or assigned[1] is None or assigned[1] < row["assignee_order"]
    ):
        assignee = row["assignee"]
        assigned = (None if assignee is None else _own(assignee.encoded), row["assignee_order"])
    new_refs = row["sentry"].encoded
    refs = _merge_refs(refs, new_refs) if newer else _merge_refs(new_refs, refs)
    # NULL is the value that loses (``_PACK``); the first of equal times stays, as min/max
    if new[_FIRST] < first:
        first, first_zone = new[_FIRST : _FIRST + 2]
    if new[_LAST] > last:
        last, last_zone = new[_LAST : _LAST + 2]
    if new[_OPENED] < opened:
        opened, opened_zone = new[_OPENED : _OPENED + 2]
    times = _PACK.pack(
        first,
        first_zone,
        last,
        last_zone,
        opened,
        opened_zone,
        resolved,
        resolved_zone,
        changed,
        changed_zone,
        max(count, new[_COUNT]),
    )
    return (key, _blob(times, order, status_order, refs), head, status, facts, assigned)


def _plain_ascii(data: bytes) -> bool:
    """ASCII without a tab, newline, carriage return or backslash (COPY text as it is)."""
    return (
        data.isascii()
        and b"\t" not in data
        and b"\\" not in data
        and b"\n" not in data
        and b"\r" not in data
    )


def incident_line(state: tuple[Any, ...]) -> bytes:
    key, blob, head, status, facts, assigned = state
    (
        first,
        first_zone,
        last,
        last_zone,
        opened,
        opened_zone,
        resolved,
        resolved_zone,
        changed,
        changed_zone,
        count,
    ) = _PACK.unpack_from(blob)
    order, status_order, refs = _unblob_texts(blob)
    assignee, assignee_order = assigned or (None, None)
    # the orders are incident_order keys (digits, dashes, hex), the id a uuid's text
    if not (
        _plain(key, 0)
        and _plain_ascii(order)
        and (status_order is order or _plain_ascii(status_order))
        and (assignee_order is None or _plain(assignee_order, 0))
    ):
        return _incident_line_slow(state)
    # in _incident_line_slow's order (an Unfoldable names the first time out of range); the
    # event's own time is most of them, written once
    resolved_text = _time_bytes(resolved, resolved_zone)
    if changed == resolved and changed_zone == resolved_zone:
        changed_text = resolved_text
    else:
        changed_text = _time_bytes(changed, changed_zone)
    opened_text = changed_text if opened == changed and opened_zone == changed_zone else None
    return b"\t".join(
        (
            key.encode(),
            head,
            status,
            facts,
            resolved_text,
            changed_text,
            changed_text,
            order,
            _NULL if assignee is None else _escape(assignee),
            _NULL if assignee_order is None else assignee_order.encode(),
            _escape(refs),
            _time_bytes(first, first_zone),
            _time_bytes(last, last_zone),
            _NULL if count == _LOW else b"%d" % count,
            opened_text or _time_bytes(opened, opened_zone),
            status_order + b"\n",
        )
    )


def _incident_line_slow(state: tuple[Any, ...]) -> bytes:
    t, order, status_order, refs = _unblob(state[_BLOB])
    assignee, assignee_order = state[_ASSIGNED] or (None, None)

    def at(i: int) -> bytes:
        return _time_text(t[i], t[i + 1]).encode()

    fields = [
        copy_field(state[_KEY]),
        state[_HEAD],
        state[_STATUS],
        state[_FACTS],
        at(_RESOLVED),
        at(_CHANGED),
        at(_CHANGED),
        copy_field(order.decode("utf-8", "surrogatepass")),
        _NULL if assignee is None else _escape(assignee),
        copy_field(assignee_order),
        _escape(refs),
        at(_FIRST),
        at(_LAST),
        _NULL if t[_COUNT] == _LOW else str(t[_COUNT]).encode(),
        at(_OPENED),
        copy_field(status_order.decode("utf-8", "surrogatepass")),
    ]
    return b"\t".join(fields) + b"\n"


@dataclass
class Batch:
    """What one batch of records gives at once: the append-only tables' lines."""

    timeline: bytes = b""
    audit: bytes = b""
    refused: int = 0  # records that are no event of the projection (the live one dead-letters them)


@dataclass
class Fold:
    """Records in log order (per partition) -> final rows. See the module docstring."""

    incidents: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # incident id -> [incident id + tenant (COPY text), the rest (COPY text), status, fetched_at]
    enrichments: dict[str, list[Any]] = field(default_factory=dict)
    # incident id -> [incident id + tenant (COPY text), the rest (COPY text), computed_at]
    suspects: dict[str, list[Any]] = field(default_factory=dict)
    links: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    shared: Shared = field(default_factory=Shared)

    @property
    def keys(self) -> int:
        """Distinct keys held: what the fold's memory grows with."""
        return len(self.incidents) + len(self.enrichments) + len(self.suspects) + len(self.links)

    def add(self, records: Sequence[Any]) -> Batch:
        rows = rows_for(list(records))
        incidents, shared = self.incidents, self.shared
        for row in rows.incidents:
            key = row["incident_id"]
            incidents[key] = fold_incident(incidents.get(key), row, shared)
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

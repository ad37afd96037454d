"""Pure: one poll batch's rows folded to one row per key, so each table takes one set-based merge.

A merge statement (``INSERT ... SELECT ... ON CONFLICT DO UPDATE``) may touch a row only once, so
the rows of one batch that share a key are combined here first, by the same rule the table's
conflict clause applies (``projection.TABLES``): applying the folded row to any stored row gives
what applying the batch's rows one by one, in log order, would. No I/O library; ``projection.py``
writes the result.

Each table of :class:`~blametrail_projector.rows.Rows` names its key columns and a ``combine``
``(kept, later) -> kept``: a new event kind that adds rows to an existing table needs nothing
here; a new table needs its rule (``test_fold`` fails for a table without one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import itemgetter
from typing import Any

from blametrail_projector.pgsafe import pg_jsonb
from blametrail_projector.rows import EncodedJson, Rows, merge_incident

__all__ = ["FOLDS", "Fold", "concat_rows", "fold_rows", "fold_table"]

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Fold:
    """How the rows of one table with equal ``key`` combine, earlier first."""

    key: tuple[str, ...]
    combine: Callable[[Row, Row], Row]


def _first(kept: Row, _later: Row) -> Row:
    """Insert-only tables (``ON CONFLICT DO NOTHING``): the first row wins."""
    return kept


def _latest_by(column: str) -> Callable[[Row, Row], Row]:
    """``... DO UPDATE ... WHERE cur.<column> <= EXCLUDED.<column>``: the greatest wins, a tie
    goes to the later row (it would replace the earlier one)."""

    def combine(kept: Row, later: Row) -> Row:
        return later if kept[column] <= later[column] else kept

    return combine


def _link(kept: Row, later: Row) -> Row:
    """``sentry_issue_links``: the first row's ``linked_at``, the last ``external_issue_id``, the
    last ``web_url`` that is not null."""
    web_url = later["web_url"] if later["web_url"] is not None else kept["web_url"]
    return {**kept, "external_issue_id": later["external_issue_id"], "web_url": web_url}


def _refs(value: Any) -> Any:
    # json, not orjson: integers past 64 bits load too
    return json.loads(value.encoded) if isinstance(value, EncodedJson) else value


def _incident(kept: Row, later: Row) -> Row:
    """``rows.merge_incident`` (what the incidents upsert does, in Python). Only the refs are
    merged key by key (decoded for that, unless both rows carry the very same bytes); the
    assignee is only picked, so it stays encoded."""
    same = kept["sentry"] == later["sentry"]
    refs = (
        (kept["sentry"], later["sentry"])
        if same
        else (_refs(kept["sentry"]), _refs(later["sentry"]))
    )
    out = merge_incident(
        {**kept, "sentry": {} if same else refs[0]}, {**later, "sentry": {} if same else refs[1]}
    )
    out["sentry"] = refs[0] if same else EncodedJson(pg_jsonb(out["sentry"])[0])
    # the folded row asks for the assignee of the latest assignment among its events, if any
    out["sets_assignee"] = out["assignee_order"] is not None
    return out


FOLDS: dict[str, Fold] = {
    "incidents": Fold(("incident_id",), _incident),
    "timeline": Fold(("event_id",), _first),
    "enriched": Fold(("incident_id",), _latest_by("fetched_at")),
    "failed": Fold(("incident_id",), _first),
    "audit": Fold(("event_id",), _first),
    "suspects": Fold(("incident_id",), _latest_by("computed_at")),
    "links": Fold(("incident_id", "connection_id", "sentry_issue_id"), _link),
}


def fold_table(rows: list[Row], fold: Fold) -> list[Row]:
    """``rows`` with one row per key (in the order each key first appears).

    Keys compare as Python values: a key Postgres would also equate but Python not (a uuid in
    upper case) stays two rows, which the merge then refuses as a whole ("cannot affect row a
    second time"), and the projection's record-by-record path applies them one at a time.
    """
    if len(rows) < 2:
        return rows
    key = itemgetter(*fold.key)
    out: dict[Any, Row] = {}
    for row in rows:
        k = key(row)
        kept = out.get(k)
        out[k] = row if kept is None else fold.combine(kept, row)
    return list(out.values()) if len(out) < len(rows) else rows


def fold_rows(rows: Rows) -> Rows:
    """A copy of ``rows`` with each table folded (``undecodable`` passes unchanged)."""
    folded = {
        f.name: fold_table(getattr(rows, f.name), FOLDS[f.name])
        for f in fields(rows)
        if f.name != "undecodable"
    }
    return Rows(**folded, undecodable=rows.undecodable)


def concat_rows(parts: list[Rows]) -> Rows:
    """The rows of ``parts``, table by table, in order."""
    if len(parts) == 1:
        return parts[0]
    out = Rows()
    for part in parts:
        for f in fields(out):
            getattr(out, f.name).extend(getattr(part, f.name))
    return out

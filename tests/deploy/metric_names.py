"""The metric names that the alerting rules and the Grafana dashboard read, and those the code declares.

Importable (``from metric_names import names_in_rules`` with ``tests/deploy`` on the path, or by
file) so that the fault suite can check the same names against the live ``/metrics`` of real
processes:

- ``metric_names(promql)``: the metric names one PromQL expression selects;
- ``names_in_rules()`` / ``names_in_dashboard()``: every name each alert, recording rule and panel
  uses (``{name: {where it is used}}``); ``recorded_names()``: the recording rules' own names;
- ``exposed_names(text)``: the sample names a Prometheus text exposition declares (every family,
  with or without samples yet);
- ``unexported(used, exposed)``: what is used but neither exposed, ``up`` nor recorded.

Also a command: ``python tests/deploy/metric_names.py rules OUT`` writes the PrometheusRule's
groups as a Prometheus rule file, for ``promtool check rules`` (``make k8s-validate``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/k8s/base/alerts.yaml"
DASHBOARD = ROOT / "deploy/k8s/base/dashboards/blametrail.json"
PROMETHEUS_OWN = frozenset({"up"})

# PromQL words that look like metric names: operators, modifiers, literals.
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
        "start",
        "end",
        "atan2",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z$_]+", re.IGNORECASE)
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][\w:]*)")


def metric_names(promql: str) -> set[str]:
    """The metric names ``promql`` selects (not functions, aggregations, labels or keywords).

    >>> sorted(metric_names('sum by (topic) (rate(x_total{job="a"}[5m])) > on (topic) y'))
    ['x_total', 'y']
    """
    names = set(_NAME_MATCHER.findall(promql))
    text = _STRING.sub('""', promql)
    text = _MATCHERS.sub(" ", text)  # label matchers: {group="x", topic=~"..."}
    text = _RANGE.sub(" ", text)  # ranges and subqueries: [5m], [$__rate_interval], [1h:1m]
    text = _GROUPING.sub(" ", text)  # by (...), on (...), group_left (...)
    text = _OFFSET.sub(" ", text)
    for name, call in _IDENT.findall(text):
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def prometheus_rule(path: Path = ALERTS) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert doc["kind"] == "PrometheusRule", path
    rule: dict[str, Any] = doc
    return rule


def rule_groups(path: Path = ALERTS) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = prometheus_rule(path)["spec"]["groups"]
    return groups


def _rule_label(rule: Mapping[str, Any]) -> str:
    if "alert" in rule:
        return f"alert {rule['alert']} ({rule.get('labels', {}).get('severity', '-')})"
    return f"record {rule['record']}"


def names_in_rules(path: Path = ALERTS) -> dict[str, set[str]]:
    """Every metric name the rules' expressions use: ``{name: {"alert X (sev)", ...}}``."""
    used: dict[str, set[str]] = {}
    for group in rule_groups(path):
        for rule in group["rules"]:
            for name in metric_names(str(rule["expr"])):
                used.setdefault(name, set()).add(_rule_label(rule))
    return used


def recorded_names(path: Path = ALERTS) -> set[str]:
    return {r["record"] for g in rule_groups(path) for r in g["rules"] if "record" in r}


def dashboard_exprs(dashboard: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """``(where, PromQL)`` of every panel target (rows' nested panels too) and query variable."""

    def panels(items: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield f"panel {p.get('title')!r}", str(t["expr"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, Mapping) else str(query or "")
            found = _LABEL_VALUES.match(text)  # label_values(metric, label): only the metric
            yield f"variable {var.get('name')!r}", found.group(1) if found else text


def names_in_dashboard(path: Path = DASHBOARD) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for where, expr in dashboard_exprs(json.loads(path.read_text())):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\w+)$", re.MULTILINE)
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exposed_names(exposition: str) -> set[str]:
    """Sample names a text exposition declares, from its ``# TYPE`` lines (a labelled metric
    whose children do not exist yet has no sample but is declared all the same)."""
    names = set()
    for name, kind in _TYPE_LINE.findall(exposition):
        names.add(name)
        names |= {name + suffix for suffix in _SUFFIXES.get(kind, ())}
    return names


def unexported(used: Iterable[str], exposed: set[str], recorded: set[str]) -> set[str]:
    """Names ``used`` that are neither ``exposed``, recorded by a rule, nor Prometheus' own."""
    return set(used) - exposed - recorded - PROMETHEUS_OWN


def write_rule_file(out: Path, path: Path = ALERTS) -> int:
    """The PrometheusRule's groups as a plain Prometheus rule file; returns the rule count."""
    groups = rule_groups(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return sum(len(g["rules"]) for g in groups)


if __name__ == "__main__":
    if sys.argv[1:2] != ["rules"] or len(sys.argv) != 3:
        raise SystemExit("usage: python tests/deploy/metric_names.py rules OUT")
    count = write_rule_file(Path(sys.argv[2]))
    print(f"{count} rules from {ALERTS.relative_to(ROOT)} -> {sys.argv[2]}")

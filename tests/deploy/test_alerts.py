"""When something does not heal, a person knows: the alerting rules and the dashboard.

The rules (``deploy/k8s/base/alerts.yaml``, a PrometheusRule) and the Grafana dashboard
(``deploy/k8s/base/dashboards/blametrail.json``) must cover what an operator watches and name
only metrics the services declare. PromQL itself is checked by ``promtool check rules`` in
``make k8s-validate``; the live ``/metrics`` of real processes by the fault suite, with the same
extractor (``metric_names.py``).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metric_names import (
    DASHBOARD,
    dashboard_exprs,
    exposed_names,
    metric_names,
    names_in_dashboard,
    names_in_rules,
    prometheus_rule,
    recorded_names,
    rule_groups,
    unexported,
)
from test_manifests import OVERLAYS, Obj, built, of_kind

# What an operator watches (issue 15): each needs a rule and a panel.
WATCHED = {
    "consumer lag": {"blametrail_consumer_lag"},
    "dead-letter growth": {
        "blametrail_dead_letters_total",
        "blametrail_projection_dead_letters_total",
    },
    "spool depth and age": {
        "blametrail_ingest_spool_bytes",
        "blametrail_ingest_spool_oldest_age_seconds",
    },
    "enrichment failures": {"blametrail_enrichments_total", "blametrail_enrichments_parked"},
    "a service not ready": {
        "blametrail_ready",
        "blametrail_dependency_up",
        "up",
        "blametrail_loop_restarts_total",
    },
    "the outbox not draining": {
        "blametrail_outbox_pending",
        "blametrail_outbox_oldest_age_seconds",
    },
    "ingest rejects and errors": {
        "blametrail_ingest_rejected_total",
        "blametrail_ingest_received_total",
        "blametrail_ingest_verified_total",
    },
}
SERVICE_PACKAGES = (
    "blametrail_common",
    "blametrail_ingest",
    "blametrail_mappings_api",
    "blametrail_normalizer",
    "blametrail_enricher",
    "blametrail_projector",
    "blametrail_suspects",
    "blametrail_reconciler",
    "blametrail_sync",
)


# --- the extractor --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("promql", "names"),
    [
        ("up == 0", {"up"}),
        ('up{namespace=~"blametrail(-.*)?"} == 0', {"up"}),
        (
            "sum by (namespace, group, topic) (max by (group, partition) (blametrail_consumer_lag))",
            {"blametrail_consumer_lag"},
        ),
        ("increase(blametrail_loop_restarts_total[15m]) > 3", {"blametrail_loop_restarts_total"}),
        (
            'sum(rate(a_total{outcome="failed"}[15m])) > 0.05 * sum(rate(a_total[15m]))',
            {"a_total"},
        ),
        ("x > 0 unless sum by (ns) (increase(y_total[2h])) > 0", {"x", "y_total"}),
        ("x:rec:sum > 100 and delta(x:rec:sum[15m]) >= 0", {"x:rec:sum"}),
        ("b > 0.8 * 536870912 or vector(1e3)", {"b"}),
        ("a / on (pod) group_left (node) b offset 5m", {"a", "b"}),
        ('max_over_time(g{l="by (x)"}[1h:1m]) and bool h', {"g", "h"}),
        ('{__name__="named_metric", job="j"}', {"named_metric"}),
        ('sum(rate(c_total{namespace=~"$namespace"}[$__rate_interval]))', {"c_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}),
        ("sum(z) without (instance)", {"z"}),
    ],
)
def test_metric_names_finds_metrics_and_nothing_else(promql: str, names: set[str]) -> None:
    assert metric_names(promql) == names


def test_dashboard_exprs_read_nested_panels_and_query_variables() -> None:
    dashboard = {
        "panels": [
            {"title": "a", "targets": [{"expr": "rate(a_total[5m])"}]},
            {"type": "row", "title": "r", "panels": [{"title": "b", "targets": [{"expr": "b"}]}]},
        ],
        "templating": {
            "list": [
                {"type": "datasource", "name": "ds", "query": "prometheus"},
                {"type": "query", "name": "ns", "query": {"query": "label_values(c, namespace)"}},
            ]
        },
    }
    assert list(dashboard_exprs(dashboard)) == [
        ("panel 'a'", "rate(a_total[5m])"),
        ("panel 'b'", "b"),
        ("variable 'ns'", "c"),
    ]


def test_exposed_names_include_declared_families_without_samples() -> None:
    text = (
        "# HELP d_total Records\n# TYPE d_total counter\n"  # labelled, no child yet
        "# HELP g Gauge\n# TYPE g gauge\ng 1.0\n"
        "# HELP h Seconds\n# TYPE h histogram\n"
    )
    assert exposed_names(text) == {"d_total", "g", "h", "h_bucket", "h_sum", "h_count"}
    assert unexported({"d_total", "up", "r:x", "missing"}, exposed_names(text), {"r:x"}) == {
        "missing"
    }


# --- coverage and form of the rules and the dashboard ---------------------------------------


@pytest.mark.parametrize("watch", sorted(WATCHED))
def test_every_watched_signal_has_a_rule_and_a_panel(watch: str) -> None:
    recorded = recorded_names()
    rules, panels = names_in_rules(), names_in_dashboard()
    alerts = {n for n, where in rules.items() if any(w.startswith("alert") for w in where)}
    # a name counts for the alerts when an alert reads it directly or through a recording rule
    via_records = {
        n
        for n, where in rules.items()
        if any(w.removeprefix("record ") in recorded & alerts for w in where)
    }
    assert WATCHED[watch] - alerts - via_records == set(), watch
    panel_names = set(panels) | {
        n for n, where in rules.items() if any(w.removeprefix("record ") in panels for w in where)
    }
    assert WATCHED[watch] - panel_names == set(), watch


def test_every_alert_has_severity_for_and_what_a_person_needs() -> None:
    problems = []
    for group in rule_groups():
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                problems.append(f"{name}: severity is not warning or critical")
            if "for" not in rule:
                problems.append(f"{name}: no for:")
            for key in ("summary", "description", "runbook"):
                if not rule.get("annotations", {}).get(key):
                    problems.append(f"{name}: no {key} annotation")
    assert problems == []


def test_alert_names_and_severities_are_unique() -> None:
    seen = [
        (r["alert"], r["labels"]["severity"])
        for g in rule_groups()
        for r in g["rules"]
        if "alert" in r
    ]
    assert len(seen) == len(set(seen))
    assert len({g["name"] for g in rule_groups()}) == len(rule_groups())


def test_the_rule_object_is_labelled_for_the_operator() -> None:
    rule = prometheus_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "blametrail"


# --- every name is declared by the code -----------------------------------------------------


def _import_service_modules() -> list[str]:
    failed = []
    for package in SERVICE_PACKAGES:
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            if module.name.rsplit(".", 1)[-1] == "__main__":
                continue  # entry points run on import
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # reported below: a module that cannot load exports nothing
                failed.append(f"{module.name}: {exc!r}")
    return failed


def _used_names() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for source in (names_in_rules(), names_in_dashboard()):
        for name, where in source.items():
            used.setdefault(name, set()).update(where)
    return used


def _name_params() -> list[object]:
    return [pytest.param(name, id=name) for name in sorted(_used_names())]


@pytest.fixture(scope="module")
def exposition() -> set[str]:
    assert _import_service_modules() == []
    return exposed_names(generate_latest(REGISTRY).decode())


@pytest.mark.parametrize("name", _name_params())
def test_every_rule_and_panel_metric_is_declared_by_the_services(
    name: str, exposition: set[str]
) -> None:
    used = _used_names()
    assert unexported({name}, exposition, recorded_names()) == set(), sorted(used[name])


def test_an_unknown_metric_name_is_caught(exposition: set[str]) -> None:
    used = {"blametrail_ready", "blametrail_readiness", "up", "blametrail:consumer_lag:sum"}
    assert unexported(used, exposition, recorded_names()) == {"blametrail_readiness"}


# --- shipped by kustomize ---------------------------------------------------------------------


@pytest.fixture(params=OVERLAYS)
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return built(request.param)


def test_rules_and_dashboard_are_in_every_overlay(objs: list[Obj]) -> None:
    (rule,) = of_kind(objs, "PrometheusRule")
    assert rule["spec"]["groups"] == rule_groups()
    (dashboard,) = [m for m in of_kind(objs, "ConfigMap") if "blametrail.json" in m["data"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["blametrail.json"]) == json.loads(DASHBOARD.read_text())

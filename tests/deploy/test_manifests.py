"""Deployment policies, read from the files: no Docker engine or cluster runs here.

The Kubernetes objects are what ``kustomize build`` makes of each overlay (the binary that
``make k8s-validate`` installs under ``.local/bin``; these tests fail if it is missing).
Schema validation is ``make k8s-validate``'s job (kubeconform); these tests assert the policies
a schema cannot: probes on the real endpoints, limits, non-root, secrets only by reference, the
topic manifests equal to the registry, and env var names that the settings classes read.
Each policy is a checker function returning problems, shown to catch a broken manifest.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import re
import shlex
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from blametrail_common.health import health_routes
from blametrail_common.k8s import kafka_topics_yaml, topics_drift
from blametrail_common.settings import (
    BaseBlametrailSettings,
    KafkaSettings,
    LogSettings,
    PostgresSettings,
    RunnerSettings,
    SecretsSettings,
)
from blametrail_common.topics import TOPICS
from blametrail_devstack.edge import upstream_for
from blametrail_devstack.services import EDGE_URL, SERVICES
from blametrail_enricher.settings import EnricherSettings
from blametrail_ingest.settings import IngestSettings
from blametrail_mappings_api.settings import ApiSettings, OAuthSettings, SentryUiSettings
from blametrail_normalizer.settings import NormalizerSettings
from blametrail_projector.settings import ProjectorSettings
from blametrail_reconciler.settings import ReconcilerSettings
from blametrail_replay.worker_settings import JobWorkerSettings
from blametrail_suspects.settings import SuspectsSettings
from blametrail_sync.settings import SyncSettings
from blametrail_web.app import page_routes
from blametrail_web.settings import WebSettings
from pydantic import AliasChoices, SecretStr
from starlette.routing import Match

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / ".local" / "bin" / "kustomize"
OVERLAYS = ("dev", "prod")
Obj = dict[str, Any]

# --- what the services read ----------------------------------------------------------------

COMMON: tuple[type[BaseBlametrailSettings], ...] = (KafkaSettings, LogSettings)
# Settings classes each entry module builds (see each __main__.py).
READS: dict[str, tuple[type[BaseBlametrailSettings], ...]] = {
    "blametrail_ingest": (*COMMON, IngestSettings, SecretsSettings),
    "blametrail_mappings_api": (
        *COMMON,
        ApiSettings,
        PostgresSettings,
        SecretsSettings,
        SentryUiSettings,
        OAuthSettings,
    ),
    "blametrail_normalizer": (*COMMON, NormalizerSettings),
    "blametrail_enricher": (*COMMON, EnricherSettings, SecretsSettings, RunnerSettings),
    "blametrail_projector": (
        *COMMON,
        ProjectorSettings,
        PostgresSettings,
        RunnerSettings,
    ),
    "blametrail_suspects": (*COMMON, SuspectsSettings, RunnerSettings),
    "blametrail_replay.worker": (*COMMON, JobWorkerSettings, PostgresSettings, RunnerSettings),
    # no Kafka, no Postgres, never the master key (SecretsSettings): its own signing key only
    "blametrail_web": (LogSettings, WebSettings),
    "blametrail_reconciler": (
        *COMMON,
        ReconcilerSettings,
        PostgresSettings,
        SecretsSettings,
        RunnerSettings,
    ),
    "blametrail_sync": (*COMMON, SyncSettings, PostgresSettings, SecretsSettings, RunnerSettings),
    "blametrail_common.cli db migrate": (LogSettings, PostgresSettings),
    "blametrail_common.cli topics ensure": (LogSettings, KafkaSettings),
}
# Defaults that are wrong in a container: loopback binds, the laptop's Kafka and Postgres, no
# Fernet key (the API and the enricher refuse to start), a spool under the working directory.
MUST_SET: dict[type[BaseBlametrailSettings], tuple[str, ...]] = {
    KafkaSettings: ("bootstrap_servers",),
    PostgresSettings: ("database_url",),
    SecretsSettings: ("secret_keys",),
    IngestSettings: ("host", "spool_dir"),
    ApiSettings: ("host", "trusted_proxies"),  # the default (loopback) trusts no proxy pod
    NormalizerSettings: ("host",),
    EnricherSettings: ("host",),
    ProjectorSettings: ("host",),
    SuspectsSettings: ("host",),
    JobWorkerSettings: ("host",),
    WebSettings: ("host", "api_url", "secret_key", "trusted_proxies"),
    ReconcilerSettings: ("host",),
    SyncSettings: ("host",),
}
ALL_SETTINGS = {cls for classes in READS.values() for cls in classes}


def field_aliases(cls: type[BaseBlametrailSettings], field: str) -> set[str]:
    """Environment variable names that set ``cls.field``."""
    info = cls.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, str):
        return {alias}
    if isinstance(alias, AliasChoices):
        return {a for a in alias.choices if isinstance(a, str)}
    return {f"{cls.model_config.get('env_prefix', '')}{field}".upper()}


def known_env_names(classes: set[type[BaseBlametrailSettings]] = ALL_SETTINGS) -> set[str]:
    return {n for cls in classes for f in cls.model_fields for n in field_aliases(cls, f)}


def secret_env_names() -> set[str]:
    """Variables whose values are secrets: SecretStr fields, and DSNs (they carry passwords)."""
    names = field_aliases(PostgresSettings, "database_url")
    for cls in ALL_SETTINGS:
        for f, info in cls.model_fields.items():
            if info.annotation is SecretStr:
                names |= field_aliases(cls, f)
    return names


def entry(args: list[str]) -> str:
    """The READS key of a container's command (``python -m <module> [args]``)."""
    return " ".join(args[:3]) if args and args[0] == "blametrail_common.cli" else " ".join(args[:1])


def missing_settings(command: str, provided: set[str]) -> list[str]:
    """Settings ``command`` needs (required fields and MUST_SET) that ``provided`` leaves unset."""
    problems = []
    for cls in READS[command]:
        needed = [f for f, info in cls.model_fields.items() if info.is_required()]
        for f in (*needed, *MUST_SET.get(cls, ())):
            if not field_aliases(cls, f) & provided:
                problems.append(f"{command}: {cls.__name__}.{f} not provided")
    return problems


def unknown_env_names(names: set[str]) -> list[str]:
    return [f"{n} is read by no settings class" for n in sorted(names - known_env_names())]


# --- Kubernetes objects ---------------------------------------------------------------------


@functools.cache
def _build(overlay: str) -> tuple[Obj, ...]:
    assert KUSTOMIZE.exists(), f"{KUSTOMIZE} missing: `make k8s-validate` installs it"
    out = subprocess.run(
        [str(KUSTOMIZE), "build", str(ROOT / "deploy/k8s/overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def built(overlay: str) -> list[Obj]:
    return copy.deepcopy(list(_build(overlay)))


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def deployment(objs: list[Obj], name: str) -> Obj:
    (found,) = [d for d in of_kind(objs, "Deployment") if d["metadata"]["name"] == name]
    return found


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def all_containers(workload: Obj) -> Iterator[tuple[str, Obj]]:
    spec = pod_spec(workload)
    for kind in ("initContainers", "containers"):
        for c in spec.get(kind, []):
            yield kind, c


def container_env(objs: list[Obj], c: Obj) -> dict[str, Obj]:
    """Every variable a container gets: ConfigMaps through envFrom, then its own env."""
    maps = {m["metadata"]["name"]: m.get("data", {}) for m in of_kind(objs, "ConfigMap")}
    env: dict[str, Obj] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(
                {k: {"name": k, "value": v} for k, v in maps[src["configMapRef"]["name"]].items()}
            )
    env.update({e["name"]: e for e in c.get("env", [])})
    return env


def _probe_problems(name: str, c: Obj) -> list[str]:
    ports = {p.get("name") for p in c.get("ports", [])} | {
        p["containerPort"] for p in c.get("ports", [])
    }
    problems = []
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = c.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"{name}: no {probe} (httpGet)")
        elif get.get("path") != path or get.get("port") not in ports:
            problems.append(f"{name}: {probe} is not GET {path} on a container port")
    return problems


# How the services answer their probes (libs/common health.py, each __main__.py): /healthz is
# 200 while the process serves HTTP, whatever its dependencies; /readyz is 503 while one is away
# and runs its checks with READINESS_CHECK_TIMEOUT_S each. A consumer serves both at once on
# start; ingest binds its port only once its connections table has loaded, or after
# BLAMETRAIL_INGEST_STARTUP_WAIT_S when Kafka is away at start.
READINESS_CHECK_TIMEOUT_S = inspect.signature(health_routes).parameters["timeout_s"].default
START_S = 30.0  # imports, settings, binding: what any service needs before /healthz answers
LIVENESS_WINDOW_S = 30.0  # a busy event loop (a large batch, a GC pause) is not a dead process


def probe_window(probe: Obj) -> float:
    """Seconds from the first failed answer until Kubernetes acts (Kubernetes' defaults)."""
    period, failures = probe.get("periodSeconds", 10), probe.get("failureThreshold", 3)
    return float(probe.get("initialDelaySeconds", 0) + period * failures)


def startup_needs_s(command: str, env: dict[str, Obj]) -> float:
    """How long ``command`` may take to answer /healthz after it starts."""
    if command == "blametrail_ingest":
        wait = env.get("BLAMETRAIL_INGEST_STARTUP_WAIT_S", {}).get("value")
        default = IngestSettings.model_fields["startup_wait_s"].default
        return START_S + (float(wait) if wait is not None else default)
    return START_S


def probe_timing_problems(name: str, c: Obj, env: dict[str, Obj]) -> list[str]:
    """Thresholds that match the services: a dependency away takes a pod out of rotation
    (readiness) but never gets it restarted (liveness and startup only read /healthz, and
    tolerate a slow answer); startup waits as long as the service may take to bind."""
    startup, live, ready = (
        c.get(k, {}) for k in ("startupProbe", "livenessProbe", "readinessProbe")
    )
    problems = []
    needs = startup_needs_s(entry(c.get("args", [])), env)
    if startup and probe_window(startup) < needs:
        problems.append(
            f"{name}: startupProbe gives {probe_window(startup):.0f} s, the service may need {needs:.0f} s"
        )
    if live and probe_window(live) < LIVENESS_WINDOW_S:
        problems.append(
            f"{name}: livenessProbe restarts after {probe_window(live):.0f} s of slow answers"
            f" (< {LIVENESS_WINDOW_S:.0f} s)"
        )
    if live and live.get("timeoutSeconds", 1) < 2:
        problems.append(f"{name}: livenessProbe timeout under 2 s")
    if ready and ready.get("timeoutSeconds", 1) <= READINESS_CHECK_TIMEOUT_S:
        problems.append(
            f"{name}: readinessProbe times out before /readyz's own checks do"
            f" ({READINESS_CHECK_TIMEOUT_S} s): a slow dependency would read as a dead probe"
        )
    if live and ready and probe_window(ready) > probe_window(live):
        problems.append(f"{name}: liveness acts before readiness takes the pod out of rotation")
    for probe in ("startupProbe", "livenessProbe"):
        if c.get(probe, {}).get("httpGet", {}).get("path") == "/readyz":
            problems.append(f"{name}: {probe} on /readyz restarts a pod whose dependency is away")
    return problems


def _security_problems(name: str, c: Obj, pod: Obj) -> list[str]:
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    problems = []
    if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        problems.append(f"{name}: runAsNonRoot is not true")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation is not false")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"{name}: capabilities do not drop ALL")
    seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
    if seccomp.get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccompProfile is not RuntimeDefault")
    return problems


def container_problems(workload: Obj) -> list[str]:
    """Probes (long-running containers), requests/limits and the security context, per container."""
    pod, problems = pod_spec(workload), []
    for kind, c in all_containers(workload):
        name = f"{workload['metadata']['name']}/{c['name']}"
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part, {})):
                problems.append(f"{name}: {part} lack cpu or memory")
        problems += _security_problems(name, c, pod)
        if workload["kind"] == "Deployment" and kind == "containers":
            problems += _probe_problems(name, c)
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{workload['metadata']['name']}: service account token mounted")
    if pod.get("enableServiceLinks") is not False:
        problems.append(
            f"{workload['metadata']['name']}: service links would shadow BLAMETRAIL_*_PORT"
        )
    return problems


def secret_problems(objs: list[Obj]) -> list[str]:
    """Secrets appear only as references: no Secret objects, no secret value in env or ConfigMaps."""
    secret_names, problems = secret_env_names(), []
    for o in objs:
        if o["kind"] == "Secret":
            problems.append(f"Secret {o['metadata']['name']} carries values in the manifests")
        if o["kind"] == "ConfigMap":
            problems += [
                f"ConfigMap holds secret {k}" for k in o.get("data", {}) if k in secret_names
            ]
    for w in workloads(objs):
        for _, c in all_containers(w):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if e["name"] in secret_names and (ref is None or "value" in e):
                    problems.append(
                        f"{w['metadata']['name']}/{c['name']}: {e['name']} is not a secretKeyRef"
                    )
    return problems


# --- the policies ---------------------------------------------------------------------------


@pytest.fixture(params=OVERLAYS)
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return built(request.param)


def test_every_container_has_probes_limits_and_a_locked_down_security_context(
    objs: list[Obj],
) -> None:
    assert workloads(objs)
    assert [p for w in workloads(objs) for p in container_problems(w)] == []


def test_container_checker_catches_a_broken_deployment() -> None:
    ingest = deployment(built("prod"), "blametrail-ingest")
    c = pod_spec(ingest)["containers"][0]
    del c["resources"]["limits"]
    c["securityContext"] = {"capabilities": {"drop": ["NET_RAW"]}}
    pod_spec(ingest)["securityContext"] = {}
    c["readinessProbe"]["httpGet"]["path"] = "/"
    del c["livenessProbe"]
    problems = "\n".join(container_problems(ingest))
    for expected in (
        "limits lack",
        "runAsNonRoot",
        "readOnlyRootFilesystem",
        "drop ALL",
        "RuntimeDefault",
        "readinessProbe is not GET /readyz",
        "no livenessProbe",
    ):
        assert expected in problems


def test_probe_thresholds_match_how_the_services_answer(objs: list[Obj]) -> None:
    problems = []
    for d in of_kind(objs, "Deployment"):
        for c in pod_spec(d)["containers"]:
            name = f"{d['metadata']['name']}/{c['name']}"
            problems += probe_timing_problems(name, c, container_env(objs, c))
    assert problems == []


@pytest.mark.tools
def test_probe_timing_checker_catches_probes_that_would_restart_or_flap() -> None:
    objs = built("prod")
    c = pod_spec(deployment(objs, "blametrail-ingest"))["containers"][0]
    env = {**container_env(objs, c), "BLAMETRAIL_INGEST_STARTUP_WAIT_S": {"value": "60"}}
    c["livenessProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}, "failureThreshold": 1}
    c["readinessProbe"].update(timeoutSeconds=1, periodSeconds=30)
    problems = "\n".join(probe_timing_problems("ingest", c, env))
    for expected in (
        "startupProbe gives 60 s, the service may need 90 s",
        "livenessProbe restarts after 10 s",
        "livenessProbe timeout under 2 s",
        "readinessProbe times out before /readyz's own checks",
        "liveness acts before readiness",
        "livenessProbe on /readyz restarts a pod whose dependency is away",
    ):
        assert expected in problems
    consumer = pod_spec(deployment(objs, "blametrail-enricher"))["containers"][0]
    assert probe_timing_problems("enricher", consumer, container_env(objs, consumer)) == []


def test_healthz_stays_up_while_readyz_reports_a_dependency_away() -> None:
    """What the probes rely on: liveness never depends on a dependency, readiness names it."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    async def away() -> bool:
        return False

    async def fine() -> bool:
        return True

    app = Starlette(routes=health_routes({"kafka": away, "postgres": fine}))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"kafka": False, "postgres": True}


def test_secrets_are_references_never_values(objs: list[Obj]) -> None:
    assert secret_problems(objs) == []


def test_secret_checker_catches_a_value_and_a_secret_object() -> None:
    objs = built("prod")
    api = deployment(objs, "blametrail-mappings-api")
    env = pod_spec(api)["containers"][0]["env"]
    env.append({"name": "BLAMETRAIL_SECRET_KEYS", "value": "not-a-reference"})
    objs.append({"kind": "Secret", "metadata": {"name": "oops"}, "stringData": {"k": "v"}})
    problems = "\n".join(secret_problems(objs))
    assert "BLAMETRAIL_SECRET_KEYS is not a secretKeyRef" in problems
    assert "Secret oops" in problems


def test_env_names_exist_in_settings_and_needed_settings_are_provided(objs: list[Obj]) -> None:
    for w in workloads(objs):
        for _, c in all_containers(w):
            env = container_env(objs, c)
            assert unknown_env_names(set(env)) == [], w["metadata"]["name"]
            assert missing_settings(entry(c["args"]), set(env)) == [], w["metadata"]["name"]


def test_env_checkers_catch_a_typo_and_a_missing_setting() -> None:
    assert unknown_env_names({"BLAMETRAIL_INGEST_SPOOL_DIRECTORY", "DATABASE_URL"}) == [
        "BLAMETRAIL_INGEST_SPOOL_DIRECTORY is read by no settings class"
    ]
    problems = missing_settings("blametrail_mappings_api", {"KAFKA_BOOTSTRAP_SERVERS"})
    assert "blametrail_mappings_api: PostgresSettings.database_url not provided" in problems
    assert missing_settings("blametrail_normalizer", {"BLAMETRAIL_KAFKA_BOOTSTRAP_SERVERS"}) == [
        "blametrail_normalizer: NormalizerSettings.host not provided"
    ]


def test_every_service_runs_on_the_port_make_up_uses(objs: list[Obj]) -> None:
    ports = {s.module: s.port for s in SERVICES if s.port is not None and not s.dev_only}
    deployments = of_kind(objs, "Deployment")
    assert sorted(entry(pod_spec(d)["containers"][0]["args"]) for d in deployments) == sorted(ports)
    for d in deployments:
        c = pod_spec(d)["containers"][0]
        port = ports[entry(c["args"])]
        assert [p["containerPort"] for p in c["ports"]] == [port]
        port_vars = [e for e in container_env(objs, c).values() if e["name"].endswith("_PORT")]
        assert [e["value"] for e in port_vars] == [str(port)]
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_graceful_termination_outlasts_the_shutdown(objs: list[Obj]) -> None:
    for d in of_kind(objs, "Deployment"):
        pod = pod_spec(d)
        c = pod["containers"][0]
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        # uvicorn's graceful shutdown is 10 s (ingest, mappings-api); consumers commit a batch.
        assert pod["terminationGracePeriodSeconds"] >= sleep + 10 + 5, d["metadata"]["name"]


CANCELLED_BATCH_S = 10.0  # blametrail_common.runner: a cancelled loop gets 10 s, then a hard exit
INGEST_STOP_S = 10 + 5 + 10  # uvicorn's graceful shutdown, the spool drain, the producer's stop


def shutdown_bound_s(command: str, env: dict[str, Obj]) -> float | None:
    """The longest ``command`` takes to exit after SIGTERM, by its own bounds (None: unbounded)."""
    if RunnerSettings in READS.get(command, ()):
        grace = env.get("BLAMETRAIL_SHUTDOWN_GRACE_S", {}).get("value")
        default = RunnerSettings.model_fields["shutdown_grace_s"].default
        return (float(grace) if grace is not None else default) + CANCELLED_BATCH_S
    if command == "blametrail_ingest":
        return INGEST_STOP_S
    return None


def test_the_pod_outlasts_the_process_own_shutdown_bound(objs: list[Obj]) -> None:
    """A pod killed before the process's own bound cuts the batch or the spool drain short."""
    checked = 0
    for d in of_kind(objs, "Deployment"):
        pod = pod_spec(d)
        c = pod["containers"][0]
        bound = shutdown_bound_s(entry(c["args"]), container_env(objs, c))
        if bound is None:
            continue
        checked += 1
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert pod["terminationGracePeriodSeconds"] >= sleep + bound + 5, d["metadata"]["name"]
    assert checked == 7  # ingest, enricher, projector, suspects, replay-jobs, reconciler, sync


def test_writable_paths_are_volumes(objs: list[Obj]) -> None:
    for w in workloads(objs):
        volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
        for _, c in all_containers(w):
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts
            env = container_env(objs, c)
            for path in (
                c.get("workingDir"),
                env.get("BLAMETRAIL_INGEST_SPOOL_DIR", {}).get("value"),
            ):
                if path is not None:
                    assert "emptyDir" in volumes[mounts[path]], (w["metadata"]["name"], path)


def test_ingest_spool_is_an_empty_dir_that_holds_the_spool_bound(objs: list[Obj]) -> None:
    ingest = deployment(objs, "blametrail-ingest")
    c = pod_spec(ingest)["containers"][0]
    env = container_env(objs, c)
    spool = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}[
        env["BLAMETRAIL_INGEST_SPOOL_DIR"]["value"]
    ]
    volume = next(v for v in pod_spec(ingest)["volumes"] if v["name"] == spool)
    limit = volume["emptyDir"]["sizeLimit"]
    assert re.fullmatch(r"\d+Mi", limit)
    assert int(limit[:-2]) * 2**20 > int(env["BLAMETRAIL_INGEST_SPOOL_MAX_BYTES"]["value"])


def test_ingest_scales_and_is_protected(objs: list[Obj]) -> None:
    (hpa,) = of_kind(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "blametrail-ingest"
    kinds = {
        (m["type"], (m.get("resource") or m["pods"]["metric"])["name"])
        for m in hpa["spec"]["metrics"]
    }
    assert ("Resource", "cpu") in kinds
    assert any(t == "Pods" and "ingest" in n for t, n in kinds)
    pdbs = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in of_kind(objs, "PodDisruptionBudget")
    }
    assert "ingest" in pdbs


@pytest.mark.tools
def test_prod_runs_at_least_two_ingest_replicas() -> None:
    objs = built("prod")
    (hpa,) = of_kind(objs, "HorizontalPodAutoscaler")
    ingest = deployment(objs, "blametrail-ingest")
    assert hpa["spec"]["minReplicas"] >= 2
    assert ingest["spec"]["replicas"] >= 2


def test_ingress_routes_webhooks_to_ingest_and_the_rest_to_the_api(objs: list[Obj]) -> None:
    (ingress,) = of_kind(objs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert routes == {
        "/webhooks/sentry": "blametrail-ingest",
        "/sentry": "blametrail-mappings-api",
        "/integrations/sentry": "blametrail-mappings-api",
        "/api": "blametrail-mappings-api",
        "/": "blametrail-web",
    }


def test_network_policies_select_every_pod(objs: list[Obj]) -> None:
    policies = of_kind(objs, "NetworkPolicy")
    deny = next(p for p in policies if p["metadata"]["name"] == "blametrail-default-deny")
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    own = {p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/name") for p in policies}
    for w in workloads(objs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert deny["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/name"] in own


# --- topics ---------------------------------------------------------------------------------


def test_committed_kafka_topics_equal_the_registry() -> None:
    assert topics_drift(ROOT / "deploy/k8s/base/kafka-topics.yaml") == ""


def test_drift_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "kafka-topics.yaml"
    assert "missing" in topics_drift(path)
    path.write_text(kafka_topics_yaml().replace("partitions: 6", "partitions: 3", 1))
    assert "differs" in topics_drift(path)


def test_built_kafka_topics_carry_the_registry(objs: list[Obj]) -> None:
    topics = {t["metadata"]["name"]: t["spec"] for t in of_kind(objs, "KafkaTopic")}
    assert sorted(topics) == sorted(t.name for t in TOPICS)
    for t in TOPICS:
        spec = topics[t.name]
        assert spec["topicName"] == t.name
        assert spec["partitions"] == t.partitions
        assert spec["replicas"] >= t.replication_factor
        assert t.config().items() <= spec["config"].items()


# --- docker-compose.yml, .env.example, Dockerfile -------------------------------------------


def _dotenv(path: Path) -> dict[str, str]:
    pairs = (
        ln.split("=", 1) for ln in path.read_text().splitlines() if ln and not ln.startswith("#")
    )
    return {k: v for k, v in pairs}


def compose() -> Obj:
    data: Obj = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def our_services() -> dict[str, Obj]:
    return {n: s for n, s in compose()["services"].items() if s.get("image") == "blametrail:local"}


def test_env_example_names_exist_in_settings() -> None:
    assert unknown_env_names(set(_dotenv(ROOT / ".env.example"))) == []


def test_compose_services_get_known_settings_and_everything_they_need() -> None:
    example = _dotenv(ROOT / ".env.example")
    for name, svc in our_services().items():
        files = [f["path"] if isinstance(f, dict) else f for f in svc["env_file"]]
        assert files[0] == ".env.example", name
        env = set(example) | set(svc.get("environment", {}))
        assert unknown_env_names(env) == [], name
        if name != "init":
            assert missing_settings(entry(svc["command"]), env) == [], name


def test_the_public_facing_web_is_never_given_the_master_key(objs: list[Obj]) -> None:
    """Issue 17 M4: the web signs with its own BLAMETRAIL_WEB_SECRET_KEY (its own Secret);
    BLAMETRAIL_SECRET_KEYS decrypts every organization's Sentry tokens and stays off it."""
    web = next(w for w in workloads(objs) if w["metadata"]["name"] == "blametrail-web")
    (_, container), *_ = all_containers(web)
    env = {e["name"]: e for e in container.get("env", [])}
    assert "BLAMETRAIL_SECRET_KEYS" not in env
    ref = env["BLAMETRAIL_WEB_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] != "blametrail-secrets"
    compose_env = our_services()["web"]["environment"]
    assert compose_env["BLAMETRAIL_SECRET_KEYS"] == ""  # blanks what env_file (.env) would give
    assert "BLAMETRAIL_WEB_SECRET_KEY" in compose_env
    web_spec = next(s for s in SERVICES if s.module == "blametrail_web")
    assert web_spec.env["BLAMETRAIL_SECRET_KEYS"] == ""  # make up: blanks stack.env's


def test_the_web_lets_connect_with_sentry_redirect_where_the_api_sends_it(
    objs: list[Obj],
) -> None:
    """The "Connect with Sentry" form redirects through the API's public ingest URL to Sentry's
    install page; browsers hold redirects to the form's CSP form-action. So wherever the web runs
    it reads the same BLAMETRAIL_PUBLIC_INGEST_URL and BLAMETRAIL_SENTRY_URL as the API."""
    names = ("BLAMETRAIL_PUBLIC_INGEST_URL", "BLAMETRAIL_SENTRY_URL")

    def k8s_env(name: str) -> dict[str, Obj]:
        (container, *_) = pod_spec(deployment(objs, name))["containers"]
        return container_env(objs, container)

    web, api = k8s_env("blametrail-web"), k8s_env("blametrail-mappings-api")
    for var in names:
        assert web[var]["value"] == api[var]["value"], var
    web_spec = next(s for s in SERVICES if s.module == "blametrail_web")
    api_spec = next(s for s in SERVICES if s.module == "blametrail_mappings_api")
    for var in names:  # make up: the edge and the stand-in
        assert web_spec.env[var] == api_spec.env[var], var
    services = our_services()
    for var in names:  # compose: both from .env (env_file), overridden by neither
        assert var not in services["web"].get("environment", {}), var
        assert var not in services["mappings-api"].get("environment", {}), var
    assert services["web"]["env_file"] == services["mappings-api"]["env_file"]


def incident_links(api: Mapping[str, str], enricher: Mapping[str, str]) -> dict[str, str]:
    """The link a Sentry issue shows for its incident, as each side builds it from its
    environment: the API's issue-link answer (``BLAMETRAIL_API_INCIDENT_URL``, else the page on
    the public URL: ``ui_components.ui_routes``) and the external issue the enricher makes."""
    public = api.get(
        "BLAMETRAIL_PUBLIC_INGEST_URL", ApiSettings.model_fields["public_ingest_url"].default
    )
    return {
        "api": api.get("BLAMETRAIL_API_INCIDENT_URL")
        or f"{public.rstrip('/')}/incidents/{{incident_id}}",
        "enricher": enricher.get(
            "BLAMETRAIL_ENRICHER_INCIDENT_URL",
            EnricherSettings.model_fields["incident_url"].default,
        ),
    }


def web_page(link: str) -> str | None:
    """The web's route (its path) that ``link``, an incident's filled in, opens; None: no page."""
    path = urlsplit(link.replace("{incident_id}", str(uuid.uuid4()))).path
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    for route in page_routes():
        if route.matches(scope)[0] is Match.FULL:
            return str(getattr(route, "path", None))
    return None


def test_the_link_on_a_sentry_issue_opens_the_incident_page(objs: list[Obj]) -> None:
    """A person follows it from Sentry: in every deployment it must reach the web's incident
    page (not the API's JSON), on the host the person reaches."""
    page = "/incidents/{id}"

    def k8s_env(name: str) -> dict[str, str]:
        (container, *_) = pod_spec(deployment(objs, name))["containers"]
        return {k: e["value"] for k, e in container_env(objs, container).items() if "value" in e}

    (ingress,) = of_kind(objs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    prefixes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    links = incident_links(k8s_env("blametrail-mappings-api"), k8s_env("blametrail-enricher"))
    for side, link in links.items():
        url = urlsplit(link)
        served_by = prefixes[max((p for p in prefixes if url.path.startswith(p)), key=len)]
        assert (url.scheme, url.netloc, served_by) == ("https", rule["host"], "blametrail-web")
        assert web_page(link) == page, side

    specs = {s.module: s.env for s in SERVICES}  # make up: through the edge
    links = incident_links(specs["blametrail_mappings_api"], specs["blametrail_enricher"])
    for side, link in links.items():
        url = urlsplit(link)
        assert url.netloc == urlsplit(EDGE_URL).netloc, side
        assert upstream_for(url.path, "ingest", "api", "web") == "web", side
        assert web_page(link) == page, side

    example, services = _dotenv(ROOT / ".env.example"), our_services()  # compose: no edge
    env = {n: {**example, **services[n].get("environment", {})} for n in services}
    (web_port,) = services["web"]["ports"]
    for side, link in incident_links(env["mappings-api"], env["enricher"]).items():
        assert web_port.startswith(f"{urlsplit(link).netloc}:"), side
        assert web_page(link) == page, side

    assert web_page("http://127.0.0.1:8082/api/v1/incidents/{incident_id}") is None  # the JSON


def test_compose_ports_healthchecks_and_start_order_match_make_up() -> None:
    ports = {s.module: s.port for s in SERVICES if s.port is not None and not s.dev_only}
    services = compose()["services"]
    for dep in ("kafka", "postgres"):
        assert services[dep]["healthcheck"]["test"]
        assert services[dep]["volumes"]
    init = services["init"]
    assert init["restart"] == "no"
    assert "blametrail topics ensure" in init["command"][0]
    assert "blametrail db migrate" in init["command"][0]
    long_running = {n: s for n, s in our_services().items() if n != "init"}
    assert sorted(entry(s["command"]) for s in long_running.values()) == sorted(ports)
    for name, svc in long_running.items():
        port = ports[entry(svc["command"])]
        assert svc["ports"] == [f"127.0.0.1:{port}:{port}"], name
        assert f"127.0.0.1:{port}/readyz" in " ".join(svc["healthcheck"]["test"]), name
        assert svc["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "init": {"condition": "service_completed_successfully"},
        }, name


def _dockerfile_stages() -> list[list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if stages and line.strip() and not line.startswith("#"):
            stages[-1].append(line.strip())
    return stages


def test_dockerfile_is_multi_stage_locked_non_root_with_tini_and_a_healthcheck() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    build = " ".join(stages[0])
    final = stages[-1]
    syncs = re.findall(r"uv sync[^&]*", build)
    assert syncs
    assert all("--frozen" in s and "--no-dev" in s for s in syncs)
    assert not any(re.search(r"build-essential|gcc|pip install", ln) for ln in final)
    (user,) = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    assert user.split(":")[0] not in ("0", "root")
    (healthcheck,) = [ln for ln in final if ln.startswith("HEALTHCHECK ")]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")  # the probe's code is valid Python
    assert "/healthz" in command[2]
    (entrypoint,) = [ln for ln in final if ln.startswith("ENTRYPOINT ")]
    assert "tini" in entrypoint


def test_dockerfile_env_names_exist_in_settings() -> None:
    final = " ".join(ln for ln in _dockerfile_stages()[-1] if ln.startswith("ENV "))
    names = {w.split("=", 1)[0] for w in shlex.split(final) if "=" in w}
    ours = {n for n in names if n.startswith("BLAMETRAIL_")}
    assert ours
    assert unknown_env_names(ours) == []

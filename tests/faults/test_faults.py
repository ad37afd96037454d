"""One fault at a time while signed webhooks flow, then recovery with no person involved.

For each fault: a steady flow of signed webhooks for distinct Sentry issues (every issue is
created, every fourth is resolved two seconds later) through ingest, the fault mid-flow, then
exact counts in Postgres once the stack has converged: every acknowledged webhook is one
incident or one state change, nothing twice (timeline rows per incident between the
acknowledged and the sent webhooks), every incident enriched, no valid webhook answered 4xx,
every service ready again. Refused connections (ingest down) count as not acknowledged, as
Sentry would see them. The time from the end of the fault to convergence is recorded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from blametrail_common.signature import sign
from blametrail_common.testing import signed_fixture
from blametrail_devstack.faultstack import CLIENT_SECRET, Stack
from blametrail_devstack.services import ServiceSpec, service_pid, start_all, stop_all
from blametrail_devstack.stack import free_port

pytestmark = pytest.mark.integration

RATE = 50  # creations per second
SECONDS = 6.0  # of creations
FAULT_AT = 2.0  # seconds into the flow
RESOLVE_EVERY, RESOLVE_AFTER = 4, 2.0
CONVERGE_TIMEOUT_S = 150.0
_issue_base = itertools.count(7_100_000_000, 100_000)

ISSUE_ID = b"5912345678"
CREATED, _ = signed_fixture("issue.created")
RESOLVED, _ = signed_fixture("issue.resolved")
assert ISSUE_ID in CREATED
assert ISSUE_ID in RESOLVED

Fault = Callable[[Stack], Awaitable[None]]


@dataclass
class Sent:
    issue: str
    action: str
    status: int | str = "pending"  # HTTP status, or the transport error's name

    @property
    def acked(self) -> bool:
        return isinstance(self.status, int) and 200 <= self.status < 300


@dataclass
class Outcome:
    sent: list[Sent] = field(default_factory=list)
    fault_ended: float = 0.0


def _webhook(kind: str, issue: str) -> tuple[bytes, dict[str, str]]:
    body = (CREATED if kind == "created" else RESOLVED).replace(ISSUE_ID, issue.encode())
    headers = {
        "Content-Type": "application/json",
        "Request-ID": f"{kind}-{issue}",
        "Sentry-Hook-Resource": "issue",
        "Sentry-Hook-Timestamp": str(int(time.time())),
        "Sentry-Hook-Signature": sign(body, CLIENT_SECRET),
    }
    return body, headers


async def _flow(stack: Stack, fault: Fault) -> Outcome:
    """Creations at RATE/s for SECONDS, resolutions after RESOLVE_AFTER; ``fault`` at FAULT_AT."""
    base = next(_issue_base)
    out = Outcome()
    plan: list[tuple[float, str, str]] = []
    for i in range(int(RATE * SECONDS)):
        at, issue = i / RATE, str(base + i)
        plan.append((at, "created", issue))
        if i % RESOLVE_EVERY == 0:
            plan.append((at + RESOLVE_AFTER, "resolved", issue))
    plan.sort()

    async def post(client: httpx.AsyncClient, item: Sent) -> None:
        body, headers = _webhook(item.action, item.issue)
        try:
            resp = await client.post(stack.webhook_url, content=body, headers=headers)
            item.status = resp.status_code
        except httpx.HTTPError as exc:
            item.status = type(exc).__name__

    async def inject() -> None:
        await asyncio.sleep(FAULT_AT)
        await fault(stack)
        out.fault_ended = time.monotonic()

    # idle connections expire before the server drops them (uvicorn: 5 s), as a sender should
    limits = httpx.Limits(max_connections=64, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=5, limits=limits) as client:
        faulting = asyncio.create_task(inject())
        began, posts = time.monotonic(), []
        for at, action, issue in plan:
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            item = Sent(issue, action)
            out.sent.append(item)
            posts.append(asyncio.create_task(post(client, item)))
        await asyncio.gather(*posts)
        await faulting
    return out


def _expectations(out: Outcome) -> tuple[set[str], set[str], dict[str, tuple[int, int]]]:
    """Issues that must have an incident, those that must be resolved, and per issue the
    (acknowledged, sent) webhook counts that bound its timeline rows."""
    must_exist = {s.issue for s in out.sent if s.acked}
    must_resolve = {s.issue for s in out.sent if s.acked and s.action == "resolved"}
    bounds: dict[str, tuple[int, int]] = {}
    for s in out.sent:
        acked, sent = bounds.get(s.issue, (0, 0))
        bounds[s.issue] = (acked + s.acked, sent + 1)
    return must_exist, must_resolve, bounds


def _state(stack: Stack, issues: list[str]) -> dict[str, tuple[str, str | None, int]]:
    rows = stack.query(
        "SELECT i.sentry->>'issue_id', i.status, e.status,"
        " (SELECT count(*) FROM incident_timeline t WHERE t.incident_id = i.incident_id)"
        " FROM incidents i LEFT JOIN incident_enrichments e USING (incident_id)"
        " WHERE i.tenant_id = %s AND i.sentry->>'issue_id' = ANY(%s)",
        (stack.tenant, issues),
    )
    return {r[0]: (r[1], r[2], int(r[3])) for r in rows}


async def _converge(
    stack: Stack, name: str, out: Outcome, results: list[dict[str, Any]]
) -> dict[str, Any]:
    must_exist, must_resolve, bounds = _expectations(out)
    issues = sorted(bounds)
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    problems: list[str] = ["not checked yet"]
    state: dict[str, tuple[str, str | None, int]] = {}
    while time.monotonic() < deadline:
        try:
            state = _state(stack, issues)
        except Exception as exc:  # Postgres may still be coming back
            problems = [f"query failed: {type(exc).__name__}"]
        else:
            problems = _problems(state, must_exist, must_resolve, bounds)
            if not problems:
                break
        await asyncio.sleep(0.5)
    converged = time.monotonic() - out.fault_ended
    ready_s = await stack.wait_ready(timeout_s=60)
    four_xx = [s for s in out.sent if isinstance(s.status, int) and 400 <= s.status < 500]
    statuses: dict[str, int] = {}
    for s in out.sent:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    result = {
        "fault": name,
        "sent": len(out.sent),
        "acked": sum(s.acked for s in out.sent),
        "refused": sum(not s.acked for s in out.sent),
        "4xx": len(four_xx),
        "incidents": len(state),
        "resolved": sum(1 for v in state.values() if v[0] == "resolved"),
        "enriched": sum(1 for v in state.values() if v[1] == "enriched"),
        "converged_s": round(converged, 1),
        "statuses": statuses,
    }
    results.append(result)
    assert not four_xx, f"valid webhooks answered 4xx: {four_xx[:5]}"
    assert not problems, f"{name}: not converged after {CONVERGE_TIMEOUT_S}s: {problems[:8]}"
    assert ready_s < 60
    assert converged < 60, f"{name}: converged only after {converged:.1f} s"
    return result


def _problems(
    state: dict[str, tuple[str, str | None, int]],
    must_exist: set[str],
    must_resolve: set[str],
    bounds: dict[str, tuple[int, int]],
) -> list[str]:
    out = [f"{len(must_exist - set(state))} acknowledged issues have no incident"]
    if not must_exist - set(state):
        out = []
    for issue, (status, enrichment, rows) in state.items():
        low, high = bounds[issue]
        if issue in must_resolve and status != "resolved":
            out.append(f"{issue}: {status}, its resolution was acknowledged")
        if enrichment != "enriched":
            out.append(f"{issue}: enrichment {enrichment}")
        if not low <= rows <= high:
            out.append(f"{issue}: {rows} timeline rows, {low} acknowledged and {high} sent")
    return out


async def _run(
    stack: Stack, results: list[dict[str, Any]], name: str, fault: Fault
) -> dict[str, Any]:
    await stack.wait_ready()
    out = await _flow(stack, fault)
    return await _converge(stack, name, out, results)


async def _replaced(stack: Stack, service: str, old: int, timeout_s: float = 30) -> None:
    """Until the supervisor has started ``service`` again (a new pid)."""
    deadline = time.monotonic() + timeout_s
    while service_pid(service, stack.run) in (None, old):
        assert time.monotonic() < deadline, f"{service} was not restarted"
        await asyncio.sleep(0.1)


def _killer(service: str) -> Fault:
    async def fault(stack: Stack) -> None:
        await _replaced(stack, service, stack.kill(service))

    return fault


@pytest.mark.parametrize(
    "service", ["normalizer", "enricher", "projector", "suspects", "mappings-api", "ingest"]
)
async def test_kill_minus_nine(stack: Stack, results: list[dict[str, Any]], service: str) -> None:
    result = await _run(stack, results, f"kill -9 {service}", _killer(service))
    if service != "ingest":  # only a dead ingest may refuse a webhook
        assert result["refused"] == 0, result["statuses"]


async def test_ingest_restarts_gracefully(stack: Stack, results: list[dict[str, Any]]) -> None:
    async def restart(st: Stack) -> None:
        old = st.pid("ingest")
        os.kill(old, signal.SIGTERM)  # it drains and exits 0; the supervisor starts it again
        await _replaced(st, "ingest", old)

    await _run(stack, results, "ingest SIGTERM + restart", restart)


async def test_sentry_outage_longer_than_the_old_retry_budget(
    stack: Stack, results: list[dict[str, Any]]
) -> None:
    """503 on every Sentry call for 15 s, then 429 for 10 s: the old budget (5 attempts, ~3 s of
    backoff) left incidents failed for good; now every one ends enriched, no redrive by hand."""
    hit: dict[str, int] = {}

    async def storm(st: Stack) -> None:
        async with httpx.AsyncClient(base_url=st.url("sentry-stub")) as stub:
            for kind, seconds in (("503", 15.0), ("429", 10.0)):
                before = len((await stub.get("/_stub/requests")).json())
                resp = await stub.post("/_stub/storm", json={"kind": kind, "duration_s": seconds})
                assert resp.status_code == 200, resp.text
                await asyncio.sleep(seconds)
                hit[kind] = len((await stub.get("/_stub/requests")).json()) - before

    result = await _run(stack, results, "Sentry 5xx 15 s then 429 10 s", storm)
    assert result["refused"] == 0
    result["sentry_calls_in_storm"] = hit
    assert hit["503"] > 0  # the enricher did call into the outage


async def test_broker_killed_and_restarted(stack: Stack, results: list[dict[str, Any]]) -> None:
    async def outage(st: Stack) -> None:
        st.kafka.stop(sig=signal.SIGKILL)
        await asyncio.sleep(10)
        await asyncio.to_thread(st.kafka.start)

    result = await _run(stack, results, "broker kill -9, down 10 s", outage)
    assert result["refused"] == 0  # ingest spools while the broker is away
    await _new_connection_reaches_ingest(stack)  # the relay came back too


async def test_postgres_crash_and_restart(stack: Stack, results: list[dict[str, Any]]) -> None:
    async def outage(st: Stack) -> None:
        await asyncio.to_thread(st.pg.stop, "immediate")
        await asyncio.sleep(5)
        await asyncio.to_thread(st.pg.start)

    result = await _run(stack, results, "postgres -m immediate, down 5 s", outage)
    assert result["refused"] == 0
    # the control plane came back whole: a connection created now reaches ingest (relay alive)
    await _new_connection_reaches_ingest(stack)


async def _new_connection_reaches_ingest(stack: Stack) -> None:
    with stack.api() as api:
        created = api.post(
            "/api/v1/integrations/sentry/connections",
            json={
                "mode": "internal",
                "sentry_org_slug": f"after-{next(_issue_base)}",
                "api_base_url": stack.url("sentry-stub"),
                "client_secret": CLIENT_SECRET,
                "auth_token": "unused",
            },
        )
    assert created.status_code == 201, created.text
    url = f"{stack.url('ingest')}/webhooks/sentry/{created.json()['id']}"
    body, headers = _webhook("created", str(next(_issue_base)))
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            resp = await client.post(url, content=body, headers=headers)
            if resp.status_code != 404:
                break
            assert time.monotonic() < deadline, "ingest never learnt the new connection"
            await asyncio.sleep(0.5)
    assert resp.status_code == 200, resp.text


async def test_two_replicas_of_each_consumer_one_killed(
    stack: Stack, results: list[dict[str, Any]]
) -> None:
    """A second replica of the normalizer, the enricher and the projector joins each group; one
    replica of each is killed mid-flow and (as a Deployment would) replaced: the group
    rebalances and nothing is lost or applied twice. The suspects worker runs as exactly one
    replica by design (README), so it has no second one here."""
    extra = tuple(
        ServiceSpec(f"{name}-2", module, port, env={var: str(port), "HOSTNAME": f"{name}-2"})
        for name, module, var, port in (
            ("normalizer", "blametrail_normalizer", "BLAMETRAIL_NORMALIZER_PORT", free_port()),
            ("enricher", "blametrail_enricher", "BLAMETRAIL_ENRICHER_PORT", free_port()),
            (
                "projector",
                "blametrail_projector",
                "BLAMETRAIL_PROJECTION_PORT",
                free_port(),
            ),
        )
    )
    where = stack.home / "run-replicas"
    start_all(extra, timeout_s=120, where=where, env=stack.env, quiet=True)
    try:
        for spec in extra:
            assert spec.port is not None
            stack.ports[spec.name] = spec.port

        async def kill_one_of_each(st: Stack) -> None:
            for name in ("normalizer", "enricher", "projector"):
                st.kill(name)  # the first replicas; the supervisor replaces them

        await _run(stack, results, "2 replicas each, 1 killed", kill_one_of_each)
    finally:
        stop_all(extra, timeout_s=30, where=where)
        for spec in extra:
            stack.ports.pop(spec.name, None)


def _metric_names_module() -> Any:
    """tests/deploy/metric_names.py, by file (the test folders are not packages)."""
    path = Path(__file__).resolve().parents[1] / "deploy" / "metric_names.py"
    spec = importlib.util.spec_from_file_location("metric_names", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_alerts_and_dashboard_read_metrics_the_live_services_export(stack: Stack) -> None:
    """Every metric an alerting rule or a dashboard panel reads is in the /metrics of one of
    the real processes (the service modules' declarations are checked in tests/deploy too)."""
    names = _metric_names_module()
    await stack.wait_ready()
    exposed: set[str] = set()
    async with httpx.AsyncClient(timeout=5) as client:
        for spec in stack.specs:
            if spec.port is not None:
                resp = await client.get(f"{stack.url(spec.name)}/metrics")
                assert resp.status_code == 200, spec.name
                exposed |= names.exposed_names(resp.text)
    used = set(names.names_in_rules()) | set(names.names_in_dashboard())
    assert used, "no metric names found in the rules"
    assert names.unexported(used, exposed, names.recorded_names()) == set()

"""Runs the BlameTrail services on loopback for ``make up`` (pid files and logs in .local/run).

Each service is declared once in :data:`SERVICES`; ``services-up`` starts a supervisor that runs
them all and restarts any that exits (:mod:`blametrail_devstack.supervisor`), waits for their
``/readyz`` and records their URLs in ``.local/stack.env``; ``services-down`` stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from blametrail_devstack.paths import local_dir
from blametrail_devstack.supervisor import Child, Plan


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str  # run as ``python -m module``
    port: int | None  # HTTP port serving /readyz, if any
    url_var: str | None = None  # variable written to stack.env with the service's base URL
    env: dict[str, str] = field(default_factory=dict)
    dev_only: bool = False  # no counterpart in the deployment manifests
    nice: int = 0  # see supervisor.Child.nice


STUB_PORT = 8090
_YIELDS = 10  # the niceness of what may wait (see SERVICES)
# What may wait also lets the broker hold its fetches longer than the path to an incident row
# does (BLAMETRAIL_KAFKA_FETCH_MAX_WAIT_MS, 50 by default): an idle make-up stack measured 40%
# of a core with every consumer asking every 50 ms, 28% with these at 500 (17% with all).
_WAITS = {"BLAMETRAIL_KAFKA_FETCH_MAX_WAIT_MS": "500"}
EDGE_URL = "http://127.0.0.1:8080"
# The public (OAuth) app, played against the stand-in: its install page sends the signed
# installation.created to the edge and redirects the browser to our callback, as Sentry does.
PUBLIC_APP = {
    "BLAMETRAIL_SENTRY_URL": f"http://127.0.0.1:{STUB_PORT}",
    "BLAMETRAIL_SENTRY_CLIENT_ID": "blametrail-demo",
    "BLAMETRAIL_SENTRY_APP_SLUG": "blametrail",
    "BLAMETRAIL_INGEST_PUBLIC_CLIENT_SECRETS": "demo-public-app-secret",
    "BLAMETRAIL_PUBLIC_INGEST_URL": EDGE_URL,  # webhook URLs via the edge
}

SERVICES: tuple[ServiceSpec, ...] = (
    # Sentry's stand-in and the workers that may wait (enrichment, scoring, write-back, sweeps,
    # jobs) run at a lower priority (nice 10): on a machine they share with the broker and
    # Postgres, the path from a webhook to its incident row gets the cores first in a storm (as
    # separate nodes or priority classes would give it in a cluster).
    ServiceSpec(
        "sentry-stub",
        "blametrail_sentry_stub",
        None,
        "BLAMETRAIL_SENTRY_STUB_URL",
        PUBLIC_APP,
        nice=_YIELDS,
    ),
    ServiceSpec("mappings-api", "blametrail_mappings_api", 8082, "BLAMETRAIL_API_URL", PUBLIC_APP),
    ServiceSpec(
        "ingest",
        "blametrail_ingest",
        8081,
        "BLAMETRAIL_INGEST_URL",
        {**PUBLIC_APP, "BLAMETRAIL_INGEST_SPOOL_DIR": str(local_dir() / "spool")},
    ),
    # One public host, as the Ingress is in Kubernetes: webhooks to ingest, the rest to the API.
    ServiceSpec("edge", "blametrail_devstack.edge", 8080, "BLAMETRAIL_EDGE_URL", dev_only=True),
    # The product's pages (the edge sends them every path but the API's and the webhooks'), a
    # client of the API; plain HTTP on loopback, so no Secure cookies.
    ServiceSpec(
        "web",
        "blametrail_web",
        8087,
        "BLAMETRAIL_WEB_URL",
        {
            "BLAMETRAIL_WEB_API_URL": "http://127.0.0.1:8082",
            "BLAMETRAIL_WEB_COOKIE_SECURE": "false",
            # where "Connect with Sentry" redirects (its CSP form-action): the edge, the stand-in
            "BLAMETRAIL_PUBLIC_INGEST_URL": PUBLIC_APP["BLAMETRAIL_PUBLIC_INGEST_URL"],
            "BLAMETRAIL_SENTRY_URL": PUBLIC_APP["BLAMETRAIL_SENTRY_URL"],
            # its own signing key comes from stack.env (BLAMETRAIL_WEB_SECRET_KEY); the master
            # key that stack.env also holds is blanked: the web is never given it.
            "BLAMETRAIL_SECRET_KEYS": "",
        },
    ),
    ServiceSpec("normalizer", "blametrail_normalizer", 8083, "BLAMETRAIL_NORMALIZER_URL"),
    ServiceSpec(
        "enricher", "blametrail_enricher", 8084, "BLAMETRAIL_ENRICHER_URL", _WAITS, nice=_YIELDS
    ),
    ServiceSpec("projector", "blametrail_projector", 8085, "BLAMETRAIL_PROJECTOR_URL"),
    ServiceSpec(
        "suspects", "blametrail_suspects", 8086, "BLAMETRAIL_SUSPECTS_URL", _WAITS, nice=_YIELDS
    ),
    # the control plane's jobs (POST /api/v1/audit/reprocess), run with replay's own code
    ServiceSpec(
        "replay-jobs", "blametrail_replay.worker", 8091, "BLAMETRAIL_JOBS_URL", _WAITS, nice=_YIELDS
    ),
    ServiceSpec("sync", "blametrail_sync", 8089, "BLAMETRAIL_SYNC_URL", _WAITS, nice=_YIELDS),
    ServiceSpec(
        "reconciler",
        "blametrail_reconciler",
        8088,
        "BLAMETRAIL_RECONCILER_URL",
        _WAITS,
        nice=_YIELDS,
    ),
)


def run_dir() -> Path:
    return local_dir() / "run"


def plan_for(
    specs: tuple[ServiceSpec, ...], where: Path, env: dict[str, str] | None = None
) -> Plan:
    """The supervisor's plan: every spec as a child, with ``env`` (and then its own) on top of
    the environment the supervisor inherits."""
    return Plan(
        where, tuple(Child(s.name, s.module, {**(env or {}), **s.env}, s.nice) for s in specs)
    )


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_all(
    specs: tuple[ServiceSpec, ...] = SERVICES,
    timeout_s: float = 90,
    where: Path | None = None,
    env: dict[str, str] | None = None,
    quiet: bool = False,
) -> dict[str, str]:
    """Start the supervisor of ``specs`` unless it runs already; returns ``{url_var: url}`` once
    every service with a port answers ``/readyz`` 200. The supervisor restarts whatever exits
    (see :mod:`blametrail_devstack.supervisor`); a service that never gets ready fails here."""
    where = where or run_dir()
    where.mkdir(parents=True, exist_ok=True)
    if _alive(where / "supervisor.pid") is None:
        plan_file = where / "plan.json"
        plan_for(specs, where, env).dump(plan_file)
        with open(where / "supervisor.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "blametrail_devstack.supervisor", str(plan_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the shell of `make up`
            )
        (where / "supervisor.pid").write_text(str(proc.pid))
    urls: dict[str, str] = {}
    for spec in specs:
        if spec.port is None:
            if spec.url_var:
                urls[spec.url_var] = f"http://127.0.0.1:{STUB_PORT}"
            continue
        deadline = time.monotonic() + timeout_s
        while not _ready(spec.port):
            if _alive(where / "supervisor.pid") is None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{spec.name} did not become ready; see {where}/{spec.name}.log"
                    f" and {where}/supervisor.log"
                )
            time.sleep(0.3)
        if spec.url_var:
            urls[spec.url_var] = f"http://127.0.0.1:{spec.port}"
        if not quiet:
            print(f"{spec.name:14} http://127.0.0.1:{spec.port} ready")
    return urls


def service_pid(name: str, where: Path | None = None) -> int | None:
    """The pid of the running child ``name`` (it changes at every restart)."""
    return _alive((where or run_dir()) / f"{name}.pid")


def stop_all(
    specs: tuple[ServiceSpec, ...] = SERVICES, timeout_s: float = 45, where: Path | None = None
) -> None:
    """SIGTERM the supervisor (it stops its children: they drain and commit); SIGKILL what is
    left after ``timeout_s`` (the supervisor and any child it left behind)."""
    where = where or run_dir()
    supervisor = _alive(where / "supervisor.pid")
    if supervisor is not None:
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(where / "supervisor.pid") is not None and time.monotonic() < deadline:
            time.sleep(0.2)
    for pid_file in [where / "supervisor.pid", *(where / f"{s.name}.pid" for s in specs)]:
        if (pid := _alive(pid_file)) is not None:
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)

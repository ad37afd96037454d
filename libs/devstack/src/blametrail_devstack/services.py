"""Runs the BlameTrail services on loopback for ``make up`` (pid files and logs in .local/run).

Each service is declared once in :data:`SERVICES`; ``services-up`` starts those not running,
waits for their ``/readyz`` and records their URLs in ``.local/stack.env``.
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


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str  # run as ``python -m module``
    port: int | None  # HTTP port serving /readyz, if any
    url_var: str | None = None  # variable written to stack.env with the service's base URL
    env: dict[str, str] = field(default_factory=dict)
    dev_only: bool = False  # no counterpart in the deployment manifests


STUB_PORT = 8090
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
    ServiceSpec(
        "sentry-stub", "blametrail_sentry_stub", None, "BLAMETRAIL_SENTRY_STUB_URL", PUBLIC_APP
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
    ServiceSpec("normalizer", "blametrail_normalizer", 8083, "BLAMETRAIL_NORMALIZER_URL"),
    ServiceSpec("enricher", "blametrail_enricher", 8084, "BLAMETRAIL_ENRICHER_URL"),
    ServiceSpec("projector", "blametrail_enricher.projector", 8085, "BLAMETRAIL_PROJECTOR_URL"),
    ServiceSpec("suspects", "blametrail_suspects", 8086, "BLAMETRAIL_SUSPECTS_URL"),
)


def run_dir() -> Path:
    return local_dir() / "run"


def _pid(spec: ServiceSpec) -> int | None:
    try:
        pid = int((run_dir() / f"{spec.name}.pid").read_text())
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


def start_all(specs: tuple[ServiceSpec, ...] = SERVICES, timeout_s: float = 60) -> dict[str, str]:
    """Start every service not yet running; returns ``{url_var: url}`` once all are ready."""
    run_dir().mkdir(parents=True, exist_ok=True)
    for spec in specs:
        if _pid(spec) is None:
            with open(run_dir() / f"{spec.name}.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", spec.module],
                    env={**os.environ, **spec.env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            (run_dir() / f"{spec.name}.pid").write_text(str(proc.pid))
    urls: dict[str, str] = {}
    for spec in specs:
        if spec.port is None:
            if spec.url_var:
                urls[spec.url_var] = f"http://127.0.0.1:{STUB_PORT}"
            continue
        deadline = time.monotonic() + timeout_s
        while not _ready(spec.port):
            if _pid(spec) is None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{spec.name} did not become ready; see {run_dir()}/{spec.name}.log"
                )
            time.sleep(0.3)
        if spec.url_var:
            urls[spec.url_var] = f"http://127.0.0.1:{spec.port}"
        print(f"{spec.name:14} http://127.0.0.1:{spec.port} ready")
    return urls


def stop_all(specs: tuple[ServiceSpec, ...] = SERVICES, timeout_s: float = 30) -> None:
    """SIGTERM every running service (they drain and commit), SIGKILL after ``timeout_s``."""
    pids = {spec.name: pid for spec in specs if (pid := _pid(spec)) is not None}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for name, pid in pids.items():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        (run_dir() / f"{name}.pid").unlink(missing_ok=True)

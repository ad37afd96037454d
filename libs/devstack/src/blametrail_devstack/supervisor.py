"""``python -m blametrail_devstack.supervisor PLAN.json``: keeps the local services running.

What Kubernetes does for the pods, ``make up`` does with this process: it starts every service of
the plan as its own child, and when one exits (a crash, ``kill -9``, a hard exit after a stuck
shutdown) it logs the exit and starts it again after a capped, jittered backoff that grows with
consecutive failures and resets once the child has stayed up for ``stable_s``. Each child's pid
is written to ``<run_dir>/<name>.pid`` at every start, its output appended to
``<run_dir>/<name>.log``. SIGTERM (``make down``) forwards SIGTERM to every child, waits
``grace_s`` for them to drain, then kills what is left and exits.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blametrail_common.logging import configure_logging

__all__ = ["Child", "Plan", "Supervisor", "main", "restart_delay"]

log = logging.getLogger("blametrail.supervisor")


@dataclass(frozen=True)
class Child:
    name: str
    module: str  # run as ``python -m module``
    env: dict[str, str] = field(default_factory=dict)
    # Added to the child's niceness: work that may wait (enrichment, scoring, Sentry's stand-in)
    # yields the machine's cores to the path a webhook takes to its incident row.
    nice: int = 0


@dataclass(frozen=True)
class Plan:
    run_dir: Path
    children: tuple[Child, ...]
    stable_s: float = 30.0
    grace_s: float = 30.0

    def dump(self, path: Path) -> None:
        doc = {
            "run_dir": str(self.run_dir),
            "stable_s": self.stable_s,
            "grace_s": self.grace_s,
            "children": [
                {"name": c.name, "module": c.module, "env": c.env, "nice": c.nice}
                for c in self.children
            ],
        }
        path.write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, path: Path) -> Plan:
        doc: dict[str, Any] = json.loads(path.read_text())
        return cls(
            Path(doc["run_dir"]),
            tuple(
                Child(c["name"], c["module"], dict(c["env"]), int(c.get("nice", 0)))
                for c in doc["children"]
            ),
            float(doc["stable_s"]),
            float(doc["grace_s"]),
        )


def restart_delay(
    failures: int, rng: Callable[[], float], base_s: float = 0.5, cap_s: float = 30.0
) -> float:
    """Pure: seconds before restart number ``failures`` (1-based) of a child that keeps failing:
    exponential from ``base_s``, capped at ``cap_s``, with the upper half jittered (so a crash
    loop is slowed down and replicas that fail together do not restart in lockstep)."""
    ceiling = min(cap_s, base_s * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + rng() * ceiling / 2


@dataclass
class _Running:
    child: Child
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self, plan: Plan, rng: Callable[[], float] = random.random, poll_s: float = 0.1
    ) -> None:
        self.plan, self._rng, self._poll_s = plan, rng, poll_s
        self._running = [_Running(c) for c in plan.children]
        self._stopping = False

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> int:
        self.plan.run_dir.mkdir(parents=True, exist_ok=True)
        for r in self._running:
            self._start(r)
        while not self._stopping:
            now = time.monotonic()
            for r in self._running:
                self._tend(r, now)
            time.sleep(self._poll_s)
        self._shutdown()
        return 0

    def _start(self, r: _Running) -> None:
        with open(self.plan.run_dir / f"{r.child.name}.log", "ab") as out:
            r.proc = subprocess.Popen(
                [sys.executable, "-m", r.child.module],
                env={**os.environ, **r.child.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=functools.partial(os.nice, r.child.nice) if r.child.nice else None,
            )
        r.started, r.restart_at = time.monotonic(), None
        (self.plan.run_dir / f"{r.child.name}.pid").write_text(str(r.proc.pid))
        log.info("started", extra={"child": r.child.name, "pid": r.proc.pid})

    def _tend(self, r: _Running, now: float) -> None:
        if r.restart_at is not None:
            if now >= r.restart_at:
                self._start(r)
            return
        assert r.proc is not None
        status = r.proc.poll()
        if status is None:
            if r.failures and now - r.started >= self.plan.stable_s:
                r.failures = 0  # stayed up: the next exit starts the backoff afresh
            return
        r.failures += 1
        delay = restart_delay(r.failures, self._rng)
        r.restart_at = now + delay
        log.warning(
            "exited; restarting",
            extra={
                "child": r.child.name,
                "pid": r.proc.pid,
                "status": status,
                "uptime_s": round(now - r.started, 3),
                "consecutive_failures": r.failures,
                "restart_in_s": round(delay, 3),
            },
        )

    def _shutdown(self) -> None:
        live = [r.proc for r in self._running if r.proc is not None and r.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.plan.grace_s
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("did not stop in time: killed", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        for r in self._running:
            (self.plan.run_dir / f"{r.child.name}.pid").unlink(missing_ok=True)
        log.info("stopped", extra={"children": len(self._running)})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m blametrail_devstack.supervisor PLAN.json", file=sys.stderr)
        return 2
    configure_logging("supervisor")
    supervisor = Supervisor(Plan.load(Path(args[0])))
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

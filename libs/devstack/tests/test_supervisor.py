"""The `make up` supervisor: a child that exits is started again, with backoff, and logged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from blametrail_devstack.supervisor import Child, Plan, restart_delay


def test_restart_delay_grows_is_capped_and_jittered() -> None:
    lows = [restart_delay(n, lambda: 0.0) for n in range(1, 12)]
    highs = [restart_delay(n, lambda: 1.0) for n in range(1, 12)]
    assert lows == sorted(lows)
    assert highs == sorted(highs)
    assert highs[0] == 0.5
    assert highs[-1] == 30.0
    assert all(lo == hi / 2 for lo, hi in zip(lows, highs, strict=True))


def _wait(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_killed_child_is_restarted_and_sigterm_stops_everything(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "sleeper.py").write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "print('up', flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    run = tmp_path / "run"
    env = {"PYTHONPATH": str(tmp_path / "mods")}
    Plan(run, (Child("a", "sleeper", env), Child("b", "sleeper", env)), grace_s=5).dump(
        tmp_path / "plan.json"
    )
    sup = subprocess.Popen(
        [sys.executable, "-m", "blametrail_devstack.supervisor", str(tmp_path / "plan.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: _pid(run / "a.pid") and _pid(run / "b.pid"))
        _wait(lambda: (run / "a.log").read_text().count("up") == 1)  # it has started
        first, other = _pid(run / "a.pid"), _pid(run / "b.pid")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait(lambda: _pid(run / "a.pid") not in (None, first))
        assert _pid(run / "b.pid") == other  # the others are left alone
        second = _pid(run / "a.pid")
        assert second is not None
        _wait(lambda: (run / "a.log").read_text().count("up") == 2)  # the new one runs
    finally:
        sup.send_signal(signal.SIGTERM)
        out, _ = sup.communicate(timeout=15)
    assert sup.returncode == 0
    events = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    restarts = [e for e in events if e["msg"] == "exited; restarting"]
    assert [(e["child"], e["status"], e["pid"]) for e in restarts] == [("a", -9, first)]
    assert 0.25 <= restarts[0]["restart_in_s"] <= 0.5
    assert not (run / "a.pid").exists()
    assert not (run / "b.pid").exists()
    for pid in (second, other):
        assert pid is not None
        _wait(lambda pid=pid: not _running(pid), 5)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_child_runs_at_its_niceness_and_the_plan_keeps_it(tmp_path: Path) -> None:
    """What may wait runs at a lower priority than the webhook's path (services.SERVICES)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "nicety.py").write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "print('nice', os.nice(0), flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    run, env = tmp_path / "run", {"PYTHONPATH": str(tmp_path / "mods")}
    plan = Plan(run, (Child("low", "nicety", env, nice=7), Child("same", "nicety", env)))
    plan.dump(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    sup = subprocess.Popen(
        [sys.executable, "-m", "blametrail_devstack.supervisor", str(tmp_path / "plan.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for log in (run / "low.log", run / "same.log"):
            _wait(lambda log=log: log.is_file() and "nice" in log.read_text())
    finally:
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=15)
    own = os.nice(0)
    assert (run / "low.log").read_text().split() == ["nice", str(min(own + 7, 19))]
    assert (run / "same.log").read_text().split() == ["nice", str(own)]

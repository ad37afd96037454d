"""The benchmarks' shared result convention, and the summary ``make bench`` prints at the end.

Each ``bench/<name>/run.py`` ends with :func:`write_result`: ``.local/bench/<name>.json`` holding
its headline figure, the baseline it measured in the same run, its goal, and whether the goal
was met. ``python -m blametrail_devstack.bench summary [names...]`` prints one table of every
result written (or of ``names``), oldest first, and exits 1 if a listed benchmark left none.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.table import Table

from blametrail_devstack.paths import local_dir

__all__ = [
    "BenchResult",
    "broker_pid",
    "cpu_seconds",
    "listener_pid",
    "load_results",
    "postgres_pid",
    "process_tree_cpu",
    "pythons_gc",
    "results_dir",
    "summary_table",
    "write_result",
]


@dataclass(frozen=True)
class BenchResult:
    name: str
    headline: str  # what the figure is, e.g. "rebuild, events/s"
    value: float
    baseline_label: str  # what it is compared with, measured in the same run
    baseline: float | None
    goal: str  # e.g. ">= 0.7x baseline and >= 20,000/s"; "" when the figure is only reported
    ok: bool | None  # the goal met; None without a goal
    unit: str = ""
    notes: str = ""
    at: float = 0.0

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


@contextmanager
def pythons_gc() -> Iterator[None]:
    """Within: the garbage collector as Python sets it (thresholds 700, 10, 10, nothing frozen),
    for a variant that shows what :func:`blametrail_common.gctune.tune_gc` (which the services
    and these benchmarks run with) is worth; the tuning is back afterwards."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count() > 0
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if frozen:
            gc.collect()
            gc.freeze()


def results_dir() -> Path:
    return local_dir() / "bench"


def write_result(result: BenchResult, directory: Path | None = None) -> Path:
    """Record ``result`` as ``<directory>/<name>.json`` (default ``.local/bench``)."""
    folder = directory or results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.name}.json"
    stamped = result if result.at else BenchResult(**{**asdict(result), "at": time.time()})
    path.write_text(json.dumps(asdict(stamped), indent=2) + "\n")
    return path


def load_results(directory: Path | None = None) -> list[BenchResult]:
    """Every result recorded, oldest first; a file that is not a result is named, not skipped."""
    folder = directory or results_dir()
    found: list[BenchResult] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            found.append(BenchResult(**data))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a benchmark result ({exc})") from exc
    return sorted(found, key=lambda r: r.at)


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` here (Linux ``/proc``), e.g. the broker a benchmark
    talks to, rather than the first broker process found (another stack's)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if str(fd.readlink()) in wanted:
                    return int(proc.name)
        except OSError:
            continue
    return None


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu(fields: list[str], reaped: bool = False) -> float:
    """User + system CPU seconds of a ``_stat``, with its reaped children's when ``reaped``."""
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU seconds ``pid`` used so far (Linux ``/proc``); with ``reaped``, its
    children that exited and were waited for too (a Postgres postmaster's finished backends).
    Raises ``OSError`` when there is no such process."""
    return _cpu(_stat(pid), reaped)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, of its live children and of those it reaped: a whole Postgres
    server (the postmaster and its backends), counted from its listening process."""
    total = cpu_seconds(pid, reaped=True)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == str(pid):
            continue
        try:
            fields = _stat(int(proc.name))
            if int(fields[1]) == pid:  # its parent
                total += _cpu(fields)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile: its time is in the parent's reaped share
    return total


def broker_pid(bootstrap: str) -> int:
    """The broker a benchmark talks to: the process listening on its first bootstrap address's
    port. Exits naming the address when there is none here (its CPU cannot be measured)."""
    pid = listener_pid(int(bootstrap.split(",")[0].rsplit(":", 1)[1]))
    if pid is None:
        raise SystemExit(f"no process here listens on {bootstrap}: cannot measure its broker")
    return pid


def postgres_pid(dsn: str) -> int | None:
    """The Postgres server a benchmark talks to: the process listening on its DSN's port (a
    URL or ``key=value`` conninfo), or ``None`` when there is none here."""
    return listener_pid(int(conninfo_to_dict(dsn).get("port") or 5432))


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def summary_table(results: list[BenchResult], missing: Sequence[str] = ()) -> Table:
    table = Table(
        "benchmark",
        "headline",
        "value",
        "baseline (same run)",
        "ratio",
        "goal",
        "met",
        title="make bench: summary",
    )
    for r in results:
        ratio = r.ratio
        table.add_row(
            r.name,
            r.headline,
            _fmt(r.value, r.unit),
            f"{r.baseline_label}: {_fmt(r.baseline, r.unit)}" if r.baseline_label else "-",
            f"{ratio:.2f}x" if ratio is not None else "-",
            r.goal or "(reported)",
            {True: "yes", False: "NO", None: "-"}[r.ok],
        )
    for name in missing:
        table.add_row(name, "no result written", "-", "-", "-", "-", "NO")
    return table


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "summary":
        print("usage: python -m blametrail_devstack.bench summary [name...]", file=sys.stderr)
        return 2
    wanted = argv[1:]
    results = load_results()
    if wanted:
        results = [r for r in results if r.name in wanted]
    missing = [n for n in wanted if n not in {r.name for r in results}]
    Console().print(summary_table(results, missing))
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

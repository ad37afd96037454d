"""bench/rows: CPU per event of the projection's row mapping and the rebuild's fold, in process.

No Kafka, no Postgres: the events ``bench/pipeline`` and ``bench/replay`` produce, encoded as
the services encode them, as in-memory records. Reported (min of ``--repeat`` runs, µs per
event, one core):

- baseline: ``orjson.loads`` of each value and a dict of its fields (the least any mapping of
  the same bytes does);
- ``rows_for`` of the pipeline's log (75% openings, 25% resolutions) and of the replay's log
  (60% openings, 25% resolutions, 15% audit records);
- ``Fold.add`` of the replay's log (rows_for, the merge and the COPY text), then the folded
  tables' lines.

``--profile`` prints a cProfile of ``Fold.add`` instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import pstats
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from blametrail_devstack.bench import BenchResult, write_result
from blametrail_projector.rows import rows_for
from blametrail_replay.fold import Fold


def _bench(name: str) -> Any:
    """``bench/<name>/run.py`` (its log's records), by path: every bench's script is ``run``,
    and its folder holds its helpers."""
    folder = Path(__file__).resolve().parents[1] / name
    spec = importlib.util.spec_from_file_location(f"bench_{name}_run", folder / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
BATCH = 500


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    value: bytes


def pipeline_log(n: int) -> list[Record]:
    """``bench/pipeline``'s events (its ``_event``)."""
    bench = _bench("pipeline")
    return [Record("incident-events", 0, i, bench._event(i)[1]) for i in range(n)]


def replay_log(n: int) -> list[Record]:
    """``bench/replay``'s log (its ``_record``)."""
    bench = _bench("replay")
    incident, audit = bench._templates()
    out = []
    for i in range(n):
        topic, _key, value = bench._record(i, incident, audit)
        out.append(Record(topic, 0, i, value))
    return out


def batches(log: list[Record]) -> list[list[Record]]:
    return [log[i : i + BATCH] for i in range(0, len(log), BATCH)]


def baseline(parts: list[list[Record]]) -> None:
    for part in parts:
        rows = []
        for r in part:
            env = orjson.loads(r.value)
            p = env["payload"]
            rows.append({"id": env["id"], "type": env["type"], **p})


def mapping(parts: list[list[Record]]) -> None:
    for part in parts:
        rows_for(part)


def fold(parts: list[list[Record]]) -> None:
    f = Fold()
    for part in parts:
        f.add(part)
    for table in ("incidents", "incident_enrichments", "incident_suspects"):
        for _ in f.lines(table):
            pass


def best(
    run: Callable[[list[list[Record]]], None], parts: list[list[Record]], repeat: int
) -> float:
    n = sum(map(len, parts))
    times = []
    for _ in range(repeat):
        gc.collect()
        began = time.process_time()
        run(parts)
        times.append(time.process_time() - began)
    return min(times) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    pipeline, replay = batches(pipeline_log(args.events)), batches(replay_log(args.events))
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(fold, replay)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    rows: dict[str, Any] = {
        "baseline: orjson.loads + dict (pipeline log)": best(baseline, pipeline, args.repeat),
        "rows_for (pipeline log)": best(mapping, pipeline, args.repeat),
        "baseline: orjson.loads + dict (replay log)": best(baseline, replay, args.repeat),
        "rows_for (replay log)": best(mapping, replay, args.repeat),
        "Fold.add + lines (replay log)": best(fold, replay, args.repeat),
    }
    width = max(map(len, rows))
    print(f"{args.events} events, batches of {BATCH}, min of {args.repeat}, CPU µs per event")
    for name, us in rows.items():
        print(f"  {name:<{width}}  {us:7.2f}")
    write_result(  # for make bench's summary
        BenchResult(
            name="rows",
            headline="rows_for, CPU µs per incident event (bench/pipeline's log)",
            value=rows["rows_for (pipeline log)"],
            baseline_label="orjson.loads + dict of the same bytes",
            baseline=rows["baseline: orjson.loads + dict (pipeline log)"],
            goal="",
            ok=None,
            unit=" µs",
            notes=f"the rebuild's Fold.add + lines: {rows['Fold.add + lines (replay log)']:.1f} µs"
            " an event of bench/replay's log",
        )
    )


if __name__ == "__main__":
    main()

"""bench/suspects: suspect-scoring accuracy on labelled synthetic histories, and throughput.

Accuracy: top-1/top-3 on a few seeds of :func:`blametrail_devstack.suspects_synth.generate` (default
noise, 400 incidents each). Throughput: incidents/s scoring against 1,000 candidate deploys each
(the incident's real candidates padded with copies of its services' deploys across the lookback
window), top 5 explained, against a bare loop over the same deploys that only applies the
candidate filter (service and window), measured in the same run. Median of 5 rounds each.
Pure CPU, no infrastructure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from blametrail_devstack.bench import BenchResult, write_result
from blametrail_devstack.suspects_synth import generate, pad_candidates
from blametrail_suspects.scoring import DEFAULT_LOOKBACK, Deploy, IncidentFacts, score
from rich.console import Console
from rich.table import Table

SEEDS = (2026, 1, 2, 3, 4)
CANDIDATES, INCIDENTS, ROUNDS, LIMIT = 1_000, 100, 5, 5


def accuracy(seed: int) -> tuple[float, float, int]:
    history = generate(seed)
    top1 = top3 = 0
    for incident in history.incidents:
        ranked = [s.deploy.id for s in score(incident.facts, history.deploys, limit=3)]
        top1 += ranked[:1] == [incident.cause_id]
        top3 += incident.cause_id in ranked
    n = len(history.incidents)
    return top1 / n, top3 / n, n


def bare(incident: IncidentFacts, deploys: Sequence[Deploy]) -> int:
    """The floor: pick the candidates (same test as scoring) and nothing else."""
    services = frozenset(incident.services)
    seen = incident.first_seen.timestamp()
    earliest, latest = seen - DEFAULT_LOOKBACK.total_seconds(), seen + 300.0
    return sum(
        1
        for d in deploys
        if d.service in services
        and d.start_ts <= latest
        and (d.finish_ts if d.finish_ts is not None else max(d.start_ts, seen)) >= earliest
    )


def rate(work: Sequence[tuple[IncidentFacts, list[Deploy]]], fn: Callable[..., object]) -> float:
    began = time.perf_counter()
    for facts, deploys in work:
        fn(facts, deploys)
    return len(work) / (time.perf_counter() - began)


def crowded(seed: int) -> list[tuple[IncidentFacts, list[Deploy]]]:
    history = generate(seed)
    work = []
    for i, incident in enumerate(history.incidents[:INCIDENTS]):
        deploys = pad_candidates(history, incident, CANDIDATES, lookback=DEFAULT_LOOKBACK, seed=i)
        for d in deploys:  # derive the per-deploy keys once, as a long-lived history would
            _ = (d.start_ts, d.finish_ts, d.env_key, d.version_parts, d.path_keys)
        work.append((incident.facts, deploys))
    return work


def main() -> None:
    console = Console()
    table = Table("seed", "incidents", "top-1", "top-3", title="bench/suspects: accuracy")
    with console.status("scoring synthetic histories"):
        for seed in SEEDS:
            top1, top3, n = accuracy(seed)
            table.add_row(str(seed), str(n), f"{top1:.3f}", f"{top3:.3f}")
    console.print(table)

    with console.status(f"building {INCIDENTS} incidents x {CANDIDATES:,} candidates"):
        work = crowded(SEEDS[0])
    assert all(bare(f, d) == len(d) for f, d in work), "every padded deploy is a candidate"
    bare_rates, all_rates, top_rates = [], [], []
    with console.status(f"timing {ROUNDS} rounds"):
        for _ in range(ROUNDS):
            bare_rates.append(rate(work, bare))
            top_rates.append(rate(work, lambda f, d: score(f, d, limit=LIMIT)))
            all_rates.append(rate(work, score))
    b, t, a = (statistics.median(r) for r in (bare_rates, top_rates, all_rates))
    speed = Table(
        "measure",
        "incidents/s",
        "vs bare",
        title=f"bench/suspects: throughput ({CANDIDATES:,} candidates per incident, "
        f"median of {ROUNDS} rounds)",
    )
    speed.add_row("bare candidate filter", f"{b:,.0f}", "1.00")
    speed.add_row(f"score, top {LIMIT} explained", f"{t:,.0f}", f"{t / b:.3f}")
    speed.add_row("score, all 1,000 explained", f"{a:,.0f}", f"{a / b:.3f}")
    console.print(speed)
    write_result(
        BenchResult(
            name="suspects",
            headline=f"scored incidents/s, top {LIMIT} explained",
            value=t,
            baseline_label="bare candidate filter",
            baseline=b,
            goal="",
            ok=None,
            unit="/s",
            notes=f"all explained: {a:,.0f}/s",
        )
    )


if __name__ == "__main__":
    main()

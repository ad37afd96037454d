"""Fixtures of the fault suite: one stack for the session (see blametrail_devstack.faultstack).

A results table (per fault: webhooks sent, acknowledged, refused, incidents, resolved, enriched,
seconds to converge after the fault ended) is printed at the end of the session and written to
``.local/faults/results.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from blametrail_devstack.faultstack import Stack, running_stack
from blametrail_devstack.paths import local_dir

RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with running_stack() as st:
        yield st


@pytest.fixture(scope="session")
def results() -> list[dict[str, Any]]:
    return RESULTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    out = local_dir() / "faults" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=1))
    cols = ("fault", "sent", "acked", "refused", "4xx", "incidents", "resolved", "enriched")
    terminalreporter.section("fault suite")
    terminalreporter.write_line(
        " ".join(f"{c:>10}" for c in cols) + "  converged_s  (after the fault ended)"
    )
    for r in RESULTS:
        terminalreporter.write_line(
            " ".join(f"{r[c]!s:>10}" for c in cols) + f"  {r['converged_s']:>10.1f}"
        )
    terminalreporter.write_line(f"written to {out}")

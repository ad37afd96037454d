"""The benchmarks' result files and the summary ``make bench`` prints from them."""

from __future__ import annotations

import asyncio
import gc
import io
import os
from pathlib import Path

import pytest
from blametrail_devstack.bench import (
    BenchResult,
    listener_pid,
    load_results,
    pythons_gc,
    summary_table,
    write_result,
)
from rich.console import Console


def _render(table: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    return out.getvalue()


def test_results_round_trip_and_the_summary_names_ratio_goal_and_missing(tmp_path: Path) -> None:
    write_result(
        BenchResult("pipeline", "events/s", 21_000, "bulk SQL", 28_000, ">= 0.7x", True, "/s"),
        tmp_path,
    )
    write_result(BenchResult("storm", "webhooks/s", 900, "", None, ">= 2,000/s", False), tmp_path)
    results = load_results(tmp_path)
    assert [r.name for r in results] == ["pipeline", "storm"]  # oldest first
    assert results[0].ratio == pytest.approx(0.75)
    assert results[1].ratio is None
    text = _render(summary_table(results, missing=["replay"]))
    assert "0.75x" in text
    assert "21,000 /s" in text
    assert "NO" in text
    assert "no result written" in text


def test_a_file_that_is_not_a_result_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match=r"broken\.json: not a benchmark result"):
        load_results(tmp_path)


async def test_listener_pid_finds_the_process_serving_a_port() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert listener_pid(port) == os.getpid()
    finally:
        server.close()
        await server.wait_closed()
    assert listener_pid(port) is None


def test_pythons_gc_is_pythons_within_and_the_tuning_after() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(50000, 20, 10)
        gc.freeze()
        with pythons_gc():
            assert gc.get_threshold() == (700, 10, 10)
            assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == (50000, 20, 10)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

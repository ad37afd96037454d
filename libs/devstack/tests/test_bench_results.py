"""The benchmarks' result files and the summary ``make bench`` prints from them."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from blametrail_devstack.bench import (
    BenchResult,
    cpu_seconds,
    listener_pid,
    load_results,
    postgres_pid,
    process_tree_cpu,
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


async def test_postgres_pid_reads_the_port_of_a_url_or_a_conninfo() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert postgres_pid(f"postgresql://postgres@127.0.0.1:{port}/x") == os.getpid()
        assert postgres_pid(f"host=127.0.0.1 port={port} dbname=x") == os.getpid()
    finally:
        server.close()
        await server.wait_closed()
    assert postgres_pid(f"host=127.0.0.1 port={port} dbname=x") is None


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


_BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_cpu_seconds_count_a_process_and_its_children_alive_and_reaped() -> None:
    """A Postgres server is counted from its listening process: its own time, its live
    backends' and the finished ones it waited for."""
    mine = cpu_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert cpu_seconds(os.getpid()) - mine >= 0.15

    before = process_tree_cpu(os.getpid())
    subprocess.run([sys.executable, "-c", _BURN], check=True)  # reaped: in our children's time
    assert cpu_seconds(os.getpid(), reaped=True) - cpu_seconds(os.getpid()) >= 0.25
    alive = subprocess.Popen([sys.executable, "-c", _BURN + "time.sleep(30)\n"])
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds(alive.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_tree_cpu(os.getpid()) - before >= 0.5  # the reaped child and the live one
    finally:
        alive.kill()
        alive.wait()
    with pytest.raises(FileNotFoundError):  # gone: named, not counted as 0
        cpu_seconds(alive.pid)

"""The reconciler as the processes an operator runs: the service (``python -m
blametrail_reconciler``) sweeping on its schedule and answering ``/readyz``, and ``blametrail
reconcile sweep --connection ID``, against real Kafka and Postgres with the stand-in."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from blametrail_devstack.stack import free_port
from blametrail_devstack.testkit import readyz, spawn, until

ORG = "acme"


def _env(p: Any, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KAFKA_BOOTSTRAP_SERVERS": p.kafka.bootstrap_servers,
        "BLAMETRAIL_TOPIC_PREFIX": p.kafka.topic_prefix,
        "DATABASE_URL": p.dsn,
        "BLAMETRAIL_SECRET_KEYS": p.secret_key,
        "BLAMETRAIL_RECONCILER_SETTLE_S": "0",
        **extra,
    }


async def _status(p: Any, issue_id: str) -> str | None:
    rows = await p.rows(
        "SELECT status FROM incidents WHERE incident_id = %s::uuid", p.incident_of(issue_id)
    )
    return rows[0][0] if rows else None


async def _ok_sweeps(p: Any) -> int:
    rows = await p.rows(
        "SELECT count(*) FROM reconcile_sweeps WHERE connection_id = %s AND outcome = 'ok'",
        p.connection_id,
    )
    return int(rows[0][0])


@pytest.mark.timeout(240)
async def test_the_service_sweeps_on_its_schedule_and_answers_readyz(
    make_pipeline: Any, tmp_path: Path
) -> None:
    async with make_pipeline() as p:
        await p.open_issues(["9600001", "9600002"])
        p.stub.issue_store.set_status(ORG, "9600001", "resolved")
        port = free_port()
        env = _env(
            p,
            BLAMETRAIL_RECONCILER_PORT=str(port),
            BLAMETRAIL_RECONCILER_INTERVAL_S="2",
            BLAMETRAIL_RECONCILER_JITTER="0.2",
            BLAMETRAIL_SHUTDOWN_GRACE_S="10",
        )
        log = tmp_path / "reconciler.log"
        proc = spawn("blametrail_reconciler", env, log)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                seen: list[object] = []

                async def ready() -> bool:
                    status, checks = await readyz(client)
                    seen[:] = [status, checks]
                    return status == 200 and checks == {
                        "sweeps": True,
                        "kafka": True,
                        "postgres": True,
                    }

                try:
                    await until("/readyz 200 with its checks", ready, timeout_s=90)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; last /readyz: {seen}") from None

                async def resolved() -> bool:
                    return await _status(p, "9600001") == "resolved"

                await until("the missed resolution repaired", resolved, timeout_s=90)
                assert await _status(p, "9600002") == "open"

                # on its schedule: more sweeps follow (every ~2 s), and they repair nothing
                async def swept_again() -> bool:
                    return await _ok_sweeps(p) >= 3

                await until("further sweeps on the schedule", swept_again, timeout_s=90)
                repaired = await p.rows(
                    "SELECT count(*) FROM reconcile_repairs r JOIN reconcile_sweeps s"
                    " USING (sweep_id) WHERE s.connection_id = %s",
                    p.connection_id,
                )
                assert repaired == [(1,)]
                metrics = (await client.get("/metrics")).text
                assert 'blametrail_reconcile_repairs_total{kind="resolved"} 1.0' in metrics
                assert 'blametrail_reconcile_sweeps_total{outcome="ok"}' in metrics
                assert "blametrail_reconcile_last_success_timestamp_seconds" in metrics
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 60) == 0
        except BaseException:
            print(log.read_text() if log.exists() else "(no log)")
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    blametrail = Path(sys.executable).with_name("blametrail")
    return subprocess.run(
        [str(blametrail), *args],
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.timeout(300)
async def test_the_sweep_command_prints_what_it_found_and_an_unknown_connection_fails(
    make_pipeline: Any,
) -> None:
    async with make_pipeline() as p:
        await p.open_issues(["9700001", "9700002", "9700003"])
        p.stub.issue_store.set_status(ORG, "9700002", "resolved")
        p.stub.issue_store.set_status(ORG, "9700003", "ignored")
        env = _env(p)
        done = await asyncio.to_thread(
            _cli, env, "reconcile", "sweep", "--connection", p.connection_id
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert re.search(r"incidents compared\D+3\b", out)
        assert "repaired: resolved" in out
        assert "repaired: muted" in out
        assert "issue 9700002 -> incident" in out
        assert "issue 9700003 -> incident" in out
        assert "compare" in out  # the progress bar's stage

        async def repaired() -> bool:
            return (await _status(p, "9700002"), await _status(p, "9700003")) == (
                "resolved",
                "muted",
            )

        await until("the command's repairs folded", repaired, timeout_s=60)
        again = await asyncio.to_thread(
            _cli, env, "reconcile", "sweep", "--connection", p.connection_id
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "0 (nothing missed)" in again.stdout

        unknown = await asyncio.to_thread(
            _cli, env, "reconcile", "sweep", "--connection", "no-such-connection"
        )
        assert unknown.returncode != 0
        assert "no connection 'no-such-connection'" in unknown.stdout
        assert "Traceback" not in unknown.stdout + unknown.stderr

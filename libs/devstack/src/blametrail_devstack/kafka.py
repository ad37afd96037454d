"""A single-node KRaft Kafka broker on loopback, run from the jars the pom fetched."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from blametrail_devstack.install import ensure_java, ensure_kafka_jars

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
# One node: every replication factor and min ISR is 1.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
default.replication.factor=1
min.insync.replicas=1
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
# Sized for 2 cores.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.backoff.ms=1000
log.retention.check.interval.ms=60000
"""

LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
"""


@dataclass(frozen=True)
class KafkaNode:
    home: Path
    port: int
    controller_port: int
    heap: str = "768m"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.home / "broker.pid"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def start(self, timeout_s: float = 90) -> float:
        """Start (formatting storage on first use) and wait until ready; returns seconds taken."""
        began = time.monotonic()
        if self.running_pid() is None:
            self._launch()
        self.wait_ready(timeout_s)
        return time.monotonic() - began

    def _launch(self) -> None:
        java, libs = ensure_java(), ensure_kafka_jars()
        data = self.home / "data"
        self.home.mkdir(parents=True, exist_ok=True)
        props, log4j = self.home / "server.properties", self.home / "log4j.properties"
        props.write_text(
            SERVER_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, data=data
            )
        )
        log4j.write_text(LOG4J.format(log=self.home / "server.log"))
        base = [java, f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{libs}/*"]
        if not (data / "meta.properties").is_file():
            cluster_id = new_cluster_id()
            subprocess.run(
                [*base, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        opts = [
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:ActiveProcessorCount=2",
            "-Djava.awt.headless=true",
        ]
        with open(self.home / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                [*base[:1], *opts, *base[1:], "kafka.Kafka", str(props)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pidfile.write_text(str(proc.pid))

    def wait_ready(self, timeout_s: float) -> None:
        """Ready means a metadata round trip through the admin API succeeds, not an open port."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.running_pid() is None:
                raise RuntimeError(f"Kafka exited during start; see {self.home / 'server.log'}")
            if asyncio.run(metadata_ok(self.bootstrap)):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka not ready after {timeout_s}s; see {self.home}/server.log"
                )
            time.sleep(0.5)

    def stop(self, timeout_s: float = 30, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM (a controlled shutdown), then SIGKILL if it lingers; ``sig=SIGKILL`` is a
        crash (the log recovers at the next start)."""
        pid = self.running_pid()
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _reap(pid)  # started by this process: an exited broker is a zombie until reaped
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)


def new_cluster_id(uuid4: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A KRaft cluster id: a random UUID, base64url without padding, never starting with ``-``
    (the storage tool would take it for an option and refuse to format: one id in 64), as
    Kafka's own ``Uuid.randomUuid`` avoids too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


async def metadata_ok(bootstrap: str) -> bool:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connects while starting
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.describe_cluster()
        return True
    except Exception:
        return False
    finally:
        await admin.close()

"""The local infrastructure: one Kafka broker and one Postgres cluster under a state folder."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path

from blametrail_devstack.kafka import KafkaNode
from blametrail_devstack.postgres import PgCluster

# Ports are picked below Linux's ephemeral range (32768-60999 by default), never from it: an
# outgoing connection takes its source port from that range and could take a picked port before
# its service binds it (a fresh-clone run lost its fault stack to "address already in use").
PORTS = range(20000, 32768)
_handed: set[int] = set()


def free_port() -> int:
    """A loopback port free now, below the ephemeral range, not handed out before by this
    process."""
    for _ in range(1000):
        port = random.choice(PORTS)
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@dataclass(frozen=True)
class LocalStack:
    kafka: KafkaNode
    postgres: PgCluster

    @classmethod
    def at(cls, home: Path, kafka_port: int, pg_port: int) -> LocalStack:
        return cls(
            KafkaNode(home / "kafka", kafka_port, kafka_port + 1),
            PgCluster(home / "postgres", pg_port),
        )

    @classmethod
    def ephemeral(cls, home: Path) -> LocalStack:
        """A stack on free ports (for a test session that must not collide with ``make up``)."""
        kafka_port = free_port()
        while not _free(kafka_port + 1):
            kafka_port = free_port()
        return cls.at(home, kafka_port, free_port())

    def start(self) -> dict[str, float]:
        """Start both (in order: Postgres is quick, Kafka is not); returns seconds per part."""
        return {"postgres": self.postgres.start(), "kafka": self.kafka.start()}

    def stop(self) -> None:
        self.kafka.stop()
        self.postgres.stop()

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "DATABASE_URL": self.postgres.dsn(),
        }


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

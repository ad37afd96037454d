"""A throwaway Postgres cluster on loopback, from Debian's server package.

Postgres refuses to run as root; when we are root the cluster belongs to the ``postgres`` user
the package creates, and its commands run through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from blametrail_devstack.install import postgres_bin

SUPERUSER = "postgres"


@dataclass(frozen=True)
class PgCluster:
    home: Path
    port: int
    database: str = "blametrail"

    @property
    def data(self) -> Path:
        return self.home / "data"

    def dsn(self, database: str | None = None) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database or self.database}"

    def _as_owner(self, *cmd: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            shutil.chown(self.home, owner.pw_uid, owner.pw_gid)
            for parent in self.home.parents:  # the owner must be able to traverse to its home
                if parent.stat().st_mode & 0o001 == 0:
                    parent.chmod(parent.stat().st_mode | 0o001)

    def running(self) -> bool:
        pg_ctl = postgres_bin() / "pg_ctl"
        if not (self.data / "PG_VERSION").is_file():
            return False
        res = subprocess.run(
            self._as_owner(str(pg_ctl), "-D", str(self.data), "status"),
            capture_output=True,
            check=False,
        )
        return res.returncode == 0

    def start(self) -> float:
        began = time.monotonic()
        bindir = postgres_bin()
        self._prepare_home()
        if not (self.data / "PG_VERSION").is_file():
            subprocess.run(
                self._as_owner(
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        if not self.running():
            opts = (
                f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 "
                "-c max_connections=200 -c shared_buffers=256MB"
            )
            subprocess.run(
                self._as_owner(
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.home / "server.log"),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self.create_database(self.database)
        return time.monotonic() - began

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"'.encode())

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``fast`` (clean), or ``immediate`` (a crash: every
        connection cut, recovery from the WAL at the next start)."""
        if not self.running():
            return
        subprocess.run(
            self._as_owner(
                str(postgres_bin() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

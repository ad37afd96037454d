"""Installs what the local stack needs when it is missing: Kafka's jars, a JDK, Maven, Postgres.

Everything comes by package name: the broker's jars from Maven Central through the project's
pom, the rest from Debian's packages. Nothing is installed when it is already there.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
from pathlib import Path

from blametrail_devstack.paths import local_dir, repo_root

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"


CHROMIUM = "/usr/bin/chromium"


def kafka_libs() -> Path:
    return local_dir() / "kafka" / "libs"


def _apt_install(*packages: str) -> None:
    if shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{' '.join(packages)} missing and apt-get is not available: install them"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"devstack: installing {' '.join(packages)} from Debian's packages", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def ensure_java() -> str:
    java = shutil.which("java")
    if java is None:
        _apt_install("default-jre-headless")
        java = shutil.which("java")
    assert java is not None
    return java


def ensure_kafka_jars() -> Path:
    """Fetch the broker's jars into ``.local/kafka/libs`` unless that version is already there."""
    libs = kafka_libs()
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        return libs
    ensure_java()
    if shutil.which("mvn") is None:
        _apt_install("maven")
    pom = repo_root() / "deploy" / "local" / "kafka" / "pom.xml"
    print(f"devstack: fetching Kafka {KAFKA_VERSION} jars from Maven Central", flush=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )
    return libs


def postgres_bin() -> Path:
    """The bin folder of the newest installed Postgres server, installing it when absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major)
    if not found:
        _apt_install("postgresql")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major)
    if not found:
        raise RuntimeError("postgresql installed but no server binary under /usr/lib/postgresql")
    return Path(found[-1]).parent


def _major(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


def ensure_chromium() -> str:
    """Debian's Chromium for the browser tests (Playwright drives it; no browser download)."""
    if not Path(CHROMIUM).exists():
        _apt_install("chromium")
    return CHROMIUM


def ensure_all() -> None:
    ensure_kafka_jars()
    postgres_bin()
    ensure_chromium()

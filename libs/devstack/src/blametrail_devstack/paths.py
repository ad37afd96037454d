"""Where the repository and its ignored state folder are."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package lives in (``BLAMETRAIL_REPO_ROOT`` overrides)."""
    if env := os.environ.get("BLAMETRAIL_REPO_ROOT"):
        return Path(env).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "deploy" / "local" / "kafka" / "pom.xml").is_file():
            return parent
    raise RuntimeError("cannot find the repository root (deploy/local/kafka/pom.xml)")


def local_dir() -> Path:
    """The git-ignored folder holding jars, clusters, logs and stack.env."""
    return repo_root() / ".local"

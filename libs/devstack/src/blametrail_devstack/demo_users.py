"""The demo's admin for the web UI: ``admin@demo.blametrail.test`` in organization ``demo``, with
a generated password written to ``.local/demo-credentials`` (mode 0600) and returned, made with
``blametrail users create`` (once: an existing credentials file is reused)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

from blametrail_devstack.paths import local_dir

__all__ = ["DEMO_ADMIN_EMAIL", "seed_demo_admin"]

DEMO_ADMIN_EMAIL = "admin@demo.blametrail.test"


def seed_demo_admin(org: str = "demo", where: Path | None = None) -> tuple[str, str]:
    """``(email, password)`` of the demo admin, created on first use (the environment names the
    database: ``DATABASE_URL``)."""
    path = (where or local_dir()) / "demo-credentials"
    if path.exists():
        email, password = path.read_text().split("\n")[:2]
        return email.removeprefix("email: "), password.removeprefix("password: ")
    password = secrets.token_urlsafe(15)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "blametrail_common.cli",
            "users",
            "create",
            "--org",
            org,
            "--email",
            DEMO_ADMIN_EMAIL,
            "--name",
            "Demo Admin",
            "--role",
            "admin",
            "--password-stdin",
        ],
        input=password + "\n",
        check=True,
        capture_output=True,
        text=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(f"email: {DEMO_ADMIN_EMAIL}\npassword: {password}\n")
    return DEMO_ADMIN_EMAIL, password

"""Tests that read ``kustomize build`` output need the binary ``make k8s-validate`` installs:
they are marked ``tools`` so ``make test-fast`` (no installs) leaves them to ``make test``."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "objs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.tools)

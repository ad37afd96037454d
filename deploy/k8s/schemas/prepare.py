"""Lay out JSON schemas for kubeconform from packages, with no download at validation time.

Usage: ``python deploy/k8s/schemas/prepare.py OUT_DIR VERSION...`` (``make k8s-validate``).

- Kubernetes: the PyPI package ``kubernetes-validate`` ships the upstream API's JSON schemas
  (``kubernetes-json-schema/v<version>-local-strict``), which reference one shared
  ``/api/_definitions.json``. kubeconform reads one file per kind and resolves references
  against the file's own location, so each file is copied to
  ``OUT_DIR/v<version>-standalone-strict/`` with ``$id`` dropped and the references pointed at
  the copied ``_definitions.json`` by absolute ``file://`` URL.
- Strimzi and CloudNativePG: the schemas committed beside this script
  (``<group>/<kind>_<version>.json``, derived from the operators' CRDs; each names its source in
  ``$comment``), copied to ``OUT_DIR/crds/``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate

HERE = Path(__file__).resolve().parent
SHARED = "/api/_definitions.json"


def _rewrite(node: Any, target: str) -> Any:
    if isinstance(node, dict):
        # Keywords are strings; a dict under "$ref"/"$id" is a property of that name (CRD schemas).
        return {
            k: target + v[len(SHARED) :] if _shared_ref(k, v) else _rewrite(v, target)
            for k, v in node.items()
            if not (k == "$id" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_rewrite(v, target) for v in node]
    return node


def _shared_ref(key: str, value: Any) -> bool:
    return key == "$ref" and isinstance(value, str) and value.startswith(SHARED)


def prepare_kubernetes(out: Path, version: str) -> int:
    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    source = package / f"v{version}-local-strict"
    if not source.is_dir():
        known = sorted(p.name for p in package.iterdir())
        raise SystemExit(f"kubernetes-validate has no schemas for {version}; it has {known}")
    dest = out / f"v{version}-standalone-strict"
    dest.mkdir(parents=True, exist_ok=True)
    target = (dest / "_definitions.json").resolve().as_uri()
    count = 0
    for path in sorted(source.glob("*.json")):
        schema = _rewrite(json.loads(path.read_text(encoding="utf-8")), target)
        (dest / path.name).write_text(json.dumps(schema), encoding="utf-8")
        count += 1
    return count


def prepare_crds(out: Path) -> int:
    dest = out / "crds"
    shutil.rmtree(dest, ignore_errors=True)
    count = 0
    for path in sorted(HERE.glob("*/*.json")):
        json.loads(path.read_text(encoding="utf-8"))  # fail here, not in kubeconform, on bad JSON
        (dest / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / path.parent.name / path.name)
        count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out = Path(argv[0])
    for version in argv[1:]:
        n = prepare_kubernetes(out, version)
        print(
            f"kubernetes {version}: {n} schemas from kubernetes-validate {kubernetes_validate.__version__}"
        )
    print(f"CRDs: {prepare_crds(out)} schemas from {HERE.relative_to(Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# What a user's `pip install lightning-landscape` gets: build the sdist and the wheel, check their metadata and
# contents, install the wheel into a fresh venv (not the development one, not the source tree) and use it there.
# Called by `make wheel`; PY (the python that builds), PYTHON (the one that makes the fresh venv) and TORCH
# (pinned: a bare `torch` would pull a multi-GB CUDA build) come from the Makefile.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
DIST=${DIST:-dist}

rm -rf "$DIST"
"$PY" -m build --outdir "$DIST" .
"$PY" -m twine check --strict "$DIST"/*

# Contents: every module and the typing marker ship, tests/benchmarks/examples/docs and caches do not.
"$PY" - "$DIST" <<'PY'
import pathlib, sys, tarfile, zipfile

dist = pathlib.Path(sys.argv[1])
(wheel,) = dist.glob("*.whl")
(sdist,) = dist.glob("*.tar.gz")
in_wheel = zipfile.ZipFile(wheel).namelist()
in_sdist = [name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name]
source = [p.as_posix() for p in pathlib.Path("lightning_landscape").rglob("*.py") if "__pycache__" not in p.parts]
junk = ("tests/", "benchmarks/", "examples/", "docs/", "configs/", "runs/", ".ci/", "site/")
for label, names in (("wheel", in_wheel), ("sdist", in_sdist)):
    if "lightning_landscape/py.typed" not in names:
        sys.exit(f"{label}: lightning_landscape/py.typed is missing")
    bad = [n for n in names if n.startswith(junk) or "__pycache__" in n or n.endswith((".pyc", ".ckpt", ".png"))]
    if bad:
        sys.exit(f"{label}: files that do not belong in a release: {bad[:10]}")
    # Every module of the source tree ships (a new subpackage the package finder missed would not).
    missing = sorted(set(source) - set(names))
    if missing:
        sys.exit(f"{label}: modules of the source tree missing: {missing[:10]}")
    print(f"{label}: {len(names)} files, every module, py.typed, no tests/benchmarks/examples/caches")
PY

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q "$TORCH"
"$TMP/venv/bin/python" -m pip install -q "$DIST"/*.whl
# From an empty folder, so nothing of the source tree can be imported by accident.
cd "$TMP"
"$TMP/venv/bin/lightning-landscape" --help >/dev/null
"$TMP/venv/bin/python" - <<'PY'
import importlib
import pkgutil
from importlib.metadata import version

import lightning_landscape

assert "site-packages" in lightning_landscape.__file__, lightning_landscape.__file__
assert version("lightning-landscape") == lightning_landscape.__version__, "two version sources disagree"
# Every public module (no `_` in its dotted path) imports, and every name in its `__all__` resolves: the
# lazy top-level names, each subpackage's, whatever the package is split into.
names = modules = 0
for info in pkgutil.walk_packages(lightning_landscape.__path__, "lightning_landscape."):
    if any(part.startswith("_") for part in info.name.split(".")):
        continue
    module = importlib.import_module(info.name)
    modules += 1
    for name in getattr(module, "__all__", []):
        getattr(module, name)
        names += 1
for name in lightning_landscape.__all__:
    getattr(lightning_landscape, name)
    names += 1
print(f"lightning-landscape {lightning_landscape.__version__} from the wheel: `lightning-landscape --help` ran, "
      f"{modules} public modules and {names} public names import")
PY

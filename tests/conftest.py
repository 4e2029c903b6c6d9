"""Shared test set-up: the repository root on ``sys.path`` so tests import ``examples.*`` as configs do."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config: object) -> None:
    """Under ``pytest -n N`` (``make test``: one worker per core) each worker computes on one thread, and so
    do the processes it starts: two workers of two OpenMP threads each on two cores spin against each other
    (measured: the curvature algorithm tests took 6-8x their one-worker time)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)

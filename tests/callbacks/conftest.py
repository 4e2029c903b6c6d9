"""Fixtures of the callback tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._shared import QUIET, torch_threads


@pytest.fixture
def trainer_kwargs(tmp_path: Path) -> dict[str, Any]:
    """A quiet one-CPU Trainer that writes under ``tmp_path``, logs every step and saves no checkpoint."""
    return {
        **QUIET,
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "enable_checkpointing": False,
        "log_every_n_steps": 1,
    }


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment of a child Python: this folder and the repository root importable, one thread."""
    here = Path(__file__).parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent.parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test, restored after (see :func:`torch_threads`)."""
    with torch_threads(1):
        yield

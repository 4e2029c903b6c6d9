"""Fixtures of the callback tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def trainer_kwargs(tmp_path: Path) -> dict[str, Any]:
    return {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }


# Older import path of the event readers (tests outside this folder import them from here).
from tests.callbacks._events import read_event_tags, read_layout_categories, read_scalars  # noqa: E402

__all__ = ["read_event_tags", "read_layout_categories", "read_scalars", "trainer_kwargs"]

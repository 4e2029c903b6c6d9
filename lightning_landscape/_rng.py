"""The one snapshot of the global random generators (torch CPU and CUDA, NumPy, Python) of the package.

Lightning-free: the probes (callbacks) and the multi-seed trainer (resume, ``SeedEnsemble``) both use it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def rng_state(cuda: bool = True) -> dict[str, Any]:
    """Every global generator's state, as plain tensors, ints and lists (CUDA's only with ``cuda``)."""
    # Plain tensors, ints and lists only, so the checkpoint still loads with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_available() else [],
        "numpy": [
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": [int(version), list(py_state), gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Set every global generator to a :func:`rng_state` snapshot."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


@contextmanager
def kept_rng(cuda: bool = True) -> Iterator[None]:
    """Run the block, then put every global generator back as it was (CUDA's too with ``cuda``)."""
    state = rng_state(cuda=cuda)
    try:
        yield
    finally:
        set_rng_state(state)

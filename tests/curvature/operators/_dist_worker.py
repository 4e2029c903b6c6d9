"""Worker for the 2-process gloo test: each rank holds half the batches."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist


def _import_curvature_alone() -> None:
    # Load lightning_landscape.curvature without the package __init__ (which imports the Lightning
    # callbacks): a fast worker start, and a check that the core needs no Lightning.
    spec = importlib.util.find_spec("lightning_landscape")
    assert spec is not None and spec.submodule_search_locations is not None
    package = types.ModuleType("lightning_landscape")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("lightning_landscape", package)


def run(rank: int, port: int, out_dir: str) -> None:
    _import_curvature_alone()
    from lightning_landscape.curvature import hessian_eigenvalues, hessian_trace
    from tests.curvature.cases import case

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        c = case("relu_trained")
        mine = [c.batches[rank]]  # rank 0: 40 samples, rank 1: 24 (unequal: the weighting matters)
        both = hessian_eigenvalues(c.model, c.loss_fn, mine, k=2, which="both", tol=1e-8)
        trace = hessian_trace(c.model, c.loss_fn, mine, num_samples=5, memory="recompute")
        lightning_free = not any(
            name.split(".")[0] in ("lightning", "pytorch_lightning") for name in sys.modules
        )
        torch.save(
            {
                "top": both.eigenvalues,
                "bottom": both.smallest,
                "trace": trace.samples,
                "no_pl": lightning_free,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()

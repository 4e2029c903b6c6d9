"""Worker for the 2-process gloo test of the landscape functions: each rank holds one of two batches."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tests._shared import mse_loss


def build() -> tuple[nn.Module, nn.Module, list[Any]]:
    """Two small float64 MLPs and two batches of unequal size (the weighting matters), deterministic."""
    gen = torch.Generator().manual_seed(0)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(torch.float64))
    x = torch.randn(11, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(11, 2, generator=gen, dtype=torch.float64)
    return models[0], models[1], [(x[:7], y[:7]), (x[7:], y[7:])]


def compute(batches: list[Any]) -> dict[str, Any]:
    from lightning_landscape.landscape import linear_barrier, loss_line, loss_plane, random_directions

    a, b, _ = build()
    d = random_directions(a, 2, seed=0)
    line = loss_line(a, mse_loss, batches, direction=d[0], steps=5)
    return {
        "plane": loss_plane(a, mse_loss, batches, directions=d, steps=4).losses,
        "line": line.losses,
        "slope": line.slope,
        "curvature": line.curvature,
        "barrier": linear_barrier(a, b, mse_loss, batches, steps=5).losses,
    }


def run(rank: int, port: int, out_dir: str) -> None:
    # The landscape core without the package __init__ (which imports the Lightning callbacks): a fast worker
    # start, and a check that it needs no Lightning.
    spec = importlib.util.find_spec("lightning_landscape")
    assert spec is not None and spec.submodule_search_locations is not None
    package = types.ModuleType("lightning_landscape")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("lightning_landscape", package)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        _, _, batches = build()
        out = compute([batches[rank]])
        out["no_pl"] = not any(
            name.split(".")[0] in ("lightning", "pytorch_lightning") for name in sys.modules
        )
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()

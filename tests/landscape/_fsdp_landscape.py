"""Worker for the 2-process gloo FSDP2 test of the landscape functions: the model of ``_dist_landscape`` is
``fully_shard``-ed (each weight's rows split over the ranks), each rank holds one of its two batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tests._shared import mse_loss
from tests.landscape._dist_landscape import build

NORMALIZATIONS = ("filter", "layer", "model")


def full(direction: dict[str, Tensor]) -> dict[str, Tensor]:
    """A sharded direction gathered (plain tensors pass through)."""
    return {n: t.full_tensor() if hasattr(t, "full_tensor") else t for n, t in direction.items()}


def compute(model: nn.Module, batches: list[Any]) -> dict[str, Any]:
    """Everything compared between the sharded and the single-process model (the same code on both)."""
    from lightning_landscape.landscape import hessian_directions, loss_line, loss_plane, random_directions

    d = random_directions(model, 2, seed=0)
    line = loss_line(model, mse_loss, batches, direction=d[0], steps=5)
    default = loss_line(model, mse_loss, batches, steps=3, seed=2)  # its own random direction
    hd = hessian_directions(model, mse_loss, batches, k=2, tol=1e-9)
    along = loss_line(model, mse_loss, batches, direction=hd.directions[0], span=(-0.5, 0.5), steps=3)
    out: dict[str, Any] = {
        "dirs": [full(x) for x in d],
        "plane": loss_plane(model, mse_loss, batches, directions=d, steps=4).losses,
        "line": line.losses,
        "slope": line.slope,
        "curvature": line.curvature,
        "default": default.losses,
        "eigenvalues": hd.eigenvalues,
        "along_curvature": along.curvature,
        "hessian_plane": loss_plane(model, mse_loss, batches, directions=hd.directions, steps=3).losses,
    }
    for normalization in NORMALIZATIONS:  # every path of the sharded norms, biases (1-d) included
        out[normalization] = full(random_directions(model, 1, normalization, seed=3, ignore=None)[0])
    return out


def run(rank: int, port: int, out_dir: str) -> None:
    from tests.curvature.operators._dist_worker import _import_curvature_alone

    _import_curvature_alone()
    from torch.distributed.fsdp import fully_shard

    from lightning_landscape.landscape import loss_line, loss_plane

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model, other, batches = build()
        fully_shard(model[0])
        fully_shard(model)
        params = list(model.parameters())
        before = [p.to_local().clone() for p in params]
        out = compute(model, [batches[rank]])
        out["unchanged"] = all(torch.equal(p.to_local(), b) for p, b in zip(params, before, strict=True))
        out["grads_none"] = all(p.grad is None for p in params)
        out["sharded"] = all(type(p).__name__ == "DTensor" for p in model.parameters())
        # Filters along the last dim (Hugging Face Conv1D): each column spans both ranks' row shards.
        from lightning_landscape.curvature._inputs import make_generator
        from lightning_landscape.landscape import _sharded

        last = ["0.weight", "2.weight"]
        columns = _sharded.random_directions(model, 1, "filter", [], make_generator(3), filters_last=last)[0]
        out["columns"] = {n: (full(columns)[n], p.full_tensor()) for n, p in model.named_parameters()}
        refused = []
        for call in (
            lambda: loss_line(model, mse_loss, [batches[rank]], steps=3, hvp="double_backward"),
            lambda: loss_line(model, mse_loss, [batches[rank]], towards=other),
            lambda: loss_plane(model, mse_loss, [batches[rank]] * (1 + rank), steps=2),  # 1 vs 2 batches
        ):
            try:
                call()
                refused.append("")
            except ValueError as err:
                refused.append(str(err))
        out["refused"] = refused
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()

"""Worker for the 2-process gloo FSDP2 test: the model is ``fully_shard``-ed, each rank holds half the
batches, products are finite differences of sharded gradients."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def compute(model: Any, loss_fn: Any, batches: list[Any]) -> dict[str, Any]:
    """The curvature API's values, the same calls on the sharded and on the single-process model."""
    from lightning_landscape.curvature import hessian_eigenvalues, hessian_trace, spectral_density

    both = hessian_eigenvalues(model, loss_fn, batches, k=2, which="both", tol=1e-6)
    density = spectral_density(model, loss_fn, batches, num_iter=8, num_runs=1)
    return {
        "top": both.eigenvalues,
        "bottom": both.smallest,
        "converged": both.converged,
        "trace": hessian_trace(model, loss_fn, batches, num_samples=4).trace,
        "nodes": density.nodes,
        "weights": density.weights,
    }


def sharded_ritz_values(op: Any, steps: int) -> Tensor:
    """Ritz values of a Lanczos run (full reorthogonalization) on vectors held as shards, built on the
    sharded-vector hook alone (``localize``, ``local_matvec``, ``reduce``): no rank holds a whole vector."""
    gen = torch.Generator().manual_seed(0)
    q = op.localize(torch.randn(op.num_params, generator=gen, dtype=torch.float64).to(op.dtype))
    basis = [q / op.reduce(q @ q).sqrt()]
    products = []
    for _ in range(steps):
        w = op.local_matvec(basis[-1])
        products.append(w)
        Q = torch.stack(basis)
        for _ in range(2):
            w = w - Q.T @ op.reduce(Q @ w)
        basis.append(w / op.reduce(w @ w).sqrt())
    Q, W = torch.stack(basis[:steps]), torch.stack(products)
    T = op.reduce(Q @ W.T)  # T[i, j] = q_i . H q_j
    return torch.linalg.eigvalsh((T + T.T) / 2).flip(0)


def run(rank: int, port: int, out_dir: str) -> None:
    from tests.curvature.operators._dist_worker import _import_curvature_alone

    _import_curvature_alone()
    from torch.distributed.fsdp import fully_shard

    from lightning_landscape.curvature import HessianOperator
    from tests.curvature.cases import case

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        c = case("relu_trained")
        fully_shard(c.model)  # every parameter a DTensor, sharded on dim 0 over the two ranks
        mine = [c.batches[rank]]  # rank 0: 40 samples, rank 1: 24 (unequal: the weighting matters)
        with torch.no_grad():  # leaves FSDP2's root unsharded: the operator must reshard before moving shards
            c.loss_fn(c.model, mine[0])
        api = compute(c.model, c.loss_fn, mine)
        auto = HessianOperator(c.model, c.loss_fn, mine, hvp="auto")
        gen = torch.Generator().manual_seed(1)
        v = torch.randn(auto.num_params, generator=gen, dtype=torch.float64).to(auto.dtype)
        local = auto.localize(v)
        sharded = {
            "round_trip": torch.equal(auto.gather(local), v),
            "local_size": (auto.local_size, local.numel()),
            "local_product": auto.gather(auto.local_matvec(local)),
            "product": auto.matvec(v),
            "ritz": sharded_ritz_values(auto, 30),
        }
        refused = ""
        try:
            HessianOperator(c.model, c.loss_fn, mine, hvp="double_backward")
        except (TypeError, ValueError) as err:
            refused = str(err)
        from lightning_landscape.curvature import hessian_eigenvalues

        pyhessian = ""
        try:
            hessian_eigenvalues(c.model, c.loss_fn, mine, backend="pyhessian")
        except ValueError as err:
            pyhessian = str(err)
        torch.save(
            {
                **api,
                "auto": auto.hvp,
                "refused": refused,
                "pyhessian": pyhessian,
                "sharded": sharded,
                "dtensors": all(type(p).__name__ == "DTensor" for p in c.model.parameters()),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()

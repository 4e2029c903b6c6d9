"""Under FSDP2 (``fully_shard``) the curvature API takes finite-difference products of the sharded
gradients: 2 gloo processes equal the single process (and the dense oracle) within the finite-difference
tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lightning_landscape.curvature import hessian_eigenvalues
from tests.curvature.cases import case, truth
from tests.curvature.operators._fsdp_worker import run
from tests.curvature.operators.test_ddp import free_port

FD_RTOL = 1e-5  # float64 finite differences (tests/curvature/test_hvp_methods.py measures their error)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_gloo_ranks_under_fully_shard_match_single_process(tmp_path: Path) -> None:
    mp.spawn(run, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    c = case("relu_trained")
    single = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, which="both", tol=1e-6)
    dense = truth("relu_trained")
    scale = float(dense.abs().max())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["sharded"], "fully_shard did not turn the parameters into DTensors"
        assert got["converged"]
        torch.testing.assert_close(got["top"], single.eigenvalues, rtol=0, atol=FD_RTOL * scale)
        torch.testing.assert_close(got["bottom"], single.smallest, rtol=0, atol=FD_RTOL * scale)
        torch.testing.assert_close(got["top"], dense.flip(0)[:2], rtol=0, atol=FD_RTOL * scale)
        assert got["auto"] == "finite_difference"
        assert "FSDP" in got["refused"] and "finite_difference" in got["refused"]

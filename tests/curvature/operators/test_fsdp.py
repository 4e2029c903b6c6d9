"""Under FSDP2 (``fully_shard``) the curvature API takes finite-difference products of the sharded
gradients: 2 gloo processes equal the single process (and the dense oracle) within the finite-difference
tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.curvature.cases import case, truth
from tests.curvature.operators._fsdp_worker import compute, run
from tests.curvature.operators.test_ddp import free_port

FD_RTOL = 1e-5  # float64 finite differences (tests/curvature/test_hvp_methods.py measures their error)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_gloo_ranks_under_fully_shard_match_single_process(tmp_path: Path) -> None:
    mp.spawn(run, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    c = case("relu_trained")
    single = compute(c.model, c.loss_fn, c.batches)
    dense = truth("relu_trained")
    scale = float(dense.abs().max())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["dtensors"], "fully_shard did not turn the parameters into DTensors"
        # Vectors held as shards (rank 1 holds empty shards of the (1, 20) weight and the last bias).
        sharded = got["sharded"]
        assert sharded["round_trip"] and sharded["local_size"][0] == sharded["local_size"][1]
        assert sharded["local_size"][0] == (41 if rank == 0 else 20)  # 10 + 10 + 20 + 1, or 10 + 10
        torch.testing.assert_close(sharded["local_product"], sharded["product"], rtol=0, atol=1e-12 * scale)
        top = dense.flip(0)[:2]
        torch.testing.assert_close(sharded["ritz"][:2], top, rtol=0, atol=FD_RTOL * scale)
        assert got["converged"]
        torch.testing.assert_close(got["top"], single["top"], rtol=0, atol=FD_RTOL * scale)
        torch.testing.assert_close(got["bottom"], single["bottom"], rtol=0, atol=FD_RTOL * scale)
        # Trace and density: the same seeded probe vectors, products to finite-difference accuracy (measured:
        # trace 2e-10 relative, Ritz nodes 8e-9, quadrature weights 1.6e-6: near-equal nodes mix them).
        assert got["trace"] == pytest.approx(single["trace"], rel=FD_RTOL)
        torch.testing.assert_close(got["nodes"], single["nodes"], rtol=0, atol=FD_RTOL * scale)
        torch.testing.assert_close(got["weights"], single["weights"], rtol=0, atol=2e-5)
        torch.testing.assert_close(got["top"], dense.flip(0)[:2], rtol=0, atol=FD_RTOL * scale)
        assert got["auto"] == "finite_difference"
        assert "FSDP" in got["refused"] and "finite_difference" in got["refused"]
        assert "`backend`='pyhessian' cannot run under FSDP" in got["pyhessian"]

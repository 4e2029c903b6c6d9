"""Loss lines, planes and directions under FSDP2 (``fully_shard``) on 2 gloo processes equal the single
process over the union of the batches (landscape/_sharded.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.curvature.operators.test_ddp import free_port
from tests.landscape import _dist_landscape, _fsdp_landscape

# Losses and directions: the same float64 arithmetic in another order (measured: <= 4e-16).
EXACT = 1e-12
# Slope, curvature and eigenvalues: float64 finite differences of gradients (measured: <= 3e-9 relative).
FD_RTOL = 1e-6


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_gloo_ranks_under_fully_shard_match_the_single_process_landscape(tmp_path: Path) -> None:
    mp.spawn(_fsdp_landscape.run, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    model, _, batches = _dist_landscape.build()
    single = _fsdp_landscape.compute(model, batches)
    alone = _fsdp_landscape.compute(_dist_landscape.build()[0], batches[:1])
    assert (alone["plane"] - single["plane"]).abs().max() > 1e-3  # the reduction is doing the work
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["sharded"] and got["unchanged"] and got["grads_none"]
        for key in ("plane", "line", "default"):
            torch.testing.assert_close(got[key], single[key], atol=EXACT, rtol=0)
        for key in ("dirs", *_fsdp_landscape.NORMALIZATIONS):
            torch.testing.assert_close(got[key], single[key], atol=EXACT, rtol=0)
        assert got["slope"] == pytest.approx(single["slope"], rel=FD_RTOL, abs=EXACT)
        assert got["curvature"] == pytest.approx(single["curvature"], rel=FD_RTOL)
        torch.testing.assert_close(got["eigenvalues"], single["eigenvalues"], rtol=FD_RTOL, atol=0)
        # Along a unit eigenvector the curvature is its eigenvalue.
        assert got["along_curvature"] == pytest.approx(float(single["eigenvalues"][0]), rel=FD_RTOL)
        # Eigenvectors are defined up to sign: the plane through both is symmetric under either flip.
        flips = [single["hessian_plane"].flip(dims) for dims in ((), (0,), (1,), (0, 1))]
        assert min(float((got["hessian_plane"] - f).abs().max()) for f in flips) < 1e-8
        for d, w in got["columns"].values():
            if w.dim() > 1:  # filters_last: every column of d has its weight column's norm
                torch.testing.assert_close(d.norm(dim=0), w.norm(dim=0), rtol=1e-12, atol=0)
                assert not torch.allclose(d.norm(dim=1), w.norm(dim=1))
            else:  # a bias is one filter across both ranks' shards
                torch.testing.assert_close(d.norm(), w.norm(), rtol=1e-12, atol=0)
        double, towards, uneven = got["refused"]
        assert "FSDP" in double and "finite_difference" in double
        assert "`towards` is not supported under FSDP" in towards
        assert "same number of batches" in uneven and "1 to 2" in uneven

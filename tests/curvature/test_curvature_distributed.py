"""Under torch.distributed each rank multiplies over its own batches; the all-reduced products make every
rank's result equal the single-process one over all batches."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _dist_worker import run
from cases import case

from lightning_landscape.curvature import hessian_eigenvalues, hessian_trace


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_match_single_process(tmp_path: Path) -> None:
    mp.spawn(run, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    c = case("relu_trained")
    single = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, which="both", tol=1e-8)
    trace = hessian_trace(c.model, c.loss_fn, c.batches, num_samples=5)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["top"], single.eigenvalues, rtol=1e-9, atol=0)
        torch.testing.assert_close(got["bottom"], single.smallest, rtol=1e-7, atol=0)
        torch.testing.assert_close(got["trace"], trace.samples, rtol=1e-9, atol=1e-12)
        assert got["no_pl"], "the curvature core imported Lightning"
    # Each rank alone would see a different Hessian: the reduction is doing the work.
    alone = hessian_eigenvalues(c.model, c.loss_fn, c.batches[:1], k=2, tol=1e-8)
    assert (alone.eigenvalues - single.eigenvalues).abs().max() > 1e-3

"""Under torch.distributed each rank multiplies over its own batches; the all-reduced products make every
rank's result equal the single-process one over all batches. The all-reducing operator is chosen once, by the
constructor."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_landscape.curvature import HessianOperator, NonFiniteError, hessian_eigenvalues, hessian_trace
from lightning_landscape.curvature.operators.ddp import DDPHessianOperator
from tests.curvature.cases import case, mse_loss
from tests.curvature.operators._dist_worker import run


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


@pytest.fixture
def one_rank_group(tmp_path: Path) -> Iterator[None]:
    """A gloo process group of one rank in this process (destroyed afterwards: nothing leaks)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_operator_is_chosen_once_by_the_constructor(one_rank_group: None) -> None:
    c = case("relu_init")
    ddp = HessianOperator(c.model, c.loss_fn, c.batches)
    local = HessianOperator(c.model, c.loss_fn, c.batches, distributed=False)
    assert type(ddp) is DDPHessianOperator and ddp.distributed
    assert type(local) is HessianOperator and not local.distributed
    # One rank: the reduction is the identity, so both are the dense Hessian.
    torch.testing.assert_close(ddp.dense(), local.dense(), rtol=1e-12, atol=1e-14)
    assert ddp.total_weight == local.total_weight == 64.0


def test_non_finite_loss_is_raised_in_the_reduction(one_rank_group: None) -> None:
    # No rank may raise alone (the others would wait in the collective forever): the operator is built,
    # and the first product's all-reduce carries the flag.
    c = case("relu_init")
    nan_loss = lambda m, b: mse_loss(m, b) * float("nan")  # noqa: E731
    op = HessianOperator(c.model, nan_loss, c.batches, memory="reuse")
    with pytest.raises(NonFiniteError, match="The loss is not finite on this rank"):
        op.matvec(torch.ones(op.num_params, dtype=torch.float64))
    with pytest.raises(NonFiniteError, match="The loss is not finite \\(nan\\) on batch 0"):
        HessianOperator(c.model, nan_loss, c.batches, memory="reuse", distributed=False)


def test_distributed_true_without_a_group_fails_like_before() -> None:
    c = case("relu_init")
    assert not (dist.is_available() and dist.is_initialized())
    assert type(HessianOperator(c.model, c.loss_fn, c.batches)) is HessianOperator
    with pytest.raises((RuntimeError, ValueError)):
        HessianOperator(c.model, c.loss_fn, c.batches, distributed=True)

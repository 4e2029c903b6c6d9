"""The operator protocol's helpers: one block product or a loop, and random vectors that a seed fixes."""

from __future__ import annotations

import pytest
import torch

from lightning_landscape.curvature._inputs import make_generator
from lightning_landscape.curvature.operators.base import (
    DenseOperator,
    apply_block,
    matvec_into,
    random_vector,
)
from tests.curvature.cases import DiagOperator


def test_apply_block_uses_matmat_or_loops() -> None:
    values = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    V = torch.arange(6.0, dtype=torch.float64).reshape(3, 2)
    dense, diag = DenseOperator(torch.diag(values)), DiagOperator(values)
    want = values[:, None] * V
    torch.testing.assert_close(apply_block(dense, V), want, rtol=0, atol=0)
    torch.testing.assert_close(apply_block(diag, V), want, rtol=0, atol=0)  # no matmat: one matvec per column
    assert dense.num_products == diag.num_products == 2


def test_random_vectors_are_fixed_by_the_seed_on_every_dtype() -> None:
    op64 = DenseOperator(torch.eye(50, dtype=torch.float64))
    op32 = DenseOperator(torch.eye(50, dtype=torch.float32))
    a = random_vector(op64, make_generator(7))
    b = random_vector(op32, make_generator(7))
    assert a.dtype == torch.float64 and b.dtype == torch.float32
    torch.testing.assert_close(b, a.float(), rtol=0, atol=0)  # drawn in float64, then cast
    z = random_vector(op64, make_generator(7), rademacher=True)
    assert set(z.tolist()) == {-1.0, 1.0}


def test_matvec_into_writes_in_place_or_copies() -> None:
    values = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for op in (DenseOperator(torch.diag(values)), DiagOperator(values)):  # DiagOperator: matvec only
        out = torch.full((3,), float("nan"), dtype=torch.float64)
        assert matvec_into(op, v, out) is out
        torch.testing.assert_close(out, values * v, rtol=0, atol=0)


def test_random_vectors_drawn_in_chunks_equal_one_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_landscape.curvature.operators import base

    monkeypatch.setattr(base, "_DRAW_CHUNK", 16)  # e.g. 1000 = 61 chunks of 16 + one of 24
    for n in (5, 17, 40, 1000):
        op32 = DenseOperator(torch.eye(n, dtype=torch.float32))
        for rademacher in (False, True):
            gen = make_generator(3)
            if rademacher:
                want = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
            else:
                want = torch.randn(n, generator=gen, dtype=torch.float64)
            out = torch.empty(n)
            got = random_vector(op32, make_generator(3), rademacher=rademacher, out=out)
            assert got is out
            torch.testing.assert_close(got, want.float(), rtol=0, atol=0)

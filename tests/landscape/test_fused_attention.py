"""Every second-order path through fused scaled-dot-product attention (issue 17).

The model calls ``F.scaled_dot_product_attention`` with torch's own kernel choice: on the CPU that is the
flash kernel, whose backward has no derivative ("derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"). The first test checks
that precondition, so the others cannot pass for the wrong reason. Ground truth: the dense float64 oracle
(:func:`tests.oracle.dense_hessian`, math kernel) and the gradient by plain autograd.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_landscape.landscape import hessian_directions, loss_line, random_directions
from lightning_landscape.landscape.directions import flatten, named_trainable
from tests.curvature.cases import Case, dense_hessian

DT = torch.float64


class TinyAttention(nn.Module):
    """Embedding, one causal self-attention head through F.scaled_dot_product_attention, a vocabulary head."""

    def __init__(self, vocab: int = 5, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)  # [batch, 1 head, time, dim]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        return self.head(torch.tanh(h + a))


def lm_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def attention_case(seed: int = 0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tokens = torch.randint(0, 5, (6, 6), generator=gen)
    return Case("attention", TinyAttention().to(DT), lm_loss, [tokens[:4], tokens[4:]])


@functools.cache
def _dense() -> Tensor:
    """The oracle's dense float64 Hessian of :func:`attention_case` (seed 0), once per process."""
    return dense_hessian(attention_case())


def _mean_loss(c: Case) -> Tensor:
    sizes = [b.shape[0] for b in c.batches]
    return sum(c.loss_fn(c.model, b) * n for b, n in zip(c.batches, sizes, strict=True)) / sum(sizes)


def test_the_default_kernel_has_no_double_backward() -> None:
    c = attention_case()
    params = list(c.model.parameters())
    grads = torch.autograd.grad(_mean_loss(c), params, create_graph=True)
    gv = sum((g * torch.ones_like(g)).sum() for g in grads)
    with pytest.raises(RuntimeError, match="flash_attention"):
        torch.autograd.grad(gv, params)


def test_loss_line_slope_and_curvature_through_fused_attention() -> None:
    c = attention_case()
    d = random_directions(c.model, 1, seed=1)[0]
    line = loss_line(c.model, c.loss_fn, c.batches, direction=d, span=(-0.1, 0.1), steps=5)
    weights = named_trainable(c.model)
    v = flatten(d, weights)
    grads = torch.autograd.grad(_mean_loss(c), list(weights.values()))
    slope = float(torch.cat([g.reshape(-1) for g in grads]) @ v)
    curvature = float(v @ _dense() @ v)
    assert line.slope == pytest.approx(slope, rel=1e-9, abs=1e-12)
    assert line.curvature == pytest.approx(curvature, rel=1e-8, abs=1e-12)
    assert c.model.training  # left as found


def test_hessian_directions_through_fused_attention() -> None:
    c = attention_case()
    H = _dense()
    evals = torch.linalg.eigvalsh(H)
    dirs, values, converged = hessian_directions(c.model, c.loss_fn, c.batches, k=2, tol=1e-8)
    assert converged
    torch.testing.assert_close(values, evals.flip(0)[:2], rtol=1e-6, atol=1e-9)
    for d, lam in zip(dirs, values.tolist(), strict=True):
        v = flatten(d, named_trainable(c.model))
        torch.testing.assert_close(H @ v, lam * v, atol=1e-6 * abs(lam) + 1e-9, rtol=0)


def test_finite_differences_through_fused_attention_need_no_math_kernel() -> None:
    c = attention_case()
    H = _dense()
    dirs, values, _ = hessian_directions(
        c.model, c.loss_fn, c.batches, k=1, tol=1e-6, hvp="finite_difference"
    )
    assert float(values[0]) == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-5)
    line = loss_line(
        c.model, c.loss_fn, c.batches, direction=dirs[0], span=(-0.1, 0.1), steps=5, hvp="finite_difference"
    )
    assert line.curvature == pytest.approx(float(values[0]), rel=1e-5)

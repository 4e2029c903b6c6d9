"""Model fixtures for the curvature tests: every solver meets every case.

Each case is float64 (tight tolerances), tiny (dense Hessians in well under a second) and comes with an
independent dense truth: :func:`tests.oracle.dense_hessian` (plain autograd double backward, a different code
path from ``HessianOperator``), eigenvalues by ``torch.linalg.eigvalsh``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature import EigenResult
from tests import oracle
from tests._shared import mse_loss

DTYPE = torch.float64


@dataclass
class Case:
    name: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], Tensor]
    batches: list[Any]


def shallow_relu(trained: bool = False, seed: int = 0) -> Case:
    """1-20-1 ReLU net, x ~ U[0, 1], target x^2 + 2x; at init or after 200 Adam steps."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1)).to(DTYPE)
    x = torch.rand(64, 1, generator=gen, dtype=DTYPE)
    y = x**2 + 2 * x
    batches = [(x[:40], y[:40]), (x[40:], y[40:])]  # unequal sizes: the weighting matters
    if trained:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(200):
            opt.zero_grad()
            mse_loss(model, (x, y)).backward()
            opt.step()
        model.zero_grad(set_to_none=True)
    return Case("relu_trained" if trained else "relu_init", model, mse_loss, batches)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def ce_dict_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return nn.functional.cross_entropy(model(batch["x"]), batch["y"])


def small_cnn(seed: int = 0) -> Case:
    """Conv-BatchNorm-ReLU-Linear on 6x6 images, 3 classes, dict batches; BN has non-trivial running stats."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN().to(DTYPE)
    x = torch.randn(24, 1, 6, 6, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (24,), generator=gen)
    with torch.no_grad():  # running statistics away from their (0, 1) defaults
        model.train()
        model(x)
        model.eval()
    model.train()
    return Case("cnn_bn", model, ce_dict_loss, [{"x": x[:12], "y": y[:12]}, {"x": x[12:], "y": y[12:]}])


def transformer_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    inputs, target = batch
    return nn.functional.nll_loss(model(inputs, target), target.reshape(-1))


def tiny_transformer(seed: int = 0) -> Case:
    """Lightning's demo Transformer at tiny width; its attention is scaled-dot-product attention."""
    # Imported here: Lightning is slow to import and the distributed workers do not need it.
    from lightning.pytorch.demos.transformer import Transformer

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Transformer(vocab_size=5, ninp=2, nhead=1, nhid=2, nlayers=1, dropout=0.1).to(DTYPE)
    tokens = torch.randint(0, 5, (4, 4), generator=gen)
    return Case("transformer", model, transformer_loss, [(tokens[:, :3], tokens[:, 1:])])


BUILDERS: dict[str, Callable[[], Case]] = {
    "relu_init": lambda: shallow_relu(trained=False),
    "relu_trained": lambda: shallow_relu(trained=True),
    "cnn_bn": small_cnn,
    "transformer": tiny_transformer,
}
CASE_NAMES = list(BUILDERS)


def dense_hessian(case: Case, train_mode: bool = False) -> Tensor:
    """The n x n Hessian of the batch-weighted mean loss w.r.t. the trainable parameters."""
    return oracle.dense_hessian(case.model, case.loss_fn, case.batches, train_mode=train_mode)


@functools.cache
def truth(name: str, train_mode: bool = False) -> Tensor:
    """Ascending float64 eigenvalues of the dense Hessian of case ``name`` (cached per process)."""
    return torch.linalg.eigvalsh(dense_hessian(BUILDERS[name](), train_mode))


def case(name: str) -> Case:
    """A fresh instance of case ``name`` (tests may not share mutable models)."""
    return BUILDERS[name]()


class DiagOperator:
    """An analytic operator: diag(values), with a product count (``matvec`` only: no ``matmat``)."""

    def __init__(self, values: Tensor) -> None:
        self.values = values.to(torch.float64)
        self.num_params = values.numel()
        self.dtype = torch.float64
        self.device = torch.device("cpu")
        self.num_products = 0

    def matvec(self, v: Tensor) -> Tensor:
        self.num_products += 1
        return self.values * v


class CountingLoss:
    """Counts its calls (default: the MSE loss): argument errors must come before any evaluation."""

    def __init__(self, loss_fn: Callable[[nn.Module, Any], Tensor] = mse_loss) -> None:
        self.loss_fn = loss_fn
        self.calls = 0

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        self.calls += 1
        return self.loss_fn(model, batch)


def rel_err(got: Tensor, want: Tensor) -> float:
    """The largest relative error of ``got`` against ``want``."""
    return float(((got - want).abs() / want.abs()).max())


def moved(c: Case, scale: float = 1e-2, seed: int = 1) -> Case:
    """``c`` after a small step: each parameter moves by ``scale`` of its RMS value in a random direction."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in c.model.parameters():
            rms = p.norm() / p.numel() ** 0.5
            p.add_(scale * rms * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return c


def ritz_block(res: EigenResult) -> torch.Tensor:
    assert res.eigenvectors is not None
    if res.smallest_eigenvectors is None:
        return res.eigenvectors
    return torch.cat([res.eigenvectors, res.smallest_eigenvectors])

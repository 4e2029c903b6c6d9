r"""Adaptive sharpness: how much the loss can rise within an element-wise scaled ball around the weights.

For weights :math:`w`, the loss :math:`L` (the batch-size-weighted mean of ``loss_fn(model, batch)`` over
fixed batches), a radius :math:`\rho` and the scale :math:`c = |w|` (Kwon et al. 2021, "ASAM"; Andriushchenko
et al. 2023, "A modern look at the relationship between sharpness and generalization"):

.. math::

    S_{\max}^\rho(w) = \max_{\|\delta \oslash c\|_p \le \rho} L(w + \delta) - L(w), \qquad
    S_{\mathrm{avg}}^\rho(w) = \mathbb{E}_{\delta}\, L(w + \delta) - L(w),

with :math:`\delta = c \odot \rho z`; :math:`z \sim \mathcal N(0, I)` for :math:`p = 2` (Andriushchenko et
al.'s average case, :math:`\delta \sim \mathcal N(0, \rho^2 \mathrm{diag}(c^2))`) and :math:`z` uniform in
:math:`[-1, 1]^n` for :math:`p = \infty`, drawn in antithetic pairs :math:`(z, -z)` (same expectation; the
first-order term of the loss cancels exactly, so away from a minimum the mean is not drowned by it).

Because the scale moves with the weights, both are invariant to the rescaling symmetries of ReLU networks
(multiply a hidden unit's incoming weights by :math:`a > 0` and its outgoing weights by :math:`1/a`): the
scaled perturbation sets of the two parametrizations map onto each other. ``elementwise_scale=None`` gives the
plain (non-adaptive) sharpness, :math:`c = 1`, which is not invariant.

The worst case is found by projected gradient ascent in the scaled variable :math:`u = \delta \oslash c`,
:math:`\|u\|_p \le \rho`: the first step follows the gradient at :math:`w` (ASAM's step; a seeded random
direction where that gradient is zero, e.g. at an exact minimum), each step moves by :math:`\rho` along the
normalized scaled gradient :math:`c \odot \nabla L` (its sign for :math:`p = \infty`) and projects back onto
the ball. The largest loss met on the way is reported: a lower bound of the true maximum (gradient ascent on
a non-concave function), exact for a quadratic at its minimum once the steps have converged (then the steps
are a power iteration).

Pure PyTorch (no Lightning). Parameters are substituted in the call (``torch.func.functional_call``), never
written: the model's parameters, buffers (copies absorb train-mode BatchNorm updates), ``.grad``,
``requires_grad``, train/eval flags and the global RNG are left exactly as found.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_landscape.curvature import batch_size
from lightning_landscape.curvature._checks import check_choice, check_int, check_positive
from lightning_landscape.curvature._inputs import LossFn, LossOf, validate_inputs

Norm = Literal[2, "inf"]
Kind = Literal["worst", "average"]


@dataclass(frozen=True)
class SharpnessResult:
    """What :func:`adaptive_sharpness` measured.

    Attributes:
        value: :math:`\\max` (``kind="worst"``) or mean (``"average"``) of :math:`L(w + \\delta)`, minus
            ``base_loss``.
        base_loss: :math:`L(w)`, the loss at the weights.
        perturbed_loss: ``base_loss + value``.
        rho: the radius of the scaled ball (the scale of the Gaussian for ``p=2`` on average).
        p: ``2`` or ``"inf"``.
        kind: ``"worst"`` or ``"average"``.
        elementwise_scale: ``"abs"`` (adaptive) or ``None`` (plain).
        num_evaluations: forward passes over all batches (with a backward for each ascent step).
    """

    value: float
    base_loss: float
    perturbed_loss: float
    rho: float
    p: Norm
    kind: Kind
    elementwise_scale: Literal["abs"] | None
    num_evaluations: int


@contextlib.contextmanager
def _kept(model: nn.Module, train_mode: bool) -> Iterator[None]:
    """Eval mode (unless ``train_mode``) and a forked global RNG; every flag and RNG state restored after."""
    modes = [(m, m.training) for m in model.modules()]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            if not train_mode:
                model.eval()
            yield
    finally:
        for m, training in modes:
            m.training = training


def _norm_arg(p: Any) -> Norm:
    if isinstance(p, str) and p == "inf":
        return "inf"
    if not isinstance(p, bool) and isinstance(p, (int, float)):
        if p == 2:
            return 2
        if math.isinf(p) and p > 0:
            return "inf"
    raise ValueError(f"`p` must be 2 or 'inf' (float('inf') too), got {p!r}.")


class _Probe:
    """The loss at :math:`w + c \\odot u` over the fixed batches, with its gradient in :math:`u` on demand."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: list[Any], scale: Literal["abs"] | None):
        self.wrapper = LossOf(model, loss_fn)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [f"model.{n}" for n, _ in named]
        self.w = [p.detach() for _, p in named]
        self.c = [w.abs() if scale == "abs" else torch.ones_like(w) for w in self.w]
        self.buffers = [(f"model.{n}", b) for n, b in model.named_buffers()]
        self.batches = batches
        sizes = [float(batch_size(b)) for b in batches]
        self.weights = [s / sum(sizes) for s in sizes]
        self.evaluations = 0

    def loss(self, u: list[Tensor] | None) -> Tensor:
        self.evaluations += 1
        points = self.w if u is None else [w + c * x for w, c, x in zip(self.w, self.c, u, strict=True)]
        total: Tensor | None = None
        for weight, batch in zip(self.weights, self.batches, strict=True):
            # Fresh buffer copies per batch: what a train-mode forward writes never reaches the model.
            mapping = {
                **dict(zip(self.names, points, strict=True)),
                **{n: b.clone() for n, b in self.buffers},
            }
            term = functional_call(self.wrapper, mapping, (batch,), tie_weights=True, strict=False) * weight
            total = term if total is None else total + term
        assert total is not None
        return total

    def loss_and_grad(self, u: list[Tensor]) -> tuple[float, list[Tensor]]:
        leaves = [x.detach().requires_grad_(True) for x in u]
        with torch.enable_grad():
            loss = self.loss(leaves)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return float(loss.detach()), [
            torch.zeros_like(x) if g is None else g.detach() for x, g in zip(leaves, grads, strict=True)
        ]


def _flat_norm(ts: list[Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.double()) for t in ts])))


def _step(u: list[Tensor], g: list[Tensor], rho: float, p: Norm) -> list[Tensor]:
    """One ascent step of length ``rho`` in the scaled variable, projected back onto the ball."""
    if p == "inf":
        return [(x + rho * gi.sign()).clamp(-rho, rho) for x, gi in zip(u, g, strict=True)]
    gnorm = _flat_norm(g)
    moved = [x + rho * gi / gnorm for x, gi in zip(u, g, strict=True)]
    norm = _flat_norm(moved)
    return [x * (rho / norm) for x in moved] if norm > rho else moved


def _random(w: list[Tensor], gen: torch.Generator, p: Norm) -> list[Tensor]:
    # Drawn on the CPU in float64 from a private generator: the same numbers on every device and dtype.
    out = []
    for x in w:
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if p == "inf":
            z = torch.rand(x.shape, generator=gen, dtype=torch.float64) * 2 - 1
        out.append(z.to(device=x.device, dtype=x.dtype))
    return out


def adaptive_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    rho: float,
    p: Norm = 2,
    kind: Kind = "worst",
    *,
    steps: int = 10,
    samples: int = 16,
    seed: int = 0,
    elementwise_scale: Literal["abs"] | None = "abs",
    train_mode: bool = False,
) -> SharpnessResult:
    r"""Worst-case or average adaptive sharpness of a model's mean loss over fixed batches.

    See the module docstring for the definitions (Kwon et al. 2021; Andriushchenko et al. 2023). The loss is
    the batch-size-weighted mean of ``loss_fn(model, batch)`` over ``batches``, in eval mode unless
    ``train_mode``; only trainable parameters are perturbed. For m-sharpness (the average over batches of each
    batch's own worst case), call this once per batch and average.

    Args:
        model: the model.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        rho: the radius :math:`\rho > 0` of the scaled ball (of the Gaussian for ``p=2``, ``"average"``).
        p: ``2`` or ``"inf"`` (``float("inf")`` too): the norm of the ball.
        kind: ``"worst"`` (projected gradient ascent, ``steps`` gradients) or ``"average"`` (``samples``
            random perturbations).
        steps: ascent steps for ``"worst"`` (each one forward and backward over the batches).
        samples: random perturbations for ``"average"``.
        seed: seeds the private CPU generator of random starts and perturbations (not the global RNG).
        elementwise_scale: ``"abs"`` for :math:`c = |w|` (adaptive, a weight at zero is not perturbed) or
            ``None`` for :math:`c = 1` (plain sharpness).
        train_mode: evaluate with the model's own train/eval flags (dropout draws from the forked global RNG).

    Returns:
        A :class:`SharpnessResult`.

    Raises:
        TypeError: for a non-module ``model``, a non-callable ``loss_fn`` or ``batches`` that is not a list.
        ValueError: for empty ``batches``, no trainable parameters, ``rho`` not > 0, a bad ``p``, ``kind``,
            ``steps``, ``samples`` or ``elementwise_scale``, a loss that is not a scalar, or a loss at ``w``
            that is not finite.

    Example:
        >>> model = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        >>> x = torch.eye(2)
        >>> loss = lambda m, b: 0.5 * (m(b) ** 2).sum()  # 0.5 |w|^2: Hessian I
        >>> res = adaptive_sharpness(model, loss, [x], rho=0.1, elementwise_scale=None)
        >>> round(res.value, 6)  # rho |w| + rho^2 / 2: the ascent goes along w
        0.228607
        >>> res = adaptive_sharpness(model, loss, [x], rho=0.1, p="inf")  # |delta_i| <= 0.1 |w_i|
        >>> round(res.value, 6)  # at delta = 0.1 w: 0.1 |w|^2 + 0.005 |w|^2
        0.525
    """
    batches = validate_inputs(model, loss_fn, batches)
    check_positive("rho", rho)
    norm = _norm_arg(p)
    check_choice("kind", kind, ("worst", "average"))
    check_int("steps", steps)
    check_int("samples", samples)
    check_int("seed", seed, minimum=0)
    if elementwise_scale not in ("abs", None):
        raise ValueError(f"`elementwise_scale` must be 'abs' or None, got {elementwise_scale!r}.")
    rho = float(rho)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    with _kept(model, train_mode):
        probe = _Probe(model, loss_fn, batches, elementwise_scale)
        zero = [torch.zeros_like(w) for w in probe.w]
        if kind == "average":
            with torch.no_grad():
                base = float(probe.loss(None))
                _check_base(base)
                total = 0.0
                for i in range(samples):
                    if i % 2 == 0:
                        z = _random(probe.w, gen, norm)
                    sign = rho if i % 2 == 0 else -rho
                    total += float(probe.loss([sign * x for x in z]))
            best = total / samples
        else:
            # Gradients are taken in u, so they are already the scaled gradients c * grad L(w + delta).
            base, scaled = probe.loss_and_grad(zero)
            _check_base(base)
            if _flat_norm(scaled) == 0.0:
                # A stationary point (or every scaled coordinate zero): start from a random direction.
                scaled = _random(probe.w, gen, norm)
            u = _step(zero, scaled, rho, norm)
            best = -math.inf
            for i in range(steps):
                if i == steps - 1:
                    with torch.no_grad():
                        best = max(best, float(probe.loss(u)))
                    break
                value, scaled = probe.loss_and_grad(u)
                best = max(best, value)
                if _flat_norm(scaled) == 0.0:
                    break
                u = _step(u, scaled, rho, norm)
    return SharpnessResult(
        value=best - base,
        base_loss=base,
        perturbed_loss=best,
        rho=rho,
        p=norm,
        kind=kind,
        elementwise_scale=elementwise_scale,
        num_evaluations=probe.evaluations,
    )


def _check_base(base: float) -> None:
    if not math.isfinite(base):
        raise ValueError(f"the loss at the weights is not finite ({base}): sharpness is undefined there.")


__all__ = ["SharpnessResult", "adaptive_sharpness"]

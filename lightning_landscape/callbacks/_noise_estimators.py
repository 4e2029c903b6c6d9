r"""The gradient noise scale's estimators, pure PyTorch (no Lightning import): usable and testable alone.

McCandlish et al. 2018 ("An empirical model of large-batch training", appendix A): for the gradient
:math:`G_B` of the mean loss over a batch of :math:`B` samples drawn independently,
:math:`\mathbb E |G_B|^2 = |G|^2 + \mathrm{tr}(\Sigma) / B`, with :math:`G` the true gradient and
:math:`\Sigma` the per-sample gradient covariance. Two batch sizes :math:`B_s < B_b` give the unbiased
estimators

.. math::

    |\mathcal G|^2 = \frac{B_b |G_{B_b}|^2 - B_s |G_{B_s}|^2}{B_b - B_s}, \qquad
    \mathcal S = \frac{|G_{B_s}|^2 - |G_{B_b}|^2}{1/B_s - 1/B_b},

and the simple noise scale :math:`B_\mathrm{simple} = \mathrm{tr}(\Sigma) / |G|^2`, taken (as in the paper
and GPT-NeoX's ``gradient_noise_scale.py``) as the ratio of the exponential moving averages of the two
estimators, since the ratio of two noisy estimates is biased.

:func:`chunk_gradient_norms` gives :math:`|G_{B_s}|^2` (the mean over equal chunks of a batch) and
:math:`|G_{B_b}|^2` (the whole batch) on one device, with per-chunk gradients from ``torch.func``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_landscape.curvature._inputs import LossFn, LossOf


def unbiased_estimates(small_sq: float, big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    r"""``(grad_sq, trace_cov)``: McCandlish et al.'s unbiased :math:`|G|^2` and :math:`\mathrm{tr}(\Sigma)`.

    Args:
        small_sq: :math:`|G_{B_s}|^2` (the mean over several small batches lowers its variance).
        big_sq: :math:`|G_{B_b}|^2`.
        b_small: :math:`B_s > 0`.
        b_big: :math:`B_b > B_s`.

    Raises:
        ValueError: unless ``0 < b_small < b_big``.

    Example:
        >>> # E|G_B|^2 = |G|^2 + tr(S) / B with |G|^2 = 1, tr(S) = 8: B = 2 gives 5, B = 8 gives 2.
        >>> unbiased_estimates(5.0, 2.0, 2, 8)
        (1.0, 8.0)
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"the batch sizes must satisfy 0 < b_small < b_big, got {b_small} and {b_big}.")
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace_cov = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace_cov


class DebiasedEMA:
    r"""An exponential moving average with Adam's bias correction (as GPT-NeoX smooths the noise scale).

    After values :math:`x_1, \dots, x_t`: :math:`m_t = \beta m_{t-1} + (1 - \beta) x_t`, :math:`m_0 = 0`, and
    :attr:`value` :math:`= m_t / (1 - \beta^t)`, a weighted mean of the values with weights
    :math:`\propto \beta^{t - i}` (the first value alone after one update).

    Example:
        >>> ema = DebiasedEMA(0.5)
        >>> ema.update(4.0); ema.update(1.0); ema.value  # (0.5 * 4 + 1) / 1.5
        2.0
    """

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)
        self.mean = 0.0
        self.count = 0

    def update(self, x: float) -> None:
        self.mean = self.decay * self.mean + (1.0 - self.decay) * float(x)
        self.count += 1

    @property
    def value(self) -> float:
        if self.count == 0:
            return float("nan")
        return self.mean / (1.0 - self.decay**self.count)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": float(self.count)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mean = float(state.get("mean", 0.0))
        self.count = int(state.get("count", 0))


@dataclass(frozen=True)
class ChunkNorms:
    """Squared gradient norms of one batch cut into ``num_chunks`` chunks of ``b_small`` samples."""

    small_sq: float
    """Mean over the chunks of the squared norm of the chunk's mean-loss gradient."""
    big_sq: float
    """Squared norm of the mean of the chunk gradients (the gradient of the ``b_big`` samples used)."""
    b_small: int
    b_big: int


class _Leaf:
    def __init__(self, index: int) -> None:
        self.index = index


def _template(batch: Any, leaves: list[Tensor]) -> Any:
    if isinstance(batch, Tensor):
        leaves.append(batch)
        return _Leaf(len(leaves) - 1)
    if isinstance(batch, Mapping):
        return {k: _template(v, leaves) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [_template(v, leaves) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def _rebuild(template: Any, leaves: list[Tensor] | tuple[Tensor, ...]) -> Any:
    if isinstance(template, _Leaf):
        return leaves[template.index]
    if isinstance(template, Mapping):
        return {k: _rebuild(v, leaves) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        items = [_rebuild(v, leaves) for v in template]
        return type(template)(*items) if hasattr(template, "_fields") else type(template)(items)
    return template


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Norms in at least float32: squared half-precision norms overflow (GPT-NeoX's note).
    return torch.promote_types(dtype, torch.float32)


_warned: set[str] = set()


def chunk_gradient_norms(
    model: nn.Module, loss_fn: LossFn, batch: Any, num_chunks: int, *, vectorize: bool = True
) -> ChunkNorms | None:
    """Per-chunk and whole-batch squared gradient norms of ``loss_fn(model, batch)``, leaving no trace.

    The batch (a tensor or a nested tuple/list/dict of tensors whose first dimension is the sample) is cut
    into ``num_chunks`` equal chunks of ``B // num_chunks`` samples (the remainder is left out; at most ``B``
    chunks). Each chunk's gradient of its mean loss comes from ``torch.func.grad`` under ``vmap`` (one
    batched pass; a loop over the chunks where ``vmap`` cannot run the loss, with one warning). Only trainable
    parameters count. The model's own train/eval flags are used (this is the training gradient); buffers are
    substituted by copies, the global RNG is forked, no ``.grad`` is touched.

    Returns:
        A :class:`ChunkNorms`, or ``None`` if the batch has fewer than 2 samples.

    Example:
        >>> model = nn.Linear(1, 1, bias=False)
        >>> _ = model.weight.data.fill_(0.0)
        >>> x, y = torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0], [3.0]])
        >>> norms = chunk_gradient_norms(model, lambda m, b: 0.5 * ((m(b[0]) - b[1]) ** 2).mean(), (x, y), 2)
        >>> norms.small_sq, norms.big_sq, norms.b_small, norms.b_big  # per-sample grads -1, -3; mean -2
        (5.0, 4.0, 1, 2)
    """
    leaves: list[Tensor] = []
    template = _template(batch, leaves)
    if not leaves or leaves[0].dim() == 0:
        return None
    size = int(leaves[0].shape[0])
    chunks = min(int(num_chunks), size)
    if chunks < 2:
        return None
    b_small = size // chunks
    used = b_small * chunks
    split = [t[:used].reshape(chunks, b_small, *t.shape[1:]) for t in leaves]
    wrapper = LossOf(model, loss_fn)
    named = [(f"model.{n}", p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    params = tuple(p.detach() for _, p in named)
    buffers = [(f"model.{n}", b) for n, b in model.named_buffers()]

    def chunk_loss(ps: tuple[Tensor, ...], chunk: tuple[Tensor, ...]) -> Tensor:
        mapping = {**dict(zip(names, ps, strict=True)), **{n: b.clone() for n, b in buffers}}
        return functional_call(wrapper, mapping, (_rebuild(template, chunk),), tie_weights=True, strict=False)

    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        grads: tuple[Tensor, ...] | None = None
        if vectorize:
            try:
                batched = vmap(grad(chunk_loss), in_dims=(None, 0), randomness="different")
                grads = batched(params, tuple(split))
            except (RuntimeError, NotImplementedError, ValueError) as err:
                key = type(model).__name__
                if key not in _warned:
                    _warned.add(key)
                    warnings.warn(
                        f"per-chunk gradients of {key} could not be vectorized ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]}); computing them one chunk at a time",
                        stacklevel=2,
                    )
        if grads is None:
            per_chunk = [grad(chunk_loss)(params, tuple(s[i] for s in split)) for i in range(chunks)]
            grads = tuple(torch.stack(gs) for gs in zip(*per_chunk, strict=True))
    flat = [g.detach().reshape(chunks, -1).to(_accumulation_dtype(g.dtype)) for g in grads]
    small = sum(f.pow(2).sum(dim=1) for f in flat)  # [chunks]
    big = sum(f.mean(dim=0).pow(2).sum() for f in flat)
    assert isinstance(small, Tensor) and isinstance(big, Tensor)
    values = torch.stack([small.mean(), big]).double().tolist()
    return ChunkNorms(small_sq=values[0], big_sq=values[1], b_small=b_small, b_big=used)


__all__ = ["ChunkNorms", "DebiasedEMA", "chunk_gradient_norms", "unbiased_estimates"]

"""Hessian-vector products by double backward through a kept gradient graph.

One backward per vector, or all ``j`` vectors in one vectorized backward
(``torch.autograd.grad(..., is_grads_batched=True)``, a ``vmap`` over the double backward) with a fallback to
the loop, for good, where an operation has no batching rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor


class DoubleBackward:
    """The products :math:`Hv` of the rows of ``[j, n]`` blocks through gradient graphs of ``params``.

    Args:
        params: the variables (their order is the order of the flat vectors).
        batched: vectorize the products of a block (see the module docstring).
    """

    def __init__(self, params: Sequence[Tensor], batched: bool = True) -> None:
        self.params = list(params)
        self.batched = bool(batched)
        self.num_params = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device

    def __call__(
        self,
        grads: Sequence[Tensor | None],
        rows: Tensor,
        retain: bool,
        out: Tensor | None = None,
        beta: float = 0.0,
    ) -> Tensor:
        """``[j, n]`` products of the rows of ``rows`` through the gradient graph ``grads`` (one entry per
        parameter); ``retain`` keeps the graph for further products. With ``out`` (a contiguous ``[j, n]``
        tensor of the parameters' dtype) the products are written there and ``out`` is returned: no new
        parameter-sized tensor (on the CPU a fresh one costs its page faults, about two copies' time); with
        ``beta`` they are added to ``beta * out`` instead, piece by piece in one pass."""
        j = rows.shape[0]
        if out is None:
            out, beta = torch.empty(j, self.num_params, dtype=self.dtype, device=self.device), 0.0
        pairs = [
            (g, p) for g, p in zip(grads, self._split(rows), strict=True) if g is not None and g.requires_grad
        ]
        if not pairs:
            return out.mul_(beta) if beta != 0.0 else out.zero_()
        outputs = [g for g, _ in pairs]
        if j > 1 and self.batched:
            batched = self._batched(outputs, [v for _, v in pairs], out, beta)
            if batched is not None:
                return batched
        for r in range(j):
            hv = torch.autograd.grad(
                outputs,
                self.params,
                grad_outputs=[v[r] for _, v in pairs],
                retain_graph=retain or r < j - 1,
                allow_unused=True,
            )
            self._flatten_rows(hv, out[r : r + 1], beta)
            del hv  # one row's per-parameter pieces alive at a time
        return out

    def _batched(self, outputs: list[Tensor], vs: list[Tensor], out: Tensor, beta: float) -> Tensor | None:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # The graph is kept either way: a fallback below must be able to run through it again.
                hv = torch.autograd.grad(
                    outputs,
                    self.params,
                    grad_outputs=vs,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
        except (RuntimeError, NotImplementedError):
            # An operation without a batching rule (or without a batched double backward): loop instead.
            self.batched = False
            return None
        for w in caught:
            if "performance drop" in str(w.message):
                # vmap fell back to a per-vector loop inside: the plain loop is as fast, use it from now on.
                self.batched = False
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return self._flatten_rows(hv, out, beta)

    def _flatten_rows(self, tensors: Sequence[Tensor | None], out: Tensor, beta: float = 0.0) -> Tensor:
        """The ``[j, *p.shape]`` pieces copied into their columns of ``out`` (``[j, n]``; zero where None),
        or added to ``beta`` times them."""
        j, offset = out.shape[0], 0
        for t, p in zip(tensors, self.params, strict=True):
            block = out[:, offset : offset + p.numel()]
            if t is None and beta != 0.0:
                block.mul_(beta)
            elif t is None:
                block.zero_()  # not mul_(0): out may hold NaN
            elif beta != 0.0:
                torch.add(t.reshape(j, -1).to(block.dtype), block, alpha=beta, out=block)
            else:
                block.copy_(t.reshape(j, -1))
            offset += p.numel()
        return out

    def _split(self, rows: Tensor) -> list[Tensor]:
        """The ``[j, n]`` rows cut into ``[j, *p.shape]`` pieces, one per parameter."""
        out, offset = [], 0
        for p in self.params:
            out.append(rows[:, offset : offset + p.numel()].reshape(rows.shape[0], *p.shape).to(p.dtype))
            offset += p.numel()
        return out


__all__ = ["DoubleBackward"]

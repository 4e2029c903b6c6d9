"""The kept double-backward graph of :class:`~.hessian.HessianOperator` (``hvp="double_backward"``).

With ``memory="reuse"`` the gradient graph of all batches is built once (``create_graph=True``) and every
product backpropagates through it again; ``memory="auto"`` measures the bytes autograd saves for the first
batch and falls back to ``"recompute"`` (one batch's graph per product) when all batches would not fit in a
quarter of the device's free memory.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import Tensor

from lightning_landscape.curvature._memory import SavedBytes, available_bytes
from lightning_landscape.curvature._model_state import math_attention
from lightning_landscape.curvature.operators._methods import ProductMethods

# Fraction of the free memory that "auto" lets the kept double-backward graph use.
_AUTO_MEMORY_FRACTION = 0.25


class GraphProducts(ProductMethods):
    """Mixin of :class:`~.hessian.HessianOperator`: products through a kept (or rebuilt) gradient graph."""

    memory: Literal["reuse", "recompute"]
    _bad_loss: bool

    def _grad(self, loss: Tensor) -> list[Tensor | None]:
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return list(grads)

    def _build_graph(self, auto: bool) -> None:
        total: Tensor | None = None
        counter = SavedBytes()
        for i in range(len(self._batches)):
            hooks = torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack)
            with self._probe(i), hooks if (auto and i == 0) else contextlib.nullcontext():
                loss = self._loss(i)
                if not bool(torch.isfinite(loss.detach())):
                    self._loss_not_finite(loss, i)
                    self._bad_loss = True
                if auto and i == 0:
                    # The double-backward graph is what a kept graph costs: measure it on batch 0.
                    first = self._grad(loss * (self._weights[0] / self.total_weight))
                    estimate = counter.nbytes * len(self._batches)
                    if estimate > _AUTO_MEMORY_FRACTION * available_bytes(self.device):
                        self.memory = "recompute"
                        return
                    if len(self._batches) == 1:
                        # The measured graph is the one to keep: building it again would cost a gradient.
                        self._grads = first
                        return
            term = loss * (self._weights[i] / self.total_weight)
            total = term if total is None else total + term
        assert total is not None
        with torch.enable_grad(), math_attention():
            self._grads = self._grad(total)

    def _double_backward(
        self, rows: Tensor, loss_bad: bool, out: Tensor | None = None, beta: float = 0.0
    ) -> tuple[Tensor, bool]:
        j = rows.shape[0]
        if self.memory == "reuse":
            if self._grads is None:
                self._build_graph(auto=False)
            assert self._grads is not None
            hv = self._products(self._grads, rows, retain=True, out=out, beta=beta)
        else:
            acc = torch.zeros(j, self.num_params, dtype=self.dtype, device=self.device)
            for i in range(len(self._batches)):
                with self._probe(i):
                    loss = self._loss(i)
                    if not bool(torch.isfinite(loss.detach())):
                        self._loss_not_finite(loss, i)
                        loss_bad = True
                    grads = self._grad(loss)
                    acc += self._products(grads, rows, retain=False) * self._weights[i]
                    del grads
            hv = acc / self.total_weight
        return hv, loss_bad


__all__ = ["GraphProducts"]
